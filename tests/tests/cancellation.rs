//! Ctrl-C stops the work: when git (or `git s3`) is interrupted, the daemon stops what it was
//! doing for it — transfers, git child processes — leaves no temporary files, open uploads or
//! locks, and the remote is exactly as it was or as the push intended.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use git_s3_tests::{Fault, FaultProxy, Rule, TestEnv, finish_within, incompressible_bytes, sha256_hex, wait_for};

/// How soon after the interrupt the daemon must have stopped (the goal is a second; the slack is
/// for a loaded CI machine).
const STOPPED_WITHIN: Duration = Duration::from_secs(5);

/// Starts `command` as a job of its own (its own process group, as a shell starts it), waits
/// until `started` says the work is under way, then interrupts the whole job as Ctrl-C does.
fn interrupt(env: &TestEnv, mut command: Command, what: &str, started: impl FnMut() -> Option<()>) {
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let child = command.spawn().expect("spawn the job");
    let job = rustix::process::Pid::from_child(&child);
    wait_for(&format!("the {what} to get going"), Duration::from_secs(60), started);
    rustix::process::kill_process_group(job, rustix::process::Signal::INT).expect("interrupt the job");
    let output = finish_within(child, Duration::from_secs(30), what);
    assert!(!output.status.success(), "the interrupted {what} does not report success");
    wait_for("the daemon to stop the work", STOPPED_WITHIN, || no_activity(env).then_some(()));
}

fn activity_bytes(env: &TestEnv, what: &str) -> u64 {
    let status = env.daemon_status().unwrap_or_default();
    let activities = status["activities"].as_array().cloned().unwrap_or_default();
    activities.iter().filter(|a| a["what"] == what).filter_map(|a| a["bytes"].as_u64()).sum()
}

fn no_activity(env: &TestEnv) -> bool {
    env.daemon_status().and_then(|s| s["activities"].as_array().map(Vec::is_empty)).unwrap_or(false)
}

/// No more bytes move: every slow answer the proxy was sending ended because the daemon hung up.
fn wire_goes_quiet(proxy: &FaultProxy) {
    wait_for("the daemon to hang up on every answer", STOPPED_WITHIN, || {
        (proxy.answers_in_progress() == 0).then_some(())
    });
}

/// What the daemon writes while it works: the pack cache's temporary files, and what is in its
/// scratch space (`scratch/<daemon>/`).
fn daemon_leftovers(env: &TestEnv) -> Vec<PathBuf> {
    let cache = env.home().join(".cache/git-remote-s3");
    let mut dirs = vec![cache.join("packs/tmp")];
    dirs.extend(entries(&cache.join("scratch")));
    dirs.iter().flat_map(|dir| entries(dir)).collect()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// What a fetch leaves in a repository: quarantines, temporary packs, keep files.
fn fetch_leftovers(repo: &Path) -> Vec<String> {
    let objects = repo.join(".git/objects");
    [objects.clone(), objects.join("pack")]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.starts_with("tmp_") || name.ends_with(".keep"))
        .collect()
}

fn git(env: &TestEnv, dir: &Path, args: &[&str]) -> Command {
    let mut command = env.command("git");
    command.args(args).current_dir(dir);
    command
}

fn big_commit(env: &TestEnv, repo: &Path, seed: u64) -> String {
    env.commit(repo, &format!("big-{seed}.bin"), incompressible_bytes(24 * 1024 * 1024, seed), "big")
}

/// 40 MiB in 80 files: git writes their pack object by object, for long enough to be seen.
fn many_objects_commit(env: &TestEnv, repo: &Path, seed: u64) -> String {
    for i in 0..80 {
        std::fs::write(repo.join(format!("part-{seed}-{i}.bin")), incompressible_bytes(512 * 1024, seed * 1000 + i))
            .expect("write a file");
    }
    env.git_ok(repo, &["add", "."]);
    env.git_ok(repo, &["commit", "-q", "-m", "many objects"]);
    env.rev_parse(repo, "HEAD")
}

#[test]
fn ctrl_c_stops_the_daemons_work_for_a_push_a_clone_a_fetch_and_a_bulk_pull() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("big");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let old = env.rev_parse(&work, "HEAD");
    let main_keys = || env.keys("big/refs/heads/main/");
    let old_keys = main_keys();

    // A large push whose parts are slow to be answered, interrupted mid-upload: the ref keeps its
    // old value, and no lock or unfinished upload is left.
    big_commit(&env, &work, 1);
    proxy.add(Rule::new("PUT", "/big/refs/", Fault::Delay(Duration::from_secs(2))).query("partNumber").times(1000));
    interrupt(&env, git(&env, &work, &["push", "-q", "origin", "main"]), "push", || {
        proxy.seen().iter().any(|s| s.method == "PUT" && s.query.contains("partNumber")).then_some(())
    });
    wait_for("the unfinished upload to be aborted", STOPPED_WITHIN, || {
        (env.server.open_multipart_uploads(&env.bucket) == 0).then_some(())
    });
    assert_eq!(main_keys(), old_keys, "the old bundle alone: no new one, no lock");
    assert!(env.ls_remote(&work, "origin").contains(&(old.clone(), "refs/heads/main".to_string())));
    assert!(daemon_leftovers(&env).is_empty(), "{:?}", daemon_leftovers(&env));

    // The same for a native remote: interrupted while its pack's parts are slow to be answered,
    // the remote is as it was, with no temporary object and no unfinished upload.
    let native = env.new_repo("native-work");
    env.git_ok(&native, &["remote", "add", "origin", &env.url("big-native")]);
    env.git_ok(&native, &["config", "remote.origin.s3format", "native"]);
    env.git_ok(&native, &["push", "-q", "origin", "main"]);
    let native_keys = env.keys("big-native/");
    many_objects_commit(&env, &native, 2);
    let packs = Rule::new("PUT", "/big-native/native/packs/", Fault::Delay(Duration::from_secs(2)));
    proxy.add(packs.query("partNumber").times(1000));
    interrupt(&env, git(&env, &native, &["push", "-q", "origin", "main"]), "push", || {
        proxy.seen().iter().any(|s| s.path.contains("/native/packs/") && s.query.contains("partNumber")).then_some(())
    });
    wait_for("the unfinished upload to be aborted", STOPPED_WITHIN, || {
        (env.server.open_multipart_uploads(&env.bucket) == 0).then_some(())
    });
    assert_eq!(env.keys("big-native/"), native_keys, "the remote as it was: no pack, no temporary object");
    assert!(daemon_leftovers(&env).is_empty(), "{:?}", daemon_leftovers(&env));
    // Pushed for real: git writes that pack for long enough to be seen writing, so it was
    // uploaded meanwhile, under a temporary key that is gone afterwards.
    proxy.clear_rules();
    let seen_before = proxy.seen().len();
    env.git_ok(&native, &["push", "-q", "origin", "main"]);
    let seen = proxy.seen();
    assert!(seen[seen_before..].iter().any(|s| s.method == "PUT" && s.path.contains("/native/packs/incoming-")));
    assert!(!env.keys("big-native/").iter().any(|k| k.contains("incoming-")));

    // Pushed for real, then cloned while the bundle trickles in: the clone is interrupted.
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let new = env.rev_parse(&work, "HEAD");
    let trickle = Fault::Trickle { bytes: 256 * 1024, pause: Duration::from_millis(250) };
    proxy.add(Rule::new("GET", "/big/refs/", trickle.clone()).times(1000));
    let clone = env.path("clone");
    let clone_arg = clone.to_string_lossy().into_owned();
    interrupt(&env, git(&env, &env.path(""), &["clone", "-q", &url, &clone_arg]), "clone", || {
        (activity_bytes(&env, "fetch") > 0).then_some(())
    });
    wire_goes_quiet(&proxy);
    assert!(fetch_leftovers(&clone).is_empty(), "{:?}", fetch_leftovers(&clone));
    assert!(daemon_leftovers(&env).is_empty(), "{:?}", daemon_leftovers(&env));

    // A fetch into a repository that has the old value, interrupted the same way: nothing of it
    // stays, and the next fetch brings the new value.
    proxy.clear_rules();
    let reader = env.new_repo("reader");
    env.git_ok(&reader, &["remote", "add", "origin", &url]);
    proxy.add(Rule::new("GET", "/big/refs/", trickle).times(1000));
    interrupt(&env, git(&env, &reader, &["fetch", "-q", "origin"]), "fetch", || {
        (activity_bytes(&env, "fetch") > 0).then_some(())
    });
    wire_goes_quiet(&proxy);
    assert!(fetch_leftovers(&reader).is_empty(), "{:?}", fetch_leftovers(&reader));
    proxy.clear_rules();
    env.git_ok(&reader, &["fetch", "-q", "origin"]);
    assert_eq!(env.rev_parse(&reader, "refs/remotes/origin/main"), new);

    // A bulk LFS pull, its objects trickling in: interrupted, it leaves no partial object.
    let files: Vec<(String, Vec<u8>)> =
        (0..3u64).map(|i| (format!("lfs{i}.bin"), incompressible_bytes(6 * 1024 * 1024, 40 + i))).collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(name, data)| (name.as_str(), data.clone())).collect();
    let lfs_url = env.url("big-lfs");
    let lfs = env.lfs_repo("lfs", &lfs_url, &files);
    env.git_ok(&lfs, &["push", "-q", "origin", "main"]);
    let pointers = env.path("pointers");
    let mut clone = env.command("git");
    clone.env("GIT_LFS_SKIP_SMUDGE", "1").args(["clone", "-q", &lfs_url]).arg(&pointers);
    assert!(env.run(clone).status.success());
    proxy.add(
        Rule::new("GET", "/lfs/", Fault::Trickle { bytes: 256 * 1024, pause: Duration::from_millis(250) }).times(1000),
    );
    let lfs_dir = pointers.join(".git/lfs");
    let mut pull = env.command(git_s3_tests::bin_dir().join("git-s3"));
    pull.args(["lfs", "pull"]).current_dir(&pointers);
    interrupt(&env, pull, "lfs pull", || (activity_bytes(&env, "lfs pull") > 0).then_some(()));
    wire_goes_quiet(&proxy);
    // The daemon's downloads are `<oid>-s3-*`; git-lfs leaves empty files of its own there,
    // named by number.
    let ours: Vec<PathBuf> = walk(&lfs_dir.join("tmp"))
        .unwrap_or_default()
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().contains("-s3-")))
        .collect();
    assert!(ours.is_empty(), "no temporary file of the interrupted pull is left: {ours:?}");
    for placed in walk(&lfs_dir.join("objects")).unwrap_or_default() {
        let name = placed.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let content = std::fs::read(&placed).expect("read a placed object");
        assert_eq!(sha256_hex(&content), name, "only whole, verified objects are placed");
    }
    assert!(daemon_leftovers(&env).is_empty(), "{:?}", daemon_leftovers(&env));
}

/// Every file under `dir`, or `None` when it does not exist.
fn walk(dir: &Path) -> Option<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path).unwrap_or_default());
        } else {
            files.push(path);
        }
    }
    Some(files)
}
