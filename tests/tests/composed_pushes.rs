//! Pushes that cost the change, not the history: a ref's new bundle is composed inside S3 from
//! an old bundle's bytes. Each story checks what a user relies on: the bytes sent, and that the
//! Python tool and we both clone every ref whole (`git fsck --strict`) after every push.

use std::time::Duration;

use git_s3_tests::fault_proxy::{Fault, Rule};
use git_s3_tests::history::{HISTORY_BYTES, MIB, commit_notes, composed_pushes, large_repository, our_log, push};
use git_s3_tests::{ServerKind, TestEnv, wait_for};

/// What a composed push of a small change may send: S3's 5 MiB smallest first part, the change.
const COMPOSED_PUSH_MAX_BYTES: u64 = 6 * MIB;

/// Both tools clone `url` whole: every expected ref at its value, `git fsck --strict` clean.
fn both_tools_clone(env: &TestEnv, url: &str, expected: &[(&str, &str)], round: usize) {
    let ours = env.path(&format!("ours-{round}"));
    env.git_ok(&env.path(""), &["clone", "-q", url, &ours.to_string_lossy()]);
    let python = env.path(&format!("python-{round}"));
    env.python_git_ok(&env.path(""), &["clone", "-q", url, &python.to_string_lossy()]);
    for clone in [&ours, &python] {
        env.git_ok(clone, &["fsck", "--strict", "--no-dangling"]);
        for (name, oid) in expected {
            let rev = match name.strip_prefix("refs/heads/") {
                Some(branch) => format!("refs/remotes/origin/{branch}"),
                None => name.to_string(),
            };
            assert_eq!(env.rev_parse(clone, &rev), *oid, "{name} in {} after push {round}", clone.display());
        }
        std::fs::remove_dir_all(clone).expect("remove clone");
    }
}

/// Thirty-odd small pushes: fast-forwards, a revert of an earlier change (its blob is deep in
/// the old pack: appending it again would make git refuse the bundle), a force push, a new
/// branch and a tag. Each sends about 5 MiB + the change; after each, both tools clone whole.
fn chain_of_small_pushes(env: &TestEnv) {
    let url = env.url("chain");
    let work = large_repository(env, "work", &url);
    let first = push(env, &work, &["main"]);
    assert!(first > HISTORY_BYTES as u64, "the first push sends the history ({first} bytes)");
    let mut expected: Vec<(String, String)> = vec![("refs/heads/main".into(), env.rev_parse(&work, "HEAD"))];
    let mut reverted = None;
    for round in 1..=32 {
        let args: Vec<String> = match round {
            // A revert brings back blobs that the old pack holds deep in its history.
            12 => {
                let target: &String = reverted.as_ref().expect("a change to revert");
                env.git_ok(&work, &["revert", "--no-edit", target]);
                vec!["main".into()]
            }
            // A force push: the last commit rewritten.
            16 => {
                env.git_ok(&work, &["reset", "-q", "--hard", "HEAD~1"]);
                commit_notes(env, &work, 1000 + round);
                vec!["--force".into(), "main".into()]
            }
            // A new branch, composed from main's bundle.
            20 => {
                env.git_ok(&work, &["checkout", "-q", "-b", "feature"]);
                commit_notes(env, &work, round);
                vec!["feature".into()]
            }
            21 => {
                commit_notes(env, &work, round);
                vec!["feature".into()]
            }
            // An annotated tag of main.
            24 => {
                env.git_ok(&work, &["checkout", "-q", "main"]);
                env.git_ok(&work, &["tag", "-a", "-m", "release", "v1.0", "main"]);
                vec!["v1.0".into()]
            }
            // The change the revert undoes: its old blob stays deep in the pack.
            5 => {
                reverted = Some(env.commit(&work, "setting.txt", "setting = 2\n", "setting 2"));
                vec!["main".into()]
            }
            _ => {
                commit_notes(env, &work, round);
                vec![env.git_ok(&work, &["branch", "--show-current"]).trim().to_string()]
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let composed_before = composed_pushes(env);
        let sent = push(env, &work, &args);
        assert_eq!(composed_pushes(env), composed_before + 1, "push {round} was composed:\n{}", our_log(env));
        assert!(sent <= COMPOSED_PUSH_MAX_BYTES, "push {round} sent {sent} bytes");
        let pushed = args.last().copied().unwrap_or_default();
        let refname = match pushed {
            "v1.0" => "refs/tags/v1.0".to_string(),
            branch => format!("refs/heads/{branch}"),
        };
        let oid = env.git_ok(&work, &["rev-parse", &refname]).trim().to_string();
        expected.retain(|(name, _)| *name != refname);
        expected.push((refname, oid));
        let expected: Vec<(&str, &str)> = expected.iter().map(|(n, o)| (n.as_str(), o.as_str())).collect();
        both_tools_clone(env, &url, &expected, round);
    }
    // The first push kept its pack in the daemon's cache as it went up: nothing was downloaded.
    assert!(!env.daemon_log().contains("downloading it once"), "{}", our_log(env));
}

#[test]
fn a_chain_of_small_pushes_sends_only_the_change_and_every_clone_is_whole() {
    chain_of_small_pushes(&TestEnv::new());
}

#[test]
fn a_chain_of_small_pushes_sends_only_the_change_on_s3s_fs() {
    chain_of_small_pushes(&TestEnv::with_server(ServerKind::S3sFs));
}

/// A clone keeps the bundle's pack as it was; a push from it composes from that copy, even with
/// an empty daemon cache.
#[test]
fn a_push_from_a_fresh_clone_composes_from_the_pack_the_clone_kept() {
    let mut env = TestEnv::new();
    let url = env.url("fresh");
    let work = large_repository(&env, "work", &url);
    push(&env, &work, &["main"]);
    env.set_env("GIT_REMOTE_S3_CACHE_DIR", &env.path("empty-cache").to_string_lossy());
    env.git_s3(&["daemon", "restart"]);
    let clone = env.clone_repo(&url, "clone");
    let tip = commit_notes(&env, &clone, 1);
    let sent = push(&env, &clone, &["main"]);
    assert!(sent <= COMPOSED_PUSH_MAX_BYTES, "sent {sent} bytes:\n{}", our_log(&env));
    let log = env.daemon_log();
    assert!(log.contains("copying the old pack from this repository"), "{}", our_log(&env));
    let status = env.daemon_status().expect("the daemon runs");
    let cache = &status["pack_cache"];
    assert!(cache["dir"].as_str().is_some_and(|d| d.ends_with("empty-cache/packs")), "{cache}");
    assert!(cache["packs"].as_u64() >= Some(2), "the cloned pack and the composed one: {cache}");
    assert!(cache["bytes"].as_u64() > Some(HISTORY_BYTES as u64), "{cache}");
    both_tools_clone(&env, &url, &[("refs/heads/main", &tip)], 1);
}

/// Without any local copy of the old pack (the clone repacked, the cache is new), the push
/// downloads the old pack once and still sends only the change.
#[test]
fn without_a_local_copy_the_old_pack_is_downloaded_once() {
    let mut env = TestEnv::new();
    let url = env.url("nocopy");
    let work = large_repository(&env, "work", &url);
    push(&env, &work, &["main"]);
    let clone = env.clone_repo(&url, "clone");
    env.git_ok(&clone, &["repack", "-a", "-d", "-q", "-f"]);
    env.set_env("GIT_REMOTE_S3_CACHE_DIR", &env.path("empty-cache").to_string_lossy());
    env.git_s3(&["daemon", "restart"]);
    commit_notes(&env, &clone, 1);
    let sent = push(&env, &clone, &["main"]);
    assert!(sent <= COMPOSED_PUSH_MAX_BYTES, "sent {sent} bytes:\n{}", our_log(&env));
    assert!(env.daemon_log().contains("downloading it once"));
    // The next push finds the pack in the cache.
    let tip = commit_notes(&env, &clone, 2);
    push(&env, &clone, &["main"]);
    assert!(env.daemon_log().contains("the old pack is in the daemon's pack cache"));
    assert_eq!(env.daemon_log().matches("downloading it once").count(), 1);
    both_tools_clone(&env, &url, &[("refs/heads/main", &tip)], 1);
}

/// A bundle the Python tool wrote is a fine base: no metadata, a plain `git bundle create`.
#[test]
fn a_bundle_the_python_tool_wrote_is_composed_from() {
    let env = TestEnv::new();
    let url = env.url("python");
    let work = large_repository(&env, "work", &url);
    env.python_git_ok(&work, &["push", "-q", "origin", "main"]);
    commit_notes(&env, &work, 1);
    let sent = push(&env, &work, &["main"]);
    assert!(sent <= COMPOSED_PUSH_MAX_BYTES, "sent {sent} bytes:\n{}", our_log(&env));
    assert_eq!(composed_pushes(&env), 1);
    // And the Python tool pushes on top of ours.
    let tip = commit_notes(&env, &work, 2);
    env.python_git_ok(&work, &["push", "-q", "origin", "main"]);
    both_tools_clone(&env, &url, &[("refs/heads/main", &tip)], 1);
}

/// A store without UploadPartCopy: the push writes the whole bundle, and the daemon stops
/// trying for that store.
#[test]
fn a_store_without_part_copies_gets_whole_bundles() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("nocopy");
    let work = large_repository(&env, "work", &url);
    push(&env, &work, &["main"]);
    // A composed push's part 2 is its first copied part.
    proxy.add(Rule::new("PUT", "/nocopy/refs/heads/main/", Fault::Status(501, "NotImplemented")).query("partNumber=2"));
    commit_notes(&env, &work, 1);
    let sent = push(&env, &work, &["main"]);
    assert_eq!(proxy.faulted().len(), 1, "the copy was refused");
    assert!(sent > HISTORY_BYTES as u64, "the whole bundle went up ({sent} bytes)");
    let tip = commit_notes(&env, &work, 2);
    push(&env, &work, &["main"]);
    let log = env.daemon_log();
    assert_eq!(log.matches("does not implement UploadPartCopy").count(), 2, "{}", our_log(&env));
    assert_eq!(composed_pushes(&env), 0);
    wait_for("the refused upload to be aborted", Duration::from_secs(10), || {
        (env.server.open_multipart_uploads(&env.bucket) == 0).then_some(())
    });
    both_tools_clone(&env, &url, &[("refs/heads/main", &tip)], 1);
}

/// Stores that want every part but the last of one size (Cloudflare R2) get equal parts.
#[test]
fn equal_part_sizes_when_the_store_demands_them() {
    let env = TestEnv::new();
    let url = env.url("equal");
    let work = large_repository(&env, "work", &url);
    env.git_ok(&work, &["config", "s3.compose", "equal-parts"]);
    push(&env, &work, &["main"]);
    let tip = commit_notes(&env, &work, 1);
    let sent = push(&env, &work, &["main"]);
    assert_eq!(composed_pushes(&env), 1);
    // The first part and the remainder that does not fill a part, each under 5 MiB + the change.
    assert!(sent <= 2 * COMPOSED_PUSH_MAX_BYTES, "sent {sent} bytes");
    both_tools_clone(&env, &url, &[("refs/heads/main", &tip)], 1);
}
