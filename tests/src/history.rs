//! A repository with a large history and small changes to it: what composed pushes and fetches
//! of the change only are about.

use std::path::{Path, PathBuf};

use crate::{TestEnv, incompressible_bytes};

pub const MIB: u64 = 1024 * 1024;
/// History large enough to be worth composing from (the daemon's threshold is 16 MiB).
pub const HISTORY_BYTES: usize = 20 * 1024 * 1024;

/// A repository whose history is `HISTORY_BYTES` of data that does not compress, plus a text
/// file that later commits change a line of and a setting a commit can change and revert, with
/// `url` as `origin`.
pub fn large_repository(env: &TestEnv, name: &str, url: &str) -> PathBuf {
    let work = env.new_repo(name);
    std::fs::write(work.join("assets.bin"), incompressible_bytes(HISTORY_BYTES, 7)).expect("write assets");
    std::fs::write(work.join("notes.txt"), notes(0)).expect("write notes");
    std::fs::write(work.join("setting.txt"), "setting = 1\n").expect("write setting");
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "large history"]);
    env.git_ok(&work, &["remote", "add", "origin", url]);
    work
}

/// A text file of a few hundred lines; `version` changes one of them.
pub fn notes(version: usize) -> String {
    (0..400)
        .map(|i| if i == version % 400 { format!("line {i} version {version}\n") } else { format!("line {i}\n") })
        .collect()
}

/// Commits `notes(version)`; returns the commit.
pub fn commit_notes(env: &TestEnv, work: &Path, version: usize) -> String {
    env.commit(work, "notes.txt", notes(version), &format!("notes {version}"))
}

/// The daemon's own lines of its log (not the SDK's), the latest ones.
pub fn our_log(env: &TestEnv) -> String {
    let log = env.daemon_log();
    let ours: Vec<&str> = log.lines().filter(|l| l.contains(" git_s3d")).collect();
    crate::tail(&ours.join("\n"), 30)
}

/// Pushes to `origin`; returns the bytes the push sent.
pub fn push(env: &TestEnv, work: &Path, args: &[&str]) -> u64 {
    let before = env.pushed_bytes();
    let mut full = vec!["push", "-q", "origin"];
    full.extend_from_slice(args);
    env.git_ok(work, &full);
    env.pushed_bytes() - before
}

/// Pushes the daemon composed so far.
pub fn composed_pushes(env: &TestEnv) -> usize {
    env.daemon_log().matches("composed the new bundle from the old one").count()
}
