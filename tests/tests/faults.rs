//! S3 misbehaving between the daemon and the server, through the fault-injecting proxy: errors,
//! throttling, answers lost after the work was done (awslabs/git-remote-s3#66), connections cut
//! mid-body, slow answers. Every operation either lands through retries or fails with a clear
//! message, and the remote is never left half-written.

use std::path::PathBuf;
use std::process::Stdio;

use git_s3_tests::{Fault, FaultProxy, Rule, TestEnv, finish_within, incompressible_bytes, sha256_hex, wait_for};
use std::time::Duration;

const URL_PREFIX: &str = "faulty";

/// A repository with one commit, `origin` set to the test remote (nothing pushed yet).
fn work_repo(env: &TestEnv) -> PathBuf {
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &env.url(URL_PREFIX)]);
    work
}

/// Adds a commit with `size` bytes of incompressible data (8 MiB and more go up in parts).
fn commit_data(env: &TestEnv, repo: &std::path::Path, size: usize, seed: u64) -> String {
    env.commit(repo, &format!("data-{seed}.bin"), incompressible_bytes(size, seed), &format!("data {seed}"))
}

/// The remote holds exactly one bundle for main, for `oid`, and no lock.
fn assert_clean_remote(env: &TestEnv, oid: &str) {
    let keys = env.keys(&format!("{URL_PREFIX}/refs/heads/main/"));
    assert_eq!(keys, vec![format!("{URL_PREFIX}/refs/heads/main/{oid}.bundle")], "exactly the new bundle, no lock");
    wait_for("no open multipart upload", Duration::from_secs(30), || {
        (env.server.open_multipart_uploads(&env.bucket) == 0).then_some(())
    });
}

fn assert_clone_has(env: &TestEnv, name: &str, oid: &str) {
    let clone = env.clone_repo(&env.url(URL_PREFIX), name);
    assert_eq!(env.rev_parse(&clone, "HEAD"), oid);
    env.git_ok(&clone, &["fsck", "--no-progress"]);
}

fn faults_seen(proxy: &FaultProxy) -> usize {
    proxy.faulted().len()
}

#[test]
fn server_errors_and_throttling_are_retried_until_the_push_and_clone_land() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    proxy.add(Rule::new("PUT", ".bundle", Fault::Status(500, "InternalError")).times(2));
    proxy.add(Rule::new("PUT", "LOCK", Fault::Status(503, "SlowDown")));
    proxy.add(Rule::new("GET", "", Fault::Status(500, "InternalError")).query("list-type"));
    proxy.add(Rule::new("GET", ".bundle", Fault::Status(503, "SlowDown")));
    let work = work_repo(&env);
    env.git_ok(&work, &["push", "origin", "main"]);
    let head = env.rev_parse(&work, "HEAD");
    assert_clone_has(&env, "clone", &head);
    assert_eq!(faults_seen(&proxy), 5, "every rule fired: {:?}", proxy.faulted());
    assert_clean_remote(&env, &head);
}

#[test]
fn a_lock_write_that_went_through_but_looked_refused_is_still_ours() {
    // awslabs/git-remote-s3#66: the conditional PUT succeeded, its answer was lost or replaced,
    // and the retry (or the answer) says 412/409. The lock is ours; the push must go on.
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let work = work_repo(&env);
    proxy.add(Rule::new("PUT", "LOCK", Fault::AfterSuccess(412, "PreconditionFailed")));
    env.git_ok(&work, &["push", "origin", "main"]);

    let second = env.commit(&work, "b", "b\n", "second");
    proxy.add(Rule::new("PUT", "LOCK", Fault::DropAnswer));
    env.git_ok(&work, &["push", "origin", "main"]);

    let third = env.commit(&work, "c", "c\n", "third");
    proxy.add(Rule::new("PUT", "LOCK", Fault::AfterSuccess(409, "ConditionalRequestConflict")));
    env.git_ok(&work, &["push", "origin", "main"]);

    assert_eq!(faults_seen(&proxy), 3);
    assert_ne!(second, third);
    assert_clean_remote(&env, &third);
    assert_clone_has(&env, "clone", &third);
}

#[test]
fn a_multipart_completion_whose_answer_was_lost_still_counts() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let work = work_repo(&env);
    let head = commit_data(&env, &work, 20 * 1024 * 1024, 1);
    proxy.add(Rule::new("POST", ".bundle", Fault::DropAnswer).query("uploadId"));
    env.git_ok(&work, &["push", "origin", "main"]);
    assert_eq!(faults_seen(&proxy), 1);
    assert_clean_remote(&env, &head);
    assert_clone_has(&env, "clone", &head);
}

#[test]
fn a_download_cut_off_mid_body_resumes_where_it_broke() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let work = work_repo(&env);
    let head = commit_data(&env, &work, 12 * 1024 * 1024, 2);
    env.git_ok(&work, &["push", "origin", "main"]);
    proxy.add(Rule::new("GET", ".bundle", Fault::ResetMidBody).times(2));
    assert_clone_has(&env, "clone", &head);
    let bundle_gets = proxy.seen().iter().filter(|s| s.method == "GET" && s.path.ends_with(".bundle")).count();
    assert_eq!(bundle_gets, 3, "one download and two resumptions");
}

#[test]
fn slow_answers_only_make_things_slower() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let pause = Duration::from_millis(1500);
    proxy.add(Rule::new("PUT", ".bundle", Fault::Delay(pause)));
    proxy.add(Rule::new("GET", "", Fault::Delay(pause)).query("list-type").times(3));
    proxy.add(Rule::new("GET", ".bundle", Fault::Delay(pause)));
    let work = work_repo(&env);
    env.git_ok(&work, &["push", "origin", "main"]);
    let head = env.rev_parse(&work, "HEAD");
    assert_clone_has(&env, "clone", &head);
    assert_eq!(faults_seen(&proxy), 5);
}

#[test]
fn a_push_that_keeps_failing_says_why_and_leaves_the_remote_as_it_was() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let work = work_repo(&env);
    env.git_ok(&work, &["push", "origin", "main"]);
    let before = env.rev_parse(&work, "HEAD");

    // A small bundle: one PUT, failing every time.
    env.commit(&work, "b", "b\n", "second");
    proxy.add(Rule::new("PUT", ".bundle", Fault::Status(500, "InternalError")).times(1000));
    let stderr = env.git_fails(&work, &["push", "origin", "main"]);
    assert!(stderr.contains("InternalError"), "the error says what S3 answered: {stderr}");
    assert_clean_remote(&env, &before);

    // A large one: the second part keeps failing; the upload is aborted, nothing appears.
    commit_data(&env, &work, 20 * 1024 * 1024, 3);
    proxy.add(Rule::new("PUT", ".bundle", Fault::Status(500, "InternalError")).query("partNumber=2").times(1000));
    let stderr = env.git_fails(&work, &["push", "origin", "main"]);
    assert!(stderr.contains("InternalError"), "{stderr}");
    assert_clean_remote(&env, &before);
    assert_clone_has(&env, "clone", &before);
}

#[test]
fn lfs_transfers_survive_throttling_and_cut_off_downloads() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let small = incompressible_bytes(1024 * 1024, 4);
    let large = incompressible_bytes(20 * 1024 * 1024, 5);
    let repo =
        env.lfs_repo("work", &env.url(URL_PREFIX), &[("small.bin", small.clone()), ("large.bin", large.clone())]);
    proxy.add(Rule::new("PUT", "/lfs/", Fault::Status(503, "SlowDown")).times(2));
    proxy.add(Rule::new("PUT", "/lfs/", Fault::Status(500, "InternalError")).query("partNumber=2"));
    env.git_ok(&repo, &["push", "origin", "main"]);
    assert_eq!(faults_seen(&proxy), 3);
    for content in [&small, &large] {
        let key = format!("{URL_PREFIX}/lfs/{}", sha256_hex(content));
        assert_eq!(env.server.get(&env.bucket, &key), *content);
    }

    proxy.add(Rule::new("GET", "/lfs/", Fault::ResetMidBody).times(2));
    let clone = env.clone_repo(&env.url(URL_PREFIX), "clone");
    assert_eq!(faults_seen(&proxy), 5);
    assert_eq!(std::fs::read(clone.join("small.bin")).expect("small.bin"), small);
    assert_eq!(std::fs::read(clone.join("large.bin")).expect("large.bin"), large);
    assert_eq!(env.server.open_multipart_uploads(&env.bucket), 0);
}

#[test]
fn a_body_that_stalls_fails_in_bounded_time_and_the_download_resumes() {
    let mut env = TestEnv::new();
    env.set_env("GIT_REMOTE_S3_BODY_IDLE_SECONDS", "2");
    let proxy = env.route_through_proxy();
    let work = work_repo(&env);
    let head = commit_data(&env, &work, 4 * 1024 * 1024, 6);
    env.git_ok(&work, &["push", "origin", "main"]);
    // Far longer than the clone may take: without an idle limit it would hang on this body.
    proxy.add(Rule::new("GET", ".bundle", Fault::StallMidBody(Duration::from_secs(600))));
    let mut clone = env.command("git");
    clone.args(["clone", "-q", &env.url(URL_PREFIX), &env.path("clone").to_string_lossy()]);
    clone.stdout(Stdio::piped()).stderr(Stdio::piped());
    let cloned = finish_within(clone.spawn().expect("spawn git clone"), Duration::from_secs(60), "the clone");
    assert!(cloned.status.success(), "{}", String::from_utf8_lossy(&cloned.stderr));
    assert_eq!(env.rev_parse(&env.path("clone"), "HEAD"), head);
    let bundle_gets = proxy.seen().iter().filter(|s| s.method == "GET" && s.path.ends_with(".bundle")).count();
    assert_eq!(bundle_gets, 2, "the stalled download and its resumption");
    assert!(env.daemon_log().contains("S3 stopped sending"), "the stall is named in the log");
}

#[test]
fn a_slow_but_steady_body_is_not_a_stall() {
    let mut env = TestEnv::new();
    env.set_env("GIT_REMOTE_S3_BODY_IDLE_SECONDS", "2");
    let proxy = env.route_through_proxy();
    let work = work_repo(&env);
    let head = commit_data(&env, &work, 96 * 1024, 7);
    env.git_ok(&work, &["push", "origin", "main"]);
    // 16 KiB every half second: 32 KiB/s, about three seconds for the bundle, each piece well
    // within the idle limit.
    let trickle = Fault::Trickle { bytes: 16 * 1024, pause: Duration::from_millis(500) };
    proxy.add(Rule::new("GET", ".bundle", trickle));
    assert_clone_has(&env, "clone", &head);
    assert_eq!(faults_seen(&proxy), 1);
    let bundle_gets = proxy.seen().iter().filter(|s| s.method == "GET" && s.path.ends_with(".bundle")).count();
    assert_eq!(bundle_gets, 1, "never given up and asked again");
}

#[test]
fn every_transfer_of_every_client_waits_its_turn_in_one_scheduler() {
    const MAX_REQUESTS: usize = 3;
    let mut env = TestEnv::new();
    env.set_env("GIT_REMOTE_S3_MAX_REQUESTS", &MAX_REQUESTS.to_string());
    let proxy = env.route_through_proxy();
    // Three pushes of 20 MiB (multipart, parts in parallel), an LFS push beside them, then two
    // clones and an LFS download at once: far more requests than the cap would like to run.
    let pushers: Vec<PathBuf> = (0..3u64)
        .map(|i| {
            let repo = env.new_repo(&format!("work{i}"));
            env.git_ok(&repo, &["remote", "add", "origin", &env.url(&format!("busy{i}"))]);
            commit_data(&env, &repo, 20 * 1024 * 1024, 10 + i);
            repo
        })
        .collect();
    let lfs_files: Vec<(String, Vec<u8>)> =
        (0..6u64).map(|i| (format!("file{i}.bin"), incompressible_bytes(3 * 1024 * 1024, 20 + i))).collect();
    let lfs_files: Vec<(&str, Vec<u8>)> = lfs_files.iter().map(|(name, data)| (name.as_str(), data.clone())).collect();
    let lfs = env.lfs_repo("lfs", &env.url("busy-lfs"), &lfs_files);
    let running: Vec<_> = pushers
        .iter()
        .chain([&lfs])
        .map(|repo| {
            let mut push = env.command("git");
            push.args(["push", "-q", "origin", "main"]).current_dir(repo).stdout(Stdio::piped()).stderr(Stdio::piped());
            push.spawn().expect("spawn git push")
        })
        .collect();
    for push in running {
        let output = finish_within(push, Duration::from_secs(300), "a push");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let running: Vec<_> = ["busy0", "busy1", "busy-lfs"]
        .iter()
        .map(|prefix| {
            let mut clone = env.command("git");
            clone.args(["clone", "-q", &env.url(prefix), &env.path(&format!("clone-{prefix}")).to_string_lossy()]);
            clone.stdout(Stdio::piped()).stderr(Stdio::piped());
            clone.spawn().expect("spawn git clone")
        })
        .collect();
    for clone in running {
        let output = finish_within(clone, Duration::from_secs(300), "a clone");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    for (name, data) in &lfs_files {
        assert_eq!(&std::fs::read(env.path("clone-busy-lfs").join(name)).expect("LFS file"), data);
    }

    let seen = proxy.peak_data_requests();
    assert!(seen <= MAX_REQUESTS, "S3 saw {seen} requests moving data at once; the cap is {MAX_REQUESTS}");
    assert!(seen >= 2, "the clients did run at once (peak {seen}), so the cap was tested");
    let status = env.daemon_status().expect("daemon running");
    let peak = status["transfer_requests"]["peak"].as_u64().expect("peak in status");
    assert!(peak <= MAX_REQUESTS as u64 && peak >= seen as u64, "daemon peak {peak}, proxy peak {seen}");
}

#[test]
fn a_failing_fetch_takes_only_its_own_files_with_it() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let work = env.new_repo("work");
    let good = commit_data(&env, &work, 6 * 1024 * 1024, 30);
    env.git_ok(&work, &["push", &env.url("good"), "main"]);
    env.commit(&work, "other", "other\n", "for the bad remote");
    env.git_ok(&work, &["push", &env.url("bad"), "main"]);
    // The bad remote's bundle is cut in half: its fetch fails in index-pack.
    let bad_key = env.keys("bad/refs/heads/main/").pop().expect("the bad bundle");
    let bundle = env.server.get(&env.bucket, &bad_key);
    env.server.put(&env.bucket, &bad_key, bundle[..bundle.len() / 2].to_vec());

    let target = env.new_repo("target");
    env.git_ok(&target, &["remote", "add", "good", &env.url("good")]);
    env.git_ok(&target, &["remote", "add", "bad", &env.url("bad")]);
    // The bad fetch starts first and fails a few seconds later, while the good one's index-pack
    // is writing its temporary pack into the same repository.
    proxy.add(Rule::new("GET", "/bad/refs/", Fault::Delay(Duration::from_secs(3))));
    proxy.add(Rule::new("GET", "/good/refs/", Fault::Trickle { bytes: 1024 * 1024, pause: Duration::from_secs(1) }));
    let fetch = |remote: &str| {
        let mut fetch = env.command("git");
        fetch.args(["fetch", "-q", remote]).current_dir(&target).stdout(Stdio::piped()).stderr(Stdio::piped());
        fetch.spawn().expect("spawn git fetch")
    };
    let (bad_fetch, good_fetch) = (fetch("bad"), fetch("good"));
    let bad_output = finish_within(bad_fetch, Duration::from_secs(120), "the failing fetch");
    let good_output = finish_within(good_fetch, Duration::from_secs(120), "the good fetch");
    assert!(!bad_output.status.success(), "the truncated bundle is refused");
    assert!(good_output.status.success(), "{}", String::from_utf8_lossy(&good_output.stderr));
    assert_eq!(env.rev_parse(&target, "refs/remotes/good/main"), good);
    env.git_ok(&target, &["fsck", "--no-progress"]);

    let objects = target.join(".git/objects");
    let leftovers: Vec<String> = std::fs::read_dir(&objects)
        .expect("objects")
        .chain(std::fs::read_dir(objects.join("pack")).expect("packs"))
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tmp_") || name.ends_with(".keep"))
        .collect();
    assert!(leftovers.is_empty(), "nothing of either fetch is left over: {leftovers:?}");
}
