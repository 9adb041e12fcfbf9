//! `kill -9` at seeded random moments: of the daemon, of the shim (git-remote-s3 or git-lfs-s3)
//! and of git itself, during plain pushes, pushes with LFS objects and composed pushes (a small
//! change on a large history, its bundle built from the old one inside S3). After every trial the ref
//! holds exactly the old or the new commit, every LFS object in the bucket is whole, the next
//! push repairs what was left (a second bundle, a lock once its TTL has passed, an open bundle
//! upload), and at the end `git s3 doctor` aborts the LFS uploads nobody will finish.
//!
//! `CRASH_TRIALS` (default 72) and `CRASH_SEED` (default fixed) replay or extend the run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use git_s3_tests::history::large_repository;
use git_s3_tests::{TestEnv, finish_within, incompressible_bytes, sha256_hex, wait_for};
use rustix::process::{Pid, Signal};

const PREFIX: &str = "crash";
/// Where composed pushes go: a ref whose history is large enough to compose from.
const COMPOSED_PREFIX: &str = "crash-composed";
const LOCK_TTL_S: u64 = 3;
const BOUND: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Victim {
    Daemon,
    Shim,
    Git,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    Push,
    LfsPush,
    ComposedPush,
}

impl Workload {
    fn prefix(self) -> &'static str {
        if self == Workload::ComposedPush { COMPOSED_PREFIX } else { PREFIX }
    }
}

/// What a trial found right after the kill, before any repair.
#[derive(Debug, Default)]
struct Tally {
    trials: usize,
    killed: usize,
    kept_old: usize,
    took_new: usize,
    second_bundle: usize,
    lock_left: usize,
    open_bundle_uploads: usize,
    repaired_by_doctor: usize,
    longest_recovery: Duration,
}

fn crash_env() -> TestEnv {
    let mut env = TestEnv::new();
    env.set_env("GIT_REMOTE_S3_LOCK_TTL_SECONDS", &LOCK_TTL_S.to_string());
    env
}

fn ref_dir(prefix: &str) -> String {
    format!("{prefix}/refs/heads/main/")
}

fn lock_key(prefix: &str) -> String {
    format!("{}LOCK#.lock", ref_dir(prefix))
}

/// Oids of the bundles main has in the bucket under `prefix`.
fn bundle_oids(env: &TestEnv, prefix: &str) -> Vec<String> {
    env.bundle_keys(prefix, "refs/heads/main")
        .iter()
        .filter_map(|k| k.strip_prefix(&ref_dir(prefix))?.strip_suffix(".bundle").map(str::to_string))
        .collect()
}

/// What `/proc/<pid>/stat` says of a live process: its command name, state and process group.
struct ProcStat {
    comm: String,
    state: String,
    group: i32,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp …; comm may hold spaces, so split after the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.to_string();
    let group = fields.nth(1)?.parse().ok()?;
    Some(ProcStat { comm: head.split_once('(')?.1.to_string(), state, group })
}

/// Processes of a process group, with their command names.
fn group_members(group: Pid) -> Vec<(Pid, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = proc_stat(pid)?;
            (stat.group == group.as_raw_nonzero().get()).then(|| Some((Pid::from_raw(pid)?, stat.comm))).flatten()
        })
        .collect()
}

/// Sends SIGKILL and waits until the process is gone (or a zombie nobody has reaped yet).
fn kill(pid: Pid) -> bool {
    if rustix::process::kill_process(pid, Signal::KILL).is_err() {
        return false;
    }
    wait_for("a killed process to die", BOUND, || {
        let state = proc_stat(pid.as_raw_nonzero().get()).map(|s| s.state);
        matches!(state.as_deref(), None | Some("Z" | "X")).then_some(())
    });
    true
}

fn spawn_push(env: &TestEnv, repo: &Path) -> Child {
    let mut push = env.command("git");
    push.args(["push", "--force", "origin", "main"]).current_dir(repo).stdout(Stdio::null()).stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut push, 0);
    push.spawn().expect("spawn git push")
}

/// Makes `main` a new root commit holding one file of `size` incompressible bytes (plain, or an
/// LFS-tracked `.bin`). A new root each time keeps every bundle as small as its one file (the
/// layout stores a ref's whole history in its bundle), so trials cost the same throughout;
/// pushes are forced.
fn next_commit(env: &TestEnv, repo: &Path, workload: Workload, trial: usize, size: usize) -> (String, Option<String>) {
    if workload == Workload::ComposedPush {
        // A small change on top of the large history: the push composes its bundle.
        let oid = env.commit(repo, "change.txt", format!("trial {trial}\n"), &format!("trial {trial}"));
        return (oid, None);
    }
    let content = incompressible_bytes(size, trial as u64 + 1000);
    env.git_ok(repo, &["checkout", "-q", "--orphan", "next"]);
    env.git_ok(repo, &["rm", "-rfq", "."]);
    let (file, lfs_oid) = match workload {
        Workload::Push | Workload::ComposedPush => (format!("data-{trial}.dat"), None),
        Workload::LfsPush => {
            std::fs::write(repo.join(".gitattributes"), "*.bin filter=lfs diff=lfs merge=lfs -text\n").expect("write");
            (format!("asset-{trial}.bin"), Some(sha256_hex(&content)))
        }
    };
    std::fs::write(repo.join(&file), content).expect("write");
    env.git_ok(repo, &["add", "-A"]);
    env.git_ok(repo, &["commit", "-q", "-m", &format!("trial {trial}")]);
    env.git_ok(repo, &["branch", "-M", "next", "main"]);
    (env.rev_parse(repo, "HEAD"), lfs_oid)
}

/// Pushes until it succeeds: a lock left by a killed daemon blocks for at most its TTL.
fn push_until_accepted(env: &TestEnv, repo: &Path) -> Duration {
    let started = Instant::now();
    let limit = Duration::from_secs(LOCK_TTL_S * 4 + 60);
    wait_for("a push to be accepted after a crash", limit, || {
        let output = finish_within(spawn_push(env, repo), BOUND, "a repair push");
        output.status.success().then_some(())
    });
    started.elapsed()
}

/// How long a clean push of `size` bytes takes here: the window kills are drawn from.
fn calibrate(env: &TestEnv, repo: &Path, workload: Workload, size: usize, trial: usize) -> Duration {
    next_commit(env, repo, workload, trial, size);
    let started = Instant::now();
    let output = finish_within(spawn_push(env, repo), BOUND, "a calibration push");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    started.elapsed()
}

#[test]
fn kill_9_at_random_moments_never_leaves_a_ref_between_old_and_new() {
    let trials: usize = std::env::var("CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(72);
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_0006);
    let mut rng = fastrand::Rng::with_seed(seed);
    let env = crash_env();
    let plain = env.lfs_repo("work", &env.url(PREFIX), &[("first.bin", b"first\n".to_vec())]);
    env.git_ok(&plain, &["push", "origin", "main"]);
    let composed = large_repository(&env, "composed", &env.url(COMPOSED_PREFIX));
    env.git_ok(&composed, &["push", "-q", "origin", "main"]);
    let repo_for = |workload| if workload == Workload::ComposedPush { &composed } else { &plain };
    const MAX_SIZE: usize = 12 * 1024 * 1024;
    let workloads = [Workload::Push, Workload::LfsPush, Workload::ComposedPush];
    let windows: BTreeMap<Workload, Duration> = workloads
        .into_iter()
        .enumerate()
        .map(|(i, w)| (w, calibrate(&env, repo_for(w), w, MAX_SIZE, 100_000 + i) * 3 / 2))
        .collect();
    let mut tallies: BTreeMap<(Victim, Workload), Tally> = BTreeMap::new();
    let mut olds: BTreeMap<&str, String> =
        [(PREFIX, env.rev_parse(&plain, "HEAD")), (COMPOSED_PREFIX, env.rev_parse(&composed, "HEAD"))].into();

    for trial in 0..trials {
        let victim = [Victim::Daemon, Victim::Shim, Victim::Git][trial % 3];
        let workload = workloads[(trial / 3) % workloads.len()];
        let (repo, prefix) = (repo_for(workload), workload.prefix());
        let old = olds[prefix].clone();
        let size = rng.usize(64 * 1024..MAX_SIZE);
        let (new, lfs_oid) = next_commit(&env, repo, workload, trial, size);
        env.git_ok(repo, &["ls-remote", "origin"]); // the daemon runs before the clock starts
        let daemon = env.daemon_status().and_then(|s| Pid::from_raw(s["pid"].as_i64().unwrap_or(0) as i32));
        // Kills fall anywhere in the push of this size (and a little after it).
        let share = if workload == Workload::ComposedPush { 1.0 } else { (size as f64 / MAX_SIZE as f64).max(0.25) };
        let window = windows[&workload].mul_f64(share);
        let delay = Duration::from_millis(rng.u64(0..window.as_millis().max(1) as u64));

        let push = spawn_push(&env, repo);
        let group = Pid::from_raw(push.id() as i32).expect("pid");
        std::thread::sleep(delay); // the seeded random moment of the crash, not a synchronisation
        let shim_name = if workload == Workload::LfsPush { "git-lfs-s3" } else { "git-remote-s3" };
        let target = match victim {
            Victim::Daemon => daemon,
            Victim::Git => Some(group),
            Victim::Shim => group_members(group).into_iter().find(|(_, comm)| comm == shim_name).map(|(pid, _)| pid),
        };
        let killed = target.is_some_and(kill);
        finish_within(push, BOUND, &format!("trial {trial}: git push"));
        // Orphans of a killed git (git-lfs, the shim) finish on their own; wait for them.
        wait_for("the push's processes to end", BOUND, || group_members(group).is_empty().then_some(()));
        if env.daemon_status().is_some() {
            wait_for("the daemon to finish what the push started", BOUND, || {
                let status = env.daemon_status()?;
                status["activities"].as_array().is_none_or(|a| a.is_empty()).then_some(())
            });
        }

        // Exactly the old or the new state.
        let bundles = bundle_oids(&env, prefix);
        let tally = tallies.entry((victim, workload)).or_default();
        tally.trials += 1;
        tally.killed += usize::from(killed);
        assert!(!bundles.is_empty(), "trial {trial}: main lost its bundle");
        assert!(
            bundles.iter().all(|b| *b == old || *b == new),
            "trial {trial} ({victim:?}, {workload:?}): bundles {bundles:?} are neither old {old} nor new {new}"
        );
        let listed = env.ls_remote(repo, "origin");
        let value = listed.iter().find(|(_, r)| r == "refs/heads/main").map(|(o, _)| o.clone());
        assert!(value == Some(old.clone()) || value == Some(new.clone()), "trial {trial}: main is {value:?}");
        let took_new = value.as_deref() == Some(new.as_str());
        tally.took_new += usize::from(took_new);
        tally.kept_old += usize::from(!took_new);
        tally.second_bundle += usize::from(bundles.len() > 1);
        tally.lock_left += env.keys(&lock_key(prefix)).len();
        tally.open_bundle_uploads += env.server.open_uploads(&env.bucket, &ref_dir(prefix)).len();
        if let Some(oid) = &lfs_oid {
            let key = format!("{PREFIX}/lfs/{oid}");
            if env.server.size(&env.bucket, &key).is_some() {
                assert_eq!(sha256_hex(&env.server.get(&env.bucket, &key)), *oid, "trial {trial}: a partial LFS object");
            } else {
                assert!(!took_new, "trial {trial}: main moved before its LFS object was stored");
            }
        }

        // The next push repairs what the crash left, and the remote is clean again.
        let recovery = push_until_accepted(&env, repo);
        tally.longest_recovery = tally.longest_recovery.max(recovery);
        eprintln!("trial {trial}: {victim:?} {workload:?} killed={killed} after {delay:?}; recovered in {recovery:?}");
        let clean = || bundle_oids(&env, prefix) == vec![new.clone()] && env.keys(&lock_key(prefix)).is_empty();
        if !clean() {
            // A daemon killed after its push committed but before it tidied up: the value is new,
            // so git had nothing to push. Doctor removes the second bundle and, once stale, the lock.
            tally.repaired_by_doctor += 1;
            let limit = Duration::from_secs(LOCK_TTL_S * 4 + 30);
            wait_for("doctor to repair what the killed daemon left", limit, || {
                let url = env.url(prefix);
                env.git_s3(&["doctor", &url, "--yes", "--delete-stale-locks", "--delete-bundle"]);
                clean().then_some(())
            });
        }
        assert!(env.server.open_uploads(&env.bucket, &ref_dir(prefix)).is_empty(), "trial {trial}: open bundle upload");
        olds.insert(prefix, new);
    }

    // Doctor aborts the LFS uploads that killed agents or daemons left open.
    let orphans = env.server.open_uploads(&env.bucket, &format!("{PREFIX}/"));
    let doctor = env.git_s3(&["doctor", &env.url(PREFIX), "--yes", "--upload-idle", "0"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "doctor: {report}{}", String::from_utf8_lossy(&doctor.stderr));
    assert_eq!(report.matches("aborted it").count(), orphans.len(), "{report}");
    assert_eq!(env.server.open_multipart_uploads(&env.bucket), 0);

    // Every commit pushed is in a fresh clone, whole, with its LFS files.
    let clone = env.clone_repo(&env.url(PREFIX), "clone");
    assert_eq!(env.rev_parse(&clone, "HEAD"), olds[PREFIX]);
    env.git_ok(&clone, &["fsck", "--no-progress"]);
    env.git_ok(&clone, &["lfs", "fsck"]);
    // The composed bundle after all those kills: the Python tool and we clone it whole.
    let clone = env.clone_repo(&env.url(COMPOSED_PREFIX), "clone-composed");
    assert_eq!(env.rev_parse(&clone, "HEAD"), olds[COMPOSED_PREFIX]);
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    let python_clone = env.path("python-clone-composed");
    env.python_git_ok(&env.path(""), &["clone", "-q", &env.url(COMPOSED_PREFIX), &python_clone.to_string_lossy()]);
    assert_eq!(env.rev_parse(&python_clone, "HEAD"), olds[COMPOSED_PREFIX]);
    env.git_ok(&python_clone, &["fsck", "--strict", "--no-progress"]);
    let composed_pushes = env.daemon_log().matches("composed the new bundle from the old one").count();

    eprintln!(
        "crash trials (seed {seed:#x}, lock TTL {LOCK_TTL_S}s, orphaned LFS uploads aborted by doctor: {}, composed pushes: {composed_pushes}):",
        orphans.len()
    );
    eprintln!(
        "| victim | workload | trials | killed mid-push | kept old | took new | 2nd bundle | lock left | open bundle upload | left for doctor | longest recovery |"
    );
    for ((victim, workload), t) in &tallies {
        eprintln!(
            "| {victim:?} | {workload:?} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}s |",
            t.trials,
            t.killed,
            t.kept_old,
            t.took_new,
            t.second_bundle,
            t.lock_left,
            t.open_bundle_uploads,
            t.repaired_by_doctor,
            t.longest_recovery.as_secs_f64()
        );
    }
    // A killed daemon may take its push (or the log line of one that went through) with it;
    // still, most composed-push trials must really have composed.
    let composed_trials = trials.div_ceil(3);
    assert!(composed_pushes * 2 >= composed_trials, "only {composed_pushes} pushes were composed");
}

/// The native format under `kill -9`: an atomic push of a branch, a second branch and a new tag
/// leaves all three as they were or all three as pushed, whoever dies when; the next push goes
/// through at once (there are no locks to wait for), and a clone is whole.
#[test]
fn kill_9_during_native_pushes_leaves_every_ref_old_or_new_together() {
    const NATIVE_PREFIX: &str = "crash-native";
    let trials: usize = std::env::var("CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).map_or(24, |t: usize| t / 3);
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_0021);
    let mut rng = fastrand::Rng::with_seed(seed);
    let env = crash_env();
    let repo = env.new_repo("native");
    env.git_ok(&repo, &["remote", "add", "origin", &env.url(NATIVE_PREFIX)]);
    env.git_ok(&repo, &["config", "remote.origin.s3format", "native"]);
    let spawn = |tag: &str| {
        let mut push = env.command("git");
        push.args(["push", "--atomic", "--force", "origin", "main", "side", &format!("refs/tags/{tag}")])
            .current_dir(&repo)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut push, 0);
        push.spawn().expect("spawn git push")
    };
    let state = || {
        let listed = env.ls_remote(&repo, "origin");
        let value = |name: &str| listed.iter().find(|(_, r)| r == name).map(|(o, _)| o.clone());
        (
            value("refs/heads/main"),
            value("refs/heads/side"),
            listed.iter().filter(|(_, r)| r.starts_with("refs/tags/")).count(),
        )
    };
    const MAX_SIZE: usize = 4 * 1024 * 1024;
    const STREAMED_SIZE: usize = 20 * 1024 * 1024;
    let next = |trial: usize, size: usize| {
        let (main, _) = next_commit(&env, &repo, Workload::Push, trial, size);
        env.git_ok(&repo, &["checkout", "-q", "-B", "side", "main"]);
        let side = env.commit(&repo, "side.txt", format!("side {trial}\n"), "side");
        env.git_ok(&repo, &["checkout", "-q", "main"]);
        env.git_ok(&repo, &["tag", "-a", "-m", "release", &format!("t{trial}"), &side]);
        (main, side)
    };
    let (mut old_main, mut old_side) = next(1_000, MAX_SIZE);
    let started = Instant::now();
    let output = finish_within(spawn("t1000"), BOUND, "the first push");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let window = started.elapsed() * 3 / 2;
    let mut old_tags = 1;
    let (mut killed_count, mut took_new) = (0, 0);
    for trial in 0..trials {
        let victim = [Victim::Daemon, Victim::Shim, Victim::Git][trial % 3];
        // Every fourth push is large enough for its pack to be uploaded while git writes it.
        let size = rng.usize(64 * 1024..MAX_SIZE);
        let (new_main, new_side) = next(trial, if trial % 4 == 3 { STREAMED_SIZE } else { size });
        env.git_ok(&repo, &["ls-remote", "origin"]);
        let daemon = env.daemon_status().and_then(|s| Pid::from_raw(s["pid"].as_i64().unwrap_or(0) as i32));
        let delay = Duration::from_millis(rng.u64(0..window.as_millis().max(1) as u64));
        let push = spawn(&format!("t{trial}"));
        let group = Pid::from_raw(push.id() as i32).expect("pid");
        std::thread::sleep(delay); // the seeded random moment of the crash, not a synchronisation
        let target = match victim {
            Victim::Daemon => daemon,
            Victim::Git => Some(group),
            Victim::Shim => {
                group_members(group).into_iter().find(|(_, comm)| comm == "git-remote-s3").map(|(pid, _)| pid)
            }
        };
        killed_count += usize::from(target.is_some_and(kill));
        finish_within(push, BOUND, &format!("trial {trial}: git push"));
        wait_for("the push's processes to end", BOUND, || group_members(group).is_empty().then_some(()));
        if env.daemon_status().is_some() {
            wait_for("the daemon to finish what the push started", BOUND, || {
                let status = env.daemon_status()?;
                status["activities"].as_array().is_none_or(|a| a.is_empty()).then_some(())
            });
        }
        let now = state();
        let old = (Some(old_main.clone()), Some(old_side.clone()), old_tags);
        let new = (Some(new_main.clone()), Some(new_side.clone()), old_tags + 1);
        assert!(now == old || now == new, "trial {trial} ({victim:?}): {now:?} is neither {old:?} nor {new:?}");
        took_new += usize::from(now == new);
        // The next push goes through at once: nothing is locked.
        let output = finish_within(spawn(&format!("t{trial}")), BOUND, "the push after a crash");
        assert!(output.status.success(), "trial {trial}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(state(), new, "trial {trial}");
        (old_main, old_side, old_tags) = (new_main, new_side, old_tags + 1);
    }
    eprintln!(
        "native crash trials (seed {seed:#x}): {trials} trials, {killed_count} kills, {took_new} took the new state"
    );
    let clone = env.clone_repo(&env.url(NATIVE_PREFIX), "clone-native");
    assert_eq!(env.rev_parse(&clone, "HEAD"), old_main);
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.git_ok(&clone, &["tag"]).lines().count(), old_tags);
}

/// `kill -9` of the daemon during `git s3 migrate`, both ways: every ref reads as it was
/// throughout (in one format or the other), and running the migration again finishes it.
#[test]
fn kill_9_during_migrations_never_loses_a_ref() {
    const MIGRATING: &str = "crash-migrate";
    let trials: usize = std::env::var("CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).map_or(12, |t: usize| t / 6);
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_0022);
    let mut rng = fastrand::Rng::with_seed(seed);
    let env = crash_env();
    let repo = env.new_repo("migrating");
    for i in 0..6 {
        env.git_ok(&repo, &["checkout", "-q", "-b", &format!("topic-{i}"), "main"]);
        env.commit(&repo, &format!("topic-{i}"), incompressible_bytes(256 * 1024, i), "a topic");
        env.git_ok(&repo, &["tag", &format!("v{i}")]);
    }
    env.git_ok(&repo, &["checkout", "-q", "main"]);
    env.git_ok(&repo, &["remote", "add", "origin", &env.url(MIGRATING)]);
    env.git_ok(&repo, &["push", "-q", "origin", "--all"]);
    env.git_ok(&repo, &["push", "-q", "origin", "--tags"]);
    let refs = env.ls_remote(&repo, "origin");
    let migrate = |to: &str| {
        let mut command = env.command(git_s3_tests::bin_dir().join("git-s3"));
        command.args(["migrate", "origin", "--to", to]).current_dir(&repo).stdout(Stdio::null()).stderr(Stdio::piped());
        command.spawn().expect("spawn git s3 migrate")
    };
    let started = Instant::now();
    let output = finish_within(migrate("native"), BOUND, "a calibration migration");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let window = started.elapsed() * 3 / 2;
    // A lock a killed daemon left on a bundle ref blocks for at most its TTL.
    let finish = |to: &str| {
        wait_for("a migration to finish after a crash", Duration::from_secs(LOCK_TTL_S * 4 + 60), || {
            finish_within(migrate(to), BOUND, "a migration after a crash").status.success().then_some(())
        });
    };
    finish("bundles");
    let mut killed = 0;
    for trial in 0..trials {
        let to = if trial % 2 == 0 { "native" } else { "bundles" };
        env.git_ok(&repo, &["ls-remote", "origin"]); // the daemon runs before the clock starts
        let daemon = env.daemon_status().and_then(|s| Pid::from_raw(s["pid"].as_i64().unwrap_or(0) as i32));
        let delay = Duration::from_millis(rng.u64(0..window.as_millis().max(1) as u64));
        let child = migrate(to);
        std::thread::sleep(delay); // the seeded random moment of the crash, not a synchronisation
        killed += usize::from(daemon.is_some_and(kill));
        finish_within(child, BOUND, &format!("trial {trial}: git s3 migrate"));
        assert_eq!(env.ls_remote(&repo, "origin"), refs, "trial {trial} (to {to}, killed after {delay:?})");
        finish(to);
        assert_eq!(env.ls_remote(&repo, "origin"), refs, "trial {trial}: after the migration finished");
        let ls = env.git_s3_ok(&repo, &["ls", "origin"]);
        assert!(ls.contains(&format!("format: {to}")), "trial {trial}: {ls}");
        let leftovers: Vec<String> = env
            .keys(&format!("{MIGRATING}/"))
            .into_iter()
            .filter(|k| if to == "native" { k.ends_with(".bundle") } else { k.contains("/native") })
            .collect();
        assert!(leftovers.is_empty(), "trial {trial}: {leftovers:?}");
    }
    eprintln!("migration crash trials (seed {seed:#x}): {trials} trials, {killed} daemons killed");
    let clone = env.clone_repo(&env.url(MIGRATING), "clone-migrated");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
}

/// `kill -9` of the daemon while it compacts a native remote after a push (the push has
/// answered; its daemon merges packs in the background): the refs are what the pushes made,
/// every clone is whole, the next push compacts again, and what a killed compaction left (a
/// merged pack no root names) is an orphan doctor sweeps.
#[test]
fn kill_9_during_compactions_leaves_the_pushed_refs_and_a_whole_history() {
    const COMPACT_PREFIX: &str = "crash-compact";
    let trials: usize = std::env::var("CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).map_or(10, |t: usize| t / 6);
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_0022);
    let mut rng = fastrand::Rng::with_seed(seed);
    let env = crash_env();
    let repo = env.new_repo("compact");
    env.git_ok(&repo, &["remote", "add", "origin", &env.url(COMPACT_PREFIX)]);
    env.git_ok(&repo, &["config", "remote.origin.s3format", "native"]);
    std::fs::write(repo.join("base.bin"), incompressible_bytes(1 << 20, 7)).expect("write");
    env.git_ok(&repo, &["add", "."]);
    env.git_ok(&repo, &["commit", "-q", "-m", "a base"]);
    env.git_ok(&repo, &["push", "-q", "origin", "main"]);
    let mut killed_count = 0;
    for trial in 0..trials {
        // Two small pushes: the second breaks the geometric rule, so its daemon compacts.
        for step in 0..2 {
            env.commit(&repo, "change.txt", format!("trial {trial} step {step}\n"), "a small change");
            env.git_ok(&repo, &["push", "-q", "origin", "main"]);
        }
        let daemon = env.daemon_status().and_then(|s| Pid::from_raw(s["pid"].as_i64().unwrap_or(0) as i32));
        // the seeded random moment of the crash, not a synchronisation
        std::thread::sleep(Duration::from_millis(rng.u64(0..800)));
        killed_count += usize::from(daemon.is_some_and(kill));
        let listed = env.ls_remote(&repo, "origin");
        let main = listed.iter().find(|(_, r)| r == "refs/heads/main").map(|(o, _)| o.clone());
        assert_eq!(main, Some(env.rev_parse(&repo, "main")), "trial {trial}: main is what the push made");
    }
    eprintln!("compaction crash trials (seed {seed:#x}): {trials} trials, {killed_count} kills");
    let clone = env.clone_repo(&env.url(COMPACT_PREFIX), "clone-compact");
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&repo, "main"));
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    // What killed compactions left is swept, and the remote still reads whole.
    env.git_s3_ok(&repo, &["doctor", "origin", "--yes", "--upload-idle", "0"]);
    let report = env.git_s3_ok(&repo, &["doctor", "origin", "--dry-run"]);
    assert!(!report.contains("not named by the manifest"), "{report}");
    env.commit(&repo, "change.txt", "after the crashes\n", "a change after the crashes");
    env.git_ok(&repo, &["push", "-q", "origin", "main"]);
    let clone = env.clone_repo(&env.url(COMPACT_PREFIX), "clone-after");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&repo, "main"));
}
