//! What a real bucket brings in the first week, that a local server does not show by itself: a
//! bucket in another region than the user's default, a KMS key the team requires, SHA-256
//! repositories, and credentials that lack a permission. The fault proxy plays AWS's answers
//! (region redirects, 403s) in front of moto; moto records how each object is encrypted.

use std::path::PathBuf;

use git_s3_tests::fault_proxy::{Fault, FaultProxy, Rule};
use git_s3_tests::history::{HISTORY_BYTES, MIB, composed_pushes, notes, push};
use git_s3_tests::{TestEnv, bin_dir, incompressible_bytes, sha256_hex};

const KMS_KEY: &str = "arn:aws:kms:eu-west-1:123456789012:key/0f3c1a52-7e0b-4f6e-9c55-2b1e1d7c9a10";

fn redirects(proxy: &FaultProxy) -> usize {
    proxy.faulted().iter().filter(|s| s.fault == Some(Fault::BucketRegion("eu-west-1"))).count()
}

#[test]
fn a_bucket_in_another_region_is_found_once_and_followed_from_then_on() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("far");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    // From now on the bucket answers as one in eu-west-1 does; the user's default region is
    // us-east-1 (the test world's AWS_REGION).
    proxy.add(Rule::new("", "", Fault::BucketRegion("eu-west-1")).times(usize::MAX));

    // A clone lists refs and reads HEAD side by side: each may be redirected once, and both
    // must then be answered.
    let clone = env.clone_repo(&url, "clone");
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&work, "HEAD"));
    let first = redirects(&proxy);
    assert!((1..=2).contains(&first), "{first} redirects in the first command");

    env.commit(&work, "more.txt", "more\n", "more");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    env.git_ok(&clone, &["pull", "-q"]);
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&work, "HEAD"));
    assert_eq!(redirects(&proxy), first, "later commands start in the bucket's region");

    let status = env.daemon_status().expect("the daemon runs");
    let regions = status["bucket_regions"].as_array().expect("bucket_regions");
    assert_eq!(regions.len(), 1, "{regions:?}");
    assert_eq!(regions[0]["bucket"], env.bucket.as_str());
    assert_eq!(regions[0]["region"], "eu-west-1");
    assert_eq!(regions[0]["asked"], "us-east-1");
    let text = String::from_utf8_lossy(&env.git_s3(&["daemon", "status"]).stdout).into_owned();
    assert!(text.contains("is in eu-west-1 (requests went to us-east-1 first)"), "{text}");
}

/// A repository whose history is large enough to compose from, in `format`.
fn large_repository(env: &TestEnv, name: &str, format: &str, url: &str) -> PathBuf {
    let work = env.path(name);
    std::fs::create_dir_all(&work).expect("repo dir");
    env.git_ok(&work, &["init", "-q", &format!("--object-format={format}")]);
    std::fs::write(work.join("assets.bin"), incompressible_bytes(HISTORY_BYTES, 11)).expect("write assets");
    std::fs::write(work.join("notes.txt"), notes(0)).expect("write notes");
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "large history"]);
    env.git_ok(&work, &["remote", "add", "origin", url]);
    work
}

#[test]
fn a_kms_key_encrypts_every_object_written() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("sealed");
    let work = large_repository(&env, "work", "sha1", &url);
    env.git_ok(&work, &["config", "remote.origin.s3kmsKeyId", KMS_KEY]);
    env.enable_lfs();
    env.git_ok(&work, &["lfs", "track", "*.dat"]);
    let lfs_content = incompressible_bytes(MIB as usize, 3);
    std::fs::write(work.join("large.dat"), &lfs_content).expect("write an LFS file");
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "an LFS file"]);
    env.lfs_agent(&work, &["install", "--remote", "origin"]);
    // A whole bundle (multipart: it is larger than one part), then a composed one (parts copied
    // inside S3), a protection mark; HEAD, locks and the LFS object come with the pushes.
    push(&env, &work, &["main"]);
    env.commit(&work, "notes.txt", notes(1), "notes 1");
    let sent = push(&env, &work, &["main"]);
    assert_eq!(composed_pushes(&env), 1, "the second push is composed ({sent} bytes sent)");
    let mut protect = env.command(bin_dir().join("git-s3"));
    protect.args(["protect", "origin", "main"]).current_dir(&work);
    let protect = env.run(protect);
    assert!(protect.status.success(), "{}", String::from_utf8_lossy(&protect.stderr));

    let writes: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| {
            // Uploaded and copied parts inherit the upload's encryption and carry no key.
            (s.method == "PUT" && !s.query.contains("partNumber"))
                || (s.method == "POST" && s.query.contains("uploads"))
        })
        .collect();
    assert!(writes.iter().any(|s| s.path.contains("LOCK")), "locks are written: {writes:?}");
    assert!(writes.iter().any(|s| s.query.contains("uploads")), "multipart uploads are started: {writes:?}");
    for write in &writes {
        assert_eq!(write.kms_key.as_deref(), Some(KMS_KEY), "{} {}?{}", write.method, write.path, write.query);
        assert!(write.bucket_key, "{} {}?{} asks for a Bucket Key", write.method, write.path, write.query);
    }
    let bundle = env.bundle_keys("sealed", "refs/heads/main").pop().expect("a bundle");
    let lfs_object = format!("sealed/lfs/{}", sha256_hex(&lfs_content));
    // As S3 keeps them (moto does not keep the Bucket Key flag of multipart uploads: the
    // requests above show it asked for one).
    for key in [bundle.as_str(), "sealed/HEAD", "sealed/refs/heads/main/PROTECTED#", lfs_object.as_str()] {
        let (sse, kms_key, _) = env.server.encryption(&env.bucket, key);
        assert_eq!(sse.as_deref(), Some("aws:kms"), "{key}");
        assert_eq!(kms_key.as_deref(), Some(KMS_KEY), "{key}");
    }
    let clone = env.clone_repo(&url, "clone");
    assert!(std::fs::read(clone.join("large.dat")).expect("the LFS file") == lfs_content, "real content");
}

#[test]
fn a_sha256_repository_round_trips_and_composes_like_a_sha1_one() {
    let env = TestEnv::new();
    env.enable_lfs();
    let url = env.url("sha256");
    let work = large_repository(&env, "work", "sha256", &url);
    env.git_ok(&work, &["tag", "v1"]);
    push(&env, &work, &["main", "v1"]);
    let keys = env.bundle_keys("sha256", "refs/heads/main");
    assert_eq!(keys.len(), 1);
    let tip = env.rev_parse(&work, "main");
    assert_eq!(tip.len(), 64);
    assert!(keys[0].ends_with(&format!("/{tip}.bundle")), "{keys:?}");
    let start = env.server.get(&env.bucket, &keys[0]);
    assert!(start.starts_with(b"# v3 git bundle\n@object-format=sha256\n"), "a bundle git writes for sha256");

    let clone = env.clone_repo(&url, "clone");
    assert_eq!(env.git_ok(&clone, &["rev-parse", "--show-object-format"]).trim(), "sha256");
    assert_eq!(env.rev_parse(&clone, "HEAD"), tip);
    assert_eq!(env.rev_parse(&clone, "v1"), tip);
    let remote = env.git_ok(&clone, &["ls-remote", "origin"]);
    assert!(remote.contains(&format!("{tip}\trefs/heads/main")), "{remote}");

    // A small change is composed from the old bundle, as for sha1.
    let next = env.commit(&work, "notes.txt", notes(1), "notes 1");
    let composed_before = composed_pushes(&env);
    let sent = push(&env, &work, &["main"]);
    assert_eq!(composed_pushes(&env) - composed_before, 1, "composed ({sent} bytes sent)");
    assert!(sent < 6 * MIB, "a composed push sends the change, not the history ({sent} bytes)");
    env.git_ok(&clone, &["pull", "-q"]);
    assert_eq!(env.rev_parse(&clone, "HEAD"), next);
    env.git_ok(&clone, &["fsck", "--strict", "--no-dangling"]);
    let fresh = env.clone_repo(&url, "fresh");
    env.git_ok(&fresh, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(env.rev_parse(&fresh, "HEAD"), next);

    // Branches are deleted, and LFS objects go where they always do.
    env.git_ok(&work, &["push", "-q", "origin", "main:refs/heads/topic"]);
    env.git_ok(&work, &["push", "-q", "origin", ":refs/heads/topic"]);
    assert!(env.bundle_keys("sha256", "refs/heads/topic").is_empty());
    env.git_ok(&work, &["lfs", "track", "*.dat"]);
    let lfs_content = b"large file in a sha256 repository\n".to_vec();
    std::fs::write(work.join("big.dat"), &lfs_content).expect("write an LFS file");
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "an LFS file"]);
    env.lfs_agent(&work, &["install", "--remote", "origin"]);
    push(&env, &work, &["main"]);
    assert!(env.keys("sha256/lfs/").contains(&format!("sha256/lfs/{}", sha256_hex(&lfs_content))));
    let with_lfs = env.clone_repo(&url, "with-lfs");
    assert!(std::fs::read(with_lfs.join("big.dat")).expect("the LFS file") == lfs_content, "real content");
}

#[test]
fn repositories_of_another_object_format_get_one_line() {
    let env = TestEnv::new();
    let url = env.url("formats");
    let sha256 = env.path("sha256");
    std::fs::create_dir_all(&sha256).expect("repo dir");
    env.git_ok(&sha256, &["init", "-q", "--object-format=sha256"]);
    env.commit(&sha256, "a.txt", "a\n", "a");
    env.git_ok(&sha256, &["remote", "add", "origin", &url]);
    env.git_ok(&sha256, &["push", "-q", "origin", "main"]);

    let sha1 = env.new_repo("sha1");
    env.git_ok(&sha1, &["remote", "add", "origin", &url]);
    let pushed = env.git_fails(&sha1, &["push", "-q", "origin", "main:refs/heads/other"]);
    assert!(pushed.contains("this repository uses sha1 object ids but the remote holds sha256 ones"), "{pushed}");
    assert!(env.bundle_keys("formats", "refs/heads/other").is_empty(), "nothing was written");
    let fetched = env.git_fails(&sha1, &["fetch", "-q", "origin"]);
    assert!(fetched.contains("sha256"), "{fetched}");
    assert_eq!(fetched.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one line: {fetched}");
}

#[test]
fn access_denied_names_the_permission_and_the_key() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("guarded");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);

    // A user allowed to read, not to write.
    proxy.add(Rule::new("PUT", "/guarded/", Fault::Status(403, "AccessDenied")));
    env.commit(&work, "b.txt", "b\n", "b");
    let pushed = env.git_fails(&work, &["push", "-q", "origin", "main"]);
    let denied: Vec<&str> = pushed.lines().filter(|l| l.contains("access denied")).collect();
    assert_eq!(denied.len(), 1, "{pushed}");
    assert!(denied[0].contains("s3:PutObject on s3://test-bucket/guarded/refs/heads/main/LOCK#.lock"), "{pushed}");

    // A user allowed to list, not to read.
    proxy.add(Rule::new("GET", ".bundle", Fault::Status(403, "AccessDenied")));
    let cloned = env.git_fails(&env.path(""), &["clone", "-q", &url, &env.path("clone").to_string_lossy()]);
    let denied: Vec<&str> = cloned.lines().filter(|l| l.contains("access denied")).collect();
    assert_eq!(denied.len(), 1, "{cloned}");
    assert!(denied[0].contains("s3:GetObject on s3://test-bucket/guarded/refs/heads/main/"), "{cloned}");

    // A KMS key the credentials may not use.
    env.git_ok(&work, &["config", "s3.kmsKeyId", "alias/not-mine"]);
    proxy.add(Rule::new("PUT", "/guarded/", Fault::Status(400, "KMS.NotFoundException")));
    let pushed = env.git_fails(&work, &["push", "-q", "origin", "main"]);
    assert!(pushed.contains("could not use the KMS key 'alias/not-mine'"), "{pushed}");
    assert!(pushed.contains("kms:GenerateDataKey"), "{pushed}");
}
