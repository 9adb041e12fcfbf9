//! git push / fetch / clone / ls-remote through s3:// remotes, as a user does them, against moto
//! (and the core flows against s3s-fs, which checks signatures and keeps data on disk).

use std::process::Stdio;
use std::time::Duration;

use git_s3_tests::{ServerKind, TestEnv, incompressible_bytes, peak_rss_kib, wait_for};

#[test]
fn clone_of_an_empty_prefix_is_an_empty_repository() {
    let env = TestEnv::new();
    let output = env.git(&env.path(""), &["clone", &env.url("nothing-here"), "empty"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cloned an empty repository"));
}

fn push_clone_fetch_round_trip(env: &TestEnv) {
    let url = env.url("team/repo");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "-u", "origin", "main"]);
    assert_eq!(env.keys("team/repo/HEAD"), vec!["team/repo/HEAD".to_string()]);

    let clone = env.path("clone");
    env.git_ok(&env.path(""), &["clone", &url, clone.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(clone.join("README")).unwrap(), "work\n");
    assert_eq!(env.git_ok(&clone, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/main");

    let second = env.commit(&work, "src/lib.rs", "pub fn answer() -> u32 { 42 }\n", "second");
    env.git_ok(&work, &["push"]);
    env.git_ok(&clone, &["pull", "-q"]);
    assert_eq!(env.rev_parse(&clone, "HEAD"), second);
    assert_eq!(
        env.bundle_keys("team/repo", "refs/heads/main"),
        vec![format!("team/repo/refs/heads/main/{second}.bundle")]
    );

    // Nothing new: fetch succeeds and changes nothing.
    env.git_ok(&clone, &["fetch"]);
    assert_eq!(env.rev_parse(&clone, "origin/main"), second);
}

#[test]
fn push_clone_and_fetch_round_trip() {
    push_clone_fetch_round_trip(&TestEnv::new());
}

#[test]
fn push_clone_and_fetch_round_trip_on_s3s_fs() {
    push_clone_fetch_round_trip(&TestEnv::with_server(ServerKind::S3sFs));
}

#[test]
fn branches_tags_and_renamed_pushes() {
    let env = TestEnv::new();
    let url = env.url("refs-kinds");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "origin", "main"]);
    env.git_ok(&work, &["checkout", "-q", "-b", "feature/x"]);
    let feature = env.commit(&work, "x.txt", "x\n", "feature work");
    env.git_ok(&work, &["tag", "light"]);
    env.git_ok(&work, &["tag", "-a", "v1.0", "-m", "release"]);
    let annotated = env.rev_parse(&work, "v1.0");
    env.git_ok(&work, &["push", "origin", "feature/x", "light", "v1.0"]);
    env.git_ok(&work, &["push", "origin", "feature/x:refs/heads/renamed"]);
    let raw = env.commit(&work, "y.txt", "y\n", "raw");
    env.git_ok(&work, &["push", "origin", &format!("{raw}:refs/heads/from-sha")]);

    let refs = env.ls_remote(&work, "origin");
    let has = |oid: &str, name: &str| refs.iter().any(|(o, n)| o == oid && n == name);
    assert!(has(&feature, "refs/heads/feature/x"), "{refs:?}");
    assert!(has(&feature, "refs/tags/light"), "{refs:?}");
    assert!(has(&annotated, "refs/tags/v1.0"), "annotated tags keep the tag object: {refs:?}");
    assert!(has(&feature, "refs/heads/renamed"), "{refs:?}");
    assert!(has(&raw, "refs/heads/from-sha"), "{refs:?}");

    let clone = env.path("clone");
    env.git_ok(&env.path(""), &["clone", &url, clone.to_str().unwrap()]);
    assert_eq!(env.rev_parse(&clone, "v1.0"), annotated);
    assert_eq!(env.git_ok(&clone, &["cat-file", "-t", "v1.0"]).trim(), "tag");
    assert_eq!(env.rev_parse(&clone, "origin/from-sha"), raw);

    // --follow-tags sends the annotated tag of a pushed commit along.
    env.git_ok(&work, &["checkout", "-q", "main"]);
    let third = env.commit(&work, "z.txt", "z\n", "third");
    env.git_ok(&work, &["tag", "-a", "v2.0", "-m", "second release"]);
    env.git_ok(&work, &["push", "--follow-tags", "origin", "main"]);
    let refs = env.ls_remote(&work, "origin");
    assert!(refs.iter().any(|(_, n)| n == "refs/tags/v2.0"), "{refs:?}");
    assert!(refs.iter().any(|(o, n)| o == &third && n == "refs/heads/main"));
}

#[test]
fn push_all_and_mirror() {
    let env = TestEnv::new();
    let work = env.new_repo("work");
    for branch in ["a", "b", "c"] {
        env.git_ok(&work, &["branch", branch]);
    }
    env.git_ok(&work, &["push", "--all", &env.url("all")]);
    let names: Vec<String> = env.ls_remote(&work, &env.url("all")).into_iter().map(|(_, n)| n).collect();
    for branch in ["main", "a", "b", "c"] {
        assert!(names.contains(&format!("refs/heads/{branch}")), "{names:?}");
    }
    env.git_ok(&work, &["branch", "-D", "c"]);
    env.git_ok(&work, &["push", "--mirror", &env.url("all")]);
    let names: Vec<String> = env.ls_remote(&work, &env.url("all")).into_iter().map(|(_, n)| n).collect();
    assert!(!names.contains(&"refs/heads/c".to_string()), "--mirror deletes what is gone: {names:?}");
    assert!(names.contains(&"refs/heads/a".to_string()));
}

#[test]
fn deleting_the_default_branch_moves_head() {
    let env = TestEnv::new();
    let url = env.url("delete");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "origin", "main"]);
    env.git_ok(&work, &["push", "origin", "main:refs/heads/master"]);
    env.git_ok(&work, &["push", "origin", "--delete", "main"]);
    assert!(env.bundle_keys("delete", "refs/heads/main").is_empty());
    assert_eq!(env.server.get(&env.bucket, "delete/HEAD"), b"refs/heads/master");
    let clone = env.path("clone");
    env.git_ok(&env.path(""), &["clone", &url, clone.to_str().unwrap()]);
    assert_eq!(env.git_ok(&clone, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/master");
}

#[test]
fn non_fast_forward_is_refused_with_gits_hint_and_force_overwrites() {
    let env = TestEnv::new();
    let url = env.url("nff");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.commit(&work, "a", "a\n", "a");
    env.git_ok(&work, &["push", "origin", "main"]);
    env.git_ok(&work, &["reset", "-q", "--hard", "HEAD~1"]);
    let rewritten = env.commit(&work, "b", "b\n", "rewritten");
    let stderr = env.git_fails(&work, &["push", "origin", "main"]);
    assert!(stderr.contains("[rejected]") && stderr.contains("non-fast-forward"), "{stderr}");

    let output = env.git(&work, &["push", "--force", "origin", "main"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("(forced update)"));
    assert_eq!(env.bundle_keys("nff", "refs/heads/main"), vec![format!("nff/refs/heads/main/{rewritten}.bundle")]);
}

#[test]
fn force_with_lease_holds_only_while_the_remote_is_as_expected() {
    let env = TestEnv::new();
    let url = env.url("lease");
    let alice = env.new_repo("alice");
    env.git_ok(&alice, &["remote", "add", "origin", &url]);
    env.git_ok(&alice, &["push", "origin", "main"]);
    let bob = env.clone_repo(&url, "bob");

    // Bob rewrites with a lease on what he fetched: nobody moved, so it goes through.
    env.git_ok(&bob, &["commit", "-q", "--amend", "-m", "bob's rewrite"]);
    env.git_ok(&bob, &["push", "--force-with-lease", "origin", "main"]);

    // Alice's view is now stale: her lease must fail.
    env.git_ok(&alice, &["commit", "-q", "--amend", "-m", "alice's rewrite"]);
    let stderr = env.git_fails(
        &alice,
        &["push", &format!("--force-with-lease=main:{}", env.rev_parse(&alice, "origin/main")), "origin", "main"],
    );
    assert!(stderr.contains("stale info"), "{stderr}");
    assert_eq!(env.ls_remote(&bob, "origin")[0].0, env.rev_parse(&bob, "HEAD"), "bob's push stands");
}

#[test]
fn protected_branch_refuses_force_and_delete() {
    let env = TestEnv::new();
    let url = env.url("protected");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "origin", "main"]);
    env.server.put(&env.bucket, "protected/refs/heads/main/PROTECTED#", Vec::new());

    env.commit(&work, "ff", "ff\n", "fast-forward is fine");
    env.git_ok(&work, &["push", "origin", "main"]);
    env.git_ok(&work, &["commit", "-q", "--amend", "-m", "rewrite"]);
    let stderr = env.git_fails(&work, &["push", "--force", "origin", "main"]);
    assert!(stderr.contains("protected branch"), "{stderr}");
    let stderr = env.git_fails(&work, &["push", "origin", "--delete", "main"]);
    assert!(stderr.contains("protected branch"), "{stderr}");
    assert_eq!(env.bundle_keys("protected", "refs/heads/main").len(), 1);
}

#[test]
fn a_fresh_lock_blocks_a_push_and_a_stale_one_is_taken_over() {
    let mut env = TestEnv::new();
    let url = env.url("locked");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "origin", "main"]);
    env.server.put(&env.bucket, "locked/refs/heads/main/LOCK#.lock", Vec::new());
    let next = env.commit(&work, "n", "n\n", "next");
    let stderr = env.git_fails(&work, &["push", "origin", "main"]);
    assert!(stderr.contains("another push holds the lock on refs/heads/main"), "{stderr}");

    env.set_env("GIT_REMOTE_S3_LOCK_TTL_SECONDS", "1");
    wait_for("the lock to go stale and the push to take it over", Duration::from_secs(20), || {
        env.git(&work, &["push", "origin", "main"]).status.success().then_some(())
    });
    assert_eq!(env.bundle_keys("locked", "refs/heads/main"), vec![format!("locked/refs/heads/main/{next}.bundle")]);
    assert!(env.keys("locked/refs/heads/main/LOCK#.lock").is_empty());
}

#[test]
fn a_corrupted_bundle_makes_clone_and_fetch_fail() {
    let env = TestEnv::new();
    let url = env.url("corrupt");
    let work = env.new_repo("work");
    env.git_ok(&work, &["push", &url, "main"]);
    let key = env.bundle_keys("corrupt", "refs/heads/main").remove(0);
    let mut bytes = env.server.get(&env.bucket, &key);
    let middle = bytes.len() - 30;
    bytes[middle] ^= 0xff;
    env.server.put(&env.bucket, &key, bytes);

    let stderr = env.git_fails(&env.path(""), &["clone", &url, "broken"]);
    assert!(stderr.contains("is corrupt"), "{stderr}");
    env.server.put(&env.bucket, &key, b"<Error>not a bundle</Error>".to_vec());
    let fresh = env.path("fresh");
    env.git_ok(&env.path(""), &["init", "-q", fresh.to_str().unwrap()]);
    let stderr = env.git_fails(&fresh, &["fetch", &url, "main"]);
    assert!(stderr.contains("is corrupt") && stderr.contains("not a git bundle"), "{stderr}");
}

#[test]
fn more_than_a_thousand_refs_are_all_listed() {
    let env = TestEnv::new();
    let work = env.new_repo("work");
    env.git_ok(&work, &["push", &env.url("many"), "main"]);
    let oid = env.rev_parse(&work, "main");
    let source = format!("many/refs/heads/main/{oid}.bundle");
    // Copy the bundle server-side rather than pushing 1,100 times.
    for i in 0..1100 {
        env.server.copy(&env.bucket, &source, &format!("many/refs/heads/b{i:04}/{oid}.bundle"));
    }
    let refs = env.ls_remote(&work, &env.url("many"));
    assert_eq!(refs.iter().filter(|(_, n)| n.starts_with("refs/heads/b")).count(), 1100);
    let clone = env.clone_repo(&env.url("many"), "clone");
    assert_eq!(env.git_ok(&clone, &["branch", "-r"]).lines().count(), 1102, "1,100 + main + HEAD");
}

#[test]
fn a_large_bundle_goes_up_in_parts_and_the_lock_outlives_its_ttl() {
    let mut env = TestEnv::new();
    env.set_env("GIT_REMOTE_S3_LOCK_TTL_SECONDS", "1");
    let url = env.url("large");
    let work = env.new_repo("work");
    std::fs::write(work.join("big.bin"), incompressible_bytes(105 * 1024 * 1024, 7)).unwrap();
    env.git_ok(&work, &["add", "big.bin"]);
    env.git_ok(&work, &["commit", "-q", "-m", "big"]);
    let big = env.rev_parse(&work, "HEAD");

    // A rival keeps trying to push while the big upload runs (far longer than the 1 s TTL).
    let rival = env.path("rival");
    env.git_ok(&env.path(""), &["init", "-q", rival.to_str().unwrap()]);
    env.commit(&rival, "r", "r\n", "rival");
    let mut push = env.command("git");
    push.args(["push", "--progress", &url, "main"]).current_dir(&work).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut push = push.spawn().expect("spawn push");
    wait_for("the big push to take its lock", Duration::from_secs(60), || {
        (!env.keys("large/refs/heads/main/LOCK#.lock").is_empty()).then_some(())
    });
    let mut rival_attempts = 0;
    let mut push_bytes_seen = 0;
    while push.try_wait().expect("poll push").is_none() {
        let output = env.git(&rival, &["push", &url, "main"]);
        rival_attempts += 1;
        assert!(!output.status.success(), "the rival took over a live lock mid-upload");
        let status = env.daemon_status().expect("daemon");
        let pushing = status["activities"].as_array().into_iter().flatten().filter(|a| a["what"] == "push");
        push_bytes_seen = pushing.filter_map(|a| a["bytes"].as_u64()).max().unwrap_or(0).max(push_bytes_seen);
    }
    let output = push.wait_with_output().expect("push");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("Sending refs/heads/main: ") && stderr.contains("/s, done."),
        "git-style progress: {stderr}"
    );
    assert!(rival_attempts > 0);
    assert!(push_bytes_seen > 0, "status showed the push's bytes while it ran");

    let key = format!("large/refs/heads/main/{big}.bundle");
    let (etag, _) = env.server.head(&env.bucket, &key).expect("the bundle is there");
    assert!(etag.contains('-'), "a multipart upload has a multipart ETag: {etag}");
    assert_eq!(env.server.open_multipart_uploads(&env.bucket), 0);

    let status = env.daemon_status().expect("daemon");
    let pid = status["pid"].as_u64().expect("pid");
    let clone = env.clone_repo(&url, "clone");
    assert_eq!(std::fs::read(clone.join("big.bin")).unwrap(), std::fs::read(work.join("big.bin")).unwrap());
    let peak_kib = peak_rss_kib(pid);
    assert!(peak_kib < 200 * 1024, "daemon memory stays bounded with a 105 MiB bundle: peak {peak_kib} KiB");
}

#[test]
fn a_submodule_with_an_s3_url_is_cloned() {
    let env = TestEnv::new();
    let lib = env.new_repo("lib");
    env.git_ok(&lib, &["push", &env.url("lib"), "main"]);
    let app = env.new_repo("app");
    env.git_ok(&app, &["submodule", "add", "-q", &env.url("lib"), "vendor/lib"]);
    env.git_ok(&app, &["commit", "-q", "-m", "add lib"]);
    env.git_ok(&app, &["push", &env.url("app"), "main"]);
    let clone = env.path("clone");
    env.git_ok(&env.path(""), &["clone", "-q", "--recurse-submodules", &env.url("app"), clone.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(clone.join("vendor/lib/README")).unwrap(), "lib\n");
}

#[test]
fn zip_remotes_publish_an_archive_of_the_pushed_commit() {
    let env = TestEnv::new();
    let work = env.new_repo("work");
    let oid = env.rev_parse(&work, "HEAD");
    env.git_ok(&work, &["checkout", "-q", "-b", "other"]);
    env.commit(&work, "other.txt", "other\n", "checked out, not pushed");
    // Installed as README says: git runs git-remote-s3+zip, a link to git-remote-s3.
    let links = env.path("links");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(git_s3_tests::bin_dir().join("git-remote-s3"), links.join("git-remote-s3+zip")).unwrap();
    let mut push = env.command("git");
    let path = format!(
        "{}:{}:{}",
        links.display(),
        git_s3_tests::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    push.env("PATH", &path).current_dir(&work).args(["push", &format!("s3+zip://{}/zipped", env.bucket), "main"]);
    let output = env.run(push);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let zip = env.server.get(&env.bucket, "zipped/refs/heads/main/repo.zip");
    assert_eq!(&zip[..2], b"PK");
    let listing = String::from_utf8_lossy(&zip).into_owned();
    assert!(listing.contains("README") && !listing.contains("other.txt"), "the zip is of the pushed commit {oid}");

    // A native remote publishes the same zip.
    push = env.command("git");
    let url = format!("s3+zip://{}/zipped-native", env.bucket);
    push.env("PATH", path).current_dir(&work).args(["-c", "s3.format=native", "push", &url, "main"]);
    let output = env.run(push);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(env.keys("zipped-native/").contains(&"zipped-native/refs/native.json".to_string()));
    let zip = env.server.get(&env.bucket, "zipped-native/refs/heads/main/repo.zip");
    assert_eq!(&zip[..2], b"PK");
}

#[test]
fn dry_run_changes_nothing() {
    let env = TestEnv::new();
    let work = env.new_repo("work");
    let output = env.git(&work, &["push", "--dry-run", &env.url("dry"), "main"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(env.keys("dry/").is_empty());
}

#[test]
fn atomic_push_writes_nothing_when_one_ref_is_refused() {
    let env = TestEnv::new();
    let url = env.url("atomic");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "origin", "main"]);
    env.server.put(&env.bucket, "atomic/refs/heads/main/LOCK#.lock", Vec::new());
    env.commit(&work, "n", "n\n", "next");
    env.git_ok(&work, &["branch", "feature"]);
    let stderr = env.git_fails(&work, &["push", "--atomic", "origin", "main", "feature"]);
    assert!(stderr.contains("holds the lock"), "{stderr}");
    assert!(env.bundle_keys("atomic", "refs/heads/feature").is_empty(), "nothing written for the other ref");
}

#[test]
fn python_tool_and_ours_share_a_bucket_both_ways() {
    let env = TestEnv::new();
    let url = env.url("shared");
    // Python pushes, we clone.
    let py = env.new_repo("py");
    env.python_git_ok(&py, &["push", &url, "main"]);
    let ours = env.clone_repo(&url, "ours");
    assert_eq!(env.rev_parse(&ours, "HEAD"), env.rev_parse(&py, "HEAD"));

    // We push on top, Python fetches it.
    let ours_commit = env.commit(&ours, "ours.txt", "ours\n", "from rust");
    env.git_ok(&ours, &["push", "origin", "main"]);
    env.python_git_ok(&py, &["pull", "-q", &url, "main"]);
    assert_eq!(env.rev_parse(&py, "HEAD"), ours_commit);

    // Python pushes again; we fetch. Python clones what we pushed.
    let py_commit = env.commit(&py, "py.txt", "py\n", "from python");
    env.python_git_ok(&py, &["push", &url, "main"]);
    env.git_ok(&ours, &["pull", "-q"]);
    assert_eq!(env.rev_parse(&ours, "HEAD"), py_commit);
    let py_clone = env.path("py-clone");
    env.python_git_ok(&env.path(""), &["clone", "-q", &url, py_clone.to_str().unwrap()]);
    assert_eq!(env.rev_parse(&py_clone, "HEAD"), py_commit);
    assert_eq!(env.bundle_keys("shared", "refs/heads/main").len(), 1);
}

#[test]
fn python_tool_and_ours_honour_the_same_lock_and_protection() {
    let env = TestEnv::new();
    let url = env.url("shared-lock");
    let work = env.new_repo("work");
    env.git_ok(&work, &["push", &url, "main"]);
    env.server.put(&env.bucket, "shared-lock/refs/heads/main/LOCK#.lock", Vec::new());
    env.commit(&work, "n", "n\n", "next");
    let output = env.python_git(&work, &["push", &url, "main"]);
    assert!(!output.status.success(), "the Python tool must respect a fresh lock");
    env.git_fails(&work, &["push", &url, "main"]);
    assert_eq!(env.bundle_keys("shared-lock", "refs/heads/main").len(), 1);
}

#[test]
fn listings_are_cached_within_one_command_but_never_hide_a_push() {
    let env = TestEnv::new();
    let url = env.url("cache");
    let alice = env.new_repo("alice");
    env.git_ok(&alice, &["remote", "add", "origin", &url]);
    env.git_ok(&alice, &["push", "origin", "main"]);
    let bob = env.clone_repo(&url, "bob");

    // One helper session asked twice: the second answer comes from the session's cache.
    let hits_before = env.daemon_status().expect("daemon")["listing_cache"]["hits"].as_u64().expect("hits");
    let mut helper = env.spawn_remote_helper(&bob, &url);
    {
        use std::io::Write;
        let mut stdin = helper.stdin.take().expect("stdin");
        stdin.write_all(b"list\nlist for-push\n\n").expect("write");
    }
    let output = helper.wait_with_output().expect("helper output");
    let answers = String::from_utf8_lossy(&output.stdout).into_owned();
    let main_line = format!("{} refs/heads/main", env.rev_parse(&alice, "main"));
    assert_eq!(answers.matches(&main_line).count(), 2, "{answers}");
    let hits_after = env.daemon_status().expect("daemon")["listing_cache"]["hits"].as_u64().expect("hits");
    assert_eq!(hits_after, hits_before + 1);

    // Across commands nothing is cached: Bob sees Alice's push at once.
    for round in 0..3 {
        let pushed = env.commit(&alice, "round", format!("{round}\n"), "another round");
        env.git_ok(&alice, &["push", "origin", "main"]);
        assert_eq!(
            env.ls_remote(&bob, "origin").iter().find(|(_, n)| n == "refs/heads/main").map(|(o, _)| o.clone()),
            Some(pushed.clone())
        );
        env.git_ok(&bob, &["fetch", "-q"]);
        assert_eq!(env.rev_parse(&bob, "origin/main"), pushed);
    }
}

#[test]
fn a_push_that_lost_the_race_after_listing_is_told_to_fetch_first() {
    use std::io::{BufRead, BufReader, Write};
    let env = TestEnv::new();
    let url = env.url("lost-race");
    let alice = env.new_repo("alice");
    env.git_ok(&alice, &["push", &url, "main"]);
    let bob = env.clone_repo(&url, "bob");
    env.commit(&bob, "bob", "bob\n", "bob's work");

    // Bob's helper lists the remote as git does before a push...
    let mut helper = env.spawn_remote_helper(&bob, &url);
    let mut stdin = helper.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(helper.stdout.take().expect("stdout"));
    let mut read_block = || {
        let mut block = String::new();
        loop {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read");
            if line.trim().is_empty() {
                return block;
            }
            block.push_str(&line);
        }
    };
    writeln!(stdin, "list for-push").expect("write");
    assert!(read_block().contains("refs/heads/main"));

    // ...then Alice's push lands before Bob's does.
    env.commit(&alice, "alice", "alice\n", "alice's work");
    env.git_ok(&alice, &["push", &url, "main"]);

    write!(stdin, "push refs/heads/main:refs/heads/main\n\n").expect("write");
    let answer = read_block();
    assert_eq!(answer, "error refs/heads/main fetch first\n");
    drop(stdin);
    assert!(helper.wait().expect("helper exit").success());
    assert_eq!(
        env.bundle_keys("lost-race", "refs/heads/main"),
        vec![format!("lost-race/refs/heads/main/{}.bundle", env.rev_parse(&alice, "HEAD"))]
    );

    // And through git, the user gets git's usual advice.
    let stderr = env.git_fails(&bob, &["push", "origin", "main"]);
    assert!(stderr.contains("fetch first") || stderr.contains("remote contains work that you do"), "{stderr}");
}

#[test]
fn protection_set_by_either_tool_is_honoured_by_the_other() {
    let env = TestEnv::new();
    let url = env.url("shared-protect");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "origin", "main", "main:refs/heads/release"]);

    // The Python tool protects main; our force push is refused.
    let mut protect = env.python_tool_command("git-s3");
    protect.args(["protect", "origin", "main"]).current_dir(&work);
    let output = env.run(protect);
    assert!(output.status.success(), "python git-s3 protect: {}", String::from_utf8_lossy(&output.stderr));
    env.git_ok(&work, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let stderr = env.git_fails(&work, &["push", "--force", "origin", "main"]);
    assert!(stderr.contains("protected branch"), "{stderr}");

    // We protect release; the Python tool's force push is refused too.
    let mut ours = env.command(git_s3_tests::bin_dir().join("git-s3"));
    ours.args(["protect", "origin", "release"]).current_dir(&work);
    assert!(env.run(ours).status.success());
    let output = env.python_git(&work, &["push", "--force", "origin", "HEAD:release"]);
    assert!(!output.status.success(), "the Python tool must not overwrite a branch we protected");
    let original = env.ls_remote(&work, "origin").into_iter().find(|(_, n)| n == "refs/heads/release").map(|(o, _)| o);
    assert_ne!(original, Some(env.rev_parse(&work, "HEAD")));
}

#[test]
fn a_new_remote_head_follows_the_pushers_current_branch() {
    let env = TestEnv::new();
    let work = env.new_repo("work");
    for branch in ["alpha", "beta"] {
        env.git_ok(&work, &["branch", branch]);
    }
    env.git_ok(&work, &["checkout", "-q", "beta"]);
    env.git_ok(&work, &["push", "--all", &env.url("current")]);
    assert_eq!(env.server.get(&env.bucket, "current/HEAD"), b"refs/heads/beta");

    // The current branch was not pushed: main it is, whatever order the batch ran in.
    env.git_ok(&work, &["checkout", "-q", "-b", "unpushed"]);
    env.git_ok(&work, &["push", &env.url("fallback"), "alpha", "main", "beta"]);
    assert_eq!(env.server.get(&env.bucket, "fallback/HEAD"), b"refs/heads/main");
    let clone = env.clone_repo(&env.url("fallback"), "clone");
    assert_eq!(env.git_ok(&clone, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/main");
}
