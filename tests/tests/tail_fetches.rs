//! Fetches and clones that cost the change, not the history: a reader that has a tip a composed
//! bundle records downloads only the segments after it. Each story checks the bytes received and
//! that the reader's repository is whole (`git fsck --strict`) at the right tip; whatever does not
//! add up (no recorded tip here, a record that lies) ends in a whole-bundle fetch and a correct
//! repository.

use std::path::Path;

use git_s3_tests::history::{HISTORY_BYTES, MIB, commit_notes, large_repository, our_log};
use git_s3_tests::{ServerKind, TestEnv};

/// What fetching a small change may download.
const TAIL_FETCH_MAX_BYTES: u64 = MIB;
const BUILD_METADATA_KEY: &str = "git-s3-build";

/// Runs git in `dir`; returns the bytes the daemon's fetches received meanwhile.
fn received(env: &TestEnv, dir: &Path, args: &[&str]) -> u64 {
    let before = env.fetched_bytes();
    env.git_ok(dir, args);
    env.fetched_bytes() - before
}

fn tail_fetches(env: &TestEnv) -> usize {
    env.daemon_log().matches("fetching only the change").count()
}

fn keep_files(repo: &Path) -> Vec<String> {
    std::fs::read_dir(repo.join(".git/objects/pack"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".keep"))
                .collect()
        })
        .unwrap_or_default()
}

/// The reader is whole and at the writer's tip.
fn assert_whole_at(env: &TestEnv, reader: &Path, tip: &str, round: usize) {
    assert_eq!(env.rev_parse(reader, "refs/remotes/origin/main"), tip, "after round {round}");
    env.git_ok(reader, &["fsck", "--strict", "--no-dangling"]);
}

/// A writer pushes small changes, among them a revert, a force push and a push by the Python
/// tool; after each, a reader's fetch downloads only the change, except right after the Python
/// tool's push (its bundle records nothing: fetched whole, as that tool would).
fn fetches_after_small_pushes(env: &TestEnv) {
    let url = env.url("fetches");
    let writer = large_repository(env, "writer", &url);
    env.git_ok(&writer, &["push", "-q", "origin", "main"]);
    let reader = env.clone_repo(&url, "reader");
    let mut reverted = None;
    for round in 1..=12 {
        match round {
            2 => reverted = Some(env.commit(&writer, "setting.txt", "setting = 2\n", "setting 2")),
            4 => {
                let target: &String = reverted.as_ref().expect("a change to revert");
                env.git_ok(&writer, &["revert", "--no-edit", target]);
            }
            6 => {
                env.git_ok(&writer, &["reset", "-q", "--hard", "HEAD~1"]);
                commit_notes(env, &writer, 600);
            }
            _ => {
                commit_notes(env, &writer, round);
            }
        }
        if round == 8 {
            env.python_git_ok(&writer, &["push", "-q", "--force", "origin", "main"]);
        } else {
            env.git_ok(&writer, &["push", "-q", "--force", "origin", "main"]);
        }
        let tails = tail_fetches(env);
        let bytes = received(env, &reader, &["fetch", "-q", "origin"]);
        assert_whole_at(env, &reader, &env.rev_parse(&writer, "HEAD"), round);
        if round == 8 {
            assert!(bytes > HISTORY_BYTES as u64, "round {round}: the Python tool's bundle comes whole ({bytes})");
        } else {
            assert_eq!(tail_fetches(env), tails + 1, "round {round} fetched only the change:\n{}", our_log(env));
            assert!(bytes <= TAIL_FETCH_MAX_BYTES, "round {round}: received {bytes} bytes:\n{}", our_log(env));
        }
    }
    assert_eq!(keep_files(&reader), Vec::<String>::new());
}

#[test]
fn fetches_after_small_pushes_download_only_the_change() {
    fetches_after_small_pushes(&TestEnv::new());
}

#[test]
fn fetches_after_small_pushes_download_only_the_change_on_s3s_fs() {
    fetches_after_small_pushes(&TestEnv::with_server(ServerKind::S3sFs));
}

/// A repository with none of the recorded tips (here: a new one) gets the whole bundle.
#[test]
fn a_reader_without_any_recorded_tip_fetches_the_whole_bundle() {
    let env = TestEnv::new();
    let url = env.url("untracked");
    let writer = large_repository(&env, "writer", &url);
    env.git_ok(&writer, &["push", "-q", "origin", "main"]);
    commit_notes(&env, &writer, 1);
    env.git_ok(&writer, &["push", "-q", "origin", "main"]);
    let reader = env.new_repo("reader");
    env.git_ok(&reader, &["remote", "add", "origin", &url]);
    let bytes = received(&env, &reader, &["fetch", "-q", "origin"]);
    assert!(bytes > HISTORY_BYTES as u64, "received {bytes}");
    assert!(env.daemon_log().contains("this repository has none of the tips the bundle records"), "{}", our_log(&env));
    assert_whole_at(&env, &reader, &env.rev_parse(&writer, "HEAD"), 1);
}

/// A writer's two pushes while the reader stays behind, then the bundle's record is rewritten by
/// another client: `lie(record)` returns what it claims instead.
/// The daemon's log must name one of `reasons` for falling back.
fn fetch_with_a_lying_record(env: &TestEnv, lie: impl Fn(&str) -> String, reasons: &[&str]) {
    let url = env.url("lying");
    let writer = large_repository(env, "writer", &url);
    env.git_ok(&writer, &["push", "-q", "origin", "main"]);
    let reader = env.clone_repo(&url, "reader");
    commit_notes(env, &writer, 1);
    env.git_ok(&writer, &["push", "-q", "origin", "main"]);
    let tip = commit_notes(env, &writer, 2);
    env.git_ok(&writer, &["push", "-q", "origin", "main"]);
    let key = format!("lying/refs/heads/main/{tip}.bundle");
    let record = env.server.metadata(&env.bucket, &key).remove(BUILD_METADATA_KEY).expect("a build record");
    env.server.replace_metadata(&env.bucket, &key, &[(BUILD_METADATA_KEY, &lie(&record))]);

    let bytes = received(env, &reader, &["fetch", "-q", "origin"]);
    let log = env.daemon_log();
    assert!(reasons.iter().any(|r| log.contains(r)), "{}", our_log(env));
    assert!(log.contains("fetching the whole bundle"), "{}", our_log(env));
    assert!(bytes > HISTORY_BYTES as u64, "the whole bundle came ({bytes})");
    assert_whole_at(env, &reader, &tip, 1);
    assert_eq!(keep_files(&reader), Vec::<String>::new(), "the rejected pack is gone");
}

/// `v1 appended=2 garbage=0 segments=<a>,<b>` with each segment `<base>:<offset>:<objects>:<trailer>`.
fn segments(record: &str) -> Vec<Vec<String>> {
    let list = record.split("segments=").nth(1).expect("segments");
    list.split(',').map(|s| s.split(':').map(str::to_string).collect()).collect()
}

fn with_segments(record: &str, segments: &[Vec<String>]) -> String {
    let head = record.split("segments=").next().expect("head");
    let list: Vec<String> = segments.iter().map(|s| s.join(":")).collect();
    format!("{head}segments={}", list.join(","))
}

/// A record whose offset is off: the bytes are no pack, `git index-pack` refuses them.
#[test]
fn a_record_with_a_wrong_offset_ends_in_the_whole_bundle() {
    fetch_with_a_lying_record(
        &TestEnv::new(),
        |record| {
            let mut segs = segments(record);
            let offset: u64 = segs[0][1].parse().expect("offset");
            segs[0][1] = (offset + 7).to_string();
            with_segments(record, &segs)
        },
        &["git index-pack:"],
    );
}

/// A record that skips a segment: the objects arrive, but they need objects the reader lacks
/// (a delta base: index-pack refuses; or a parent commit: the connectivity check does).
#[test]
fn a_record_that_skips_a_segment_ends_in_the_whole_bundle() {
    fetch_with_a_lying_record(
        &TestEnv::new(),
        |record| {
            let segs = segments(record);
            // The first segment's base (the reader's tip), with only the last segment's bytes.
            let mut lie = segs[segs.len() - 1].clone();
            lie[0] = segs[0][0].clone();
            with_segments(record, &[lie])
        },
        &["unresolved delta", "the appended objects need objects this repository lacks"],
    );
}

/// 200 branches and 50 tags, each a small change off main and pushed by us: a clone fetches
/// main's history once and each other ref's own change, and leaves no `.keep` file behind.
#[test]
fn a_clone_of_many_branches_and_tags_fetches_shared_history_once() {
    let env = TestEnv::with_server(ServerKind::S3sFs);
    let url = env.url("many");
    let writer = large_repository(&env, "writer", &url);
    env.git_ok(&writer, &["push", "-q", "origin", "main"]);
    let main = env.rev_parse(&writer, "HEAD");
    for i in 0..200 {
        let branch = format!("topic-{i:03}");
        env.git_ok(&writer, &["checkout", "-q", "-b", &branch, &main]);
        commit_notes(&env, &writer, 1000 + i);
        if i < 50 {
            env.git_ok(&writer, &["tag", "-a", "-m", "release", &format!("v{i}"), &branch]);
        }
    }
    env.git_ok(&writer, &["checkout", "-q", "main"]);
    env.git_ok(&writer, &["push", "-q", "origin", "--all"]);
    env.git_ok(&writer, &["push", "-q", "origin", "--tags"]);
    let bundle = env.server.size(&env.bucket, &format!("many/refs/heads/main/{main}.bundle")).expect("main's bundle");

    let clone = env.path("clone");
    let bytes = received(&env, &env.path(""), &["clone", "-q", &url, &clone.to_string_lossy()]);
    assert!(bytes * 2 <= bundle * 3, "the clone received {bytes} bytes, main's bundle is {bundle}");
    assert_eq!(keep_files(&clone), Vec::<String>::new());
    env.git_ok(&clone, &["fsck", "--strict", "--no-dangling"]);
    let refs = env.git_ok(&clone, &["for-each-ref", "--format=%(refname)"]);
    assert_eq!(refs.lines().filter(|r| r.starts_with("refs/remotes/origin/topic-")).count(), 200);
    assert_eq!(refs.lines().filter(|r| r.starts_with("refs/tags/v")).count(), 50);
    assert_eq!(env.rev_parse(&clone, "refs/remotes/origin/topic-123"), env.rev_parse(&writer, "topic-123"));
    assert_eq!(env.rev_parse(&clone, "refs/tags/v7"), env.rev_parse(&writer, "refs/tags/v7"));
}

/// A reader that fetched only the change still has the whole new pack for its next push: the
/// pack it cloned and the fetched tail make it, so the push composes without downloading.
#[test]
fn a_push_after_a_fetch_of_the_change_composes_without_downloading() {
    let mut env = TestEnv::new();
    let url = env.url("after-fetch");
    let writer = large_repository(&env, "writer", &url);
    env.git_ok(&writer, &["push", "-q", "origin", "main"]);
    let reader = env.clone_repo(&url, "reader");
    commit_notes(&env, &writer, 1);
    env.git_ok(&writer, &["push", "-q", "origin", "main"]);
    // The reader's daemon knows nothing of the writer's pushes.
    env.set_env("GIT_REMOTE_S3_CACHE_DIR", &env.path("reader-cache").to_string_lossy());
    env.git_s3(&["daemon", "restart"]);
    let bytes = received(&env, &reader, &["pull", "-q", "--ff-only", "origin", "main"]);
    assert!(bytes <= TAIL_FETCH_MAX_BYTES, "received {bytes}");
    let tip = commit_notes(&env, &reader, 2);
    let before = env.pushed_bytes();
    env.git_ok(&reader, &["push", "-q", "origin", "main"]);
    let sent = env.pushed_bytes() - before;
    let log = env.daemon_log();
    assert!(log.contains("the old pack is in the daemon's pack cache"), "{}", our_log(&env));
    assert!(!log.contains("downloading it once"), "{}", our_log(&env));
    assert!(sent <= 6 * MIB, "sent {sent}");
    let check = env.clone_repo(&url, "check");
    assert_eq!(env.rev_parse(&check, "HEAD"), tip);
    env.git_ok(&check, &["fsck", "--strict", "--no-dangling"]);
}
