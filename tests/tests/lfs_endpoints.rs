//! Where LFS objects go: git-lfs's own endpoint rules (uploads: `lfs.pushurl`, `lfs.url`,
//! `remote.<name>.lfspushurl`, `remote.<name>.lfsurl`, the remote's push URL; downloads: `lfs.url`,
//! `remote.<name>.lfsurl`, the remote's URL; each key in git config before `.lfsconfig`), followed
//! by the agent and by `git s3 lfs`, where an explicit s3:// argument beats them all. Real git,
//! git-lfs, daemon and shims against moto.

use std::path::Path;

use git_s3_tests::{TestEnv, incompressible_bytes, sha256_hex};

/// The URL git-lfs is given for an S3 location (README: the alias host is never contacted).
fn alias(env: &TestEnv, prefix: &str) -> String {
    format!("https://lfs-alias.git-remote-s3.test/{}/{prefix}", env.bucket)
}

/// The LFS objects under `prefix`, by id.
fn objects_at(env: &TestEnv, prefix: &str) -> Vec<String> {
    env.keys(&format!("{prefix}/lfs/")).iter().filter_map(|k| k.rsplit('/').next().map(str::to_string)).collect()
}

/// A repository tracking `*.bin` with one LFS file, its remote `origin` at `url`, using our agent
/// for every LFS endpoint (`git-lfs-s3 install`).
fn lfs_repo_on(env: &TestEnv, name: &str, url: &str, file: &str, content: &[u8]) -> std::path::PathBuf {
    env.enable_lfs();
    let repo = env.new_repo(name);
    env.git_ok(&repo, &["lfs", "track", "*.bin"]);
    env.git_ok(&repo, &["remote", "add", "origin", url]);
    env.lfs_agent(&repo, &["install"]);
    env.commit(&repo, file, content, "an LFS file");
    repo
}

fn git_config(env: &TestEnv, repo: &Path, key: &str, value: &str) {
    env.git_ok(repo, &["config", key, value]);
}

#[test]
fn bulk_uploads_follow_push_urls_downloads_the_fetch_url_and_an_explicit_url_wins() {
    let env = TestEnv::new();
    let content = incompressible_bytes(40 * 1024, 31);
    let oid = sha256_hex(&content);
    let work = lfs_repo_on(&env, "work", &env.url("replica"), "model.bin", &content);
    // Read from a replica, write to the primary: git pushes the code there, git-lfs its objects.
    git_config(&env, &work, "remote.origin.pushurl", &env.url("primary"));
    env.git_ok(&work, &["push", "-q", "--no-verify", "origin", "main"]);

    env.git_s3_ok(&work, &["lfs", "push"]);
    assert_eq!(objects_at(&env, "primary"), [oid.as_str()], "uploads go to the remote's push URL");
    assert!(objects_at(&env, "replica").is_empty());

    let explicit = env.url("replica");
    env.git_s3_ok(&work, &["lfs", "push", &explicit]);
    assert_eq!(objects_at(&env, "replica"), [oid.as_str()], "an s3:// argument is used as it is");

    git_config(&env, &work, "remote.origin.lfspushurl", &alias(&env, "remote-push"));
    env.git_s3_ok(&work, &["lfs", "push"]);
    assert_eq!(objects_at(&env, "remote-push"), [oid.as_str()], "remote.origin.lfspushurl beats the push URL");
    git_config(&env, &work, "lfs.pushurl", &alias(&env, "staging"));
    env.git_s3_ok(&work, &["lfs", "push"]);
    assert_eq!(objects_at(&env, "staging"), [oid.as_str()], "lfs.pushurl beats the remote's settings");

    // Downloads ignore every push URL: a clone of the primary still reads the primary.
    let clone = env.clone_without_lfs_content(&env.url("primary"), "clone", &[]);
    git_config(&env, &clone, "remote.origin.pushurl", &env.url("nowhere"));
    git_config(&env, &clone, "lfs.pushurl", &alias(&env, "nowhere"));
    let pulled = env.git_s3_ok(&clone, &["lfs", "pull"]);
    assert!(pulled.contains("Downloaded 1 LFS objects"), "{pulled}");
    assert!(std::fs::read(clone.join("model.bin")).expect("a checked-out file") == content);
}

#[test]
fn an_explicit_s3_argument_beats_the_configured_lfs_home_and_an_lfs_server_is_named_not_used() {
    let env = TestEnv::new();
    let content = incompressible_bytes(10 * 1024, 32);
    let work = lfs_repo_on(&env, "work", &env.path("code.git").to_string_lossy(), "a.bin", &content);
    env.lfs_agent(&work, &["install", "--url", &env.url("assets")]);

    env.git_s3_ok(&work, &["lfs", "push", &env.url("elsewhere")]);
    assert_eq!(objects_at(&env, "elsewhere"), [sha256_hex(&content)]);
    assert!(objects_at(&env, "assets").is_empty(), "s3.lfsurl lost to the argument");
    // With no argument (origin, a plain git remote), s3.lfsurl decides.
    env.git_s3_ok(&work, &["lfs", "push"]);
    assert_eq!(objects_at(&env, "assets"), [sha256_hex(&content)]);

    // An LFS server that git-lfs would use is not silently swapped for an S3 location.
    env.lfs_agent(&work, &["uninstall"]);
    git_config(&env, &work, "lfs.url", "https://lfs.example.com/team/repo.git/info/lfs");
    git_config(&env, &work, "remote.origin.url", &env.url("code"));
    let refused = env.git_s3_in(&work, &["lfs", "push"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("https://lfs.example.com/team/repo.git/info/lfs (lfs.url in git config)"), "{stderr}");
}

#[test]
fn a_committed_lfs_url_beats_the_lfsurl_a_clone_of_the_code_remote_sets() {
    let env = TestEnv::new();
    let code = env.url("code");
    let work = env.lfs_repo("work", &code, &[("old.bin", b"in the old home\n".to_vec())]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    // New objects get their own home, which the committed .lfsconfig names from now on.
    env.lfs_agent(&work, &["install", "--url", &env.url("assets"), "--lfsconfig"]);
    let content = incompressible_bytes(30 * 1024, 33);
    std::fs::write(work.join("model.bin"), &content).expect("write an LFS file");
    env.git_ok(&work, &["rm", "-q", "old.bin"]);
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "a model in the new home"]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(objects_at(&env, "assets"), [sha256_hex(&content)]);
    assert!(!objects_at(&env, "code").contains(&sha256_hex(&content)));

    // The clone's helper points remote.origin.lfsurl at the code remote (it holds LFS objects);
    // git-lfs takes lfs.url from .lfsconfig first, and so must its agent.
    env.lfs_agent(&env.path(""), &["install", "--global"]);
    let clone = env.clone_repo(&code, "clone");
    assert!(env.git_ok(&clone, &["config", "remote.origin.lfsurl"]).contains("/code"));
    assert!(std::fs::read(clone.join("model.bin")).expect("the LFS file") == content, "real content, not a pointer");
}
