//! LFS in bulk: `git s3 lfs pull|push` move the objects of a set of commits at once, and a
//! repository whose code lives elsewhere keeps its LFS objects in S3 with clones that need no
//! extra step. Real git, git-lfs, daemon and shims against moto.

use std::path::{Path, PathBuf};
use std::time::Duration;

use git_s3_tests::fault_proxy::FaultProxy;
use git_s3_tests::{Fault, Rule, ServerKind, TestEnv, incompressible_bytes, sha256_hex};

/// Files of many sizes: two larger than one request (downloaded in parallel ranges), the rest
/// between 1 and 64 KiB.
fn mixed_files(count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let size = if i < 2 { 20 * 1024 * 1024 + i * 4099 } else { 1024 + (i * 7919) % (63 * 1024) };
            (format!("f{i:03}.bin"), incompressible_bytes(size, 1000 + i as u64))
        })
        .collect()
}

fn lfs_repo(env: &TestEnv, url: &str, files: &[(String, Vec<u8>)]) -> PathBuf {
    let borrowed: Vec<(&str, Vec<u8>)> = files.iter().map(|(name, bytes)| (name.as_str(), bytes.clone())).collect();
    env.lfs_repo("work", url, &borrowed)
}

fn stored_object(repo: &Path, oid: &str) -> PathBuf {
    stored_in(&repo.join(".git"), oid)
}

/// Where git-lfs keeps object `oid` of the repository whose git directory is `git_dir`.
fn stored_in(git_dir: &Path, oid: &str) -> PathBuf {
    git_dir.join("lfs/objects").join(&oid[..2]).join(&oid[2..4]).join(oid)
}

#[test]
fn a_fresh_clone_pulls_every_object_at_once_and_a_second_pull_moves_nothing() {
    let env = TestEnv::new();
    let url = env.url("bulk");
    let files = mixed_files(200);
    let work = lfs_repo(&env, &url, &files);
    let pushed = env.git_s3_ok(&work, &["lfs", "push"]);
    assert!(pushed.contains("Uploaded 200 LFS objects"), "{pushed}");
    // The code goes up without git-lfs's own upload (its pre-push hook).
    env.git_ok(&work, &["push", "-q", "--no-verify", "origin", "main"]);

    let clone = env.clone_without_lfs_content(&url, "clone", &[]);
    let pulled = env.git_s3_ok(&clone, &["lfs", "pull"]);
    assert!(pulled.contains("Downloaded 200 LFS objects"), "{pulled}");
    env.git_ok(&clone, &["lfs", "fsck"]);
    for (name, bytes) in &files {
        assert!(std::fs::read(clone.join(name)).expect("a checked-out file") == *bytes, "{name} holds its content");
    }
    assert_eq!(env.git_ok(&clone, &["status", "--porcelain"]), "", "the work tree is clean");

    let again = env.git_s3_ok(&clone, &["lfs", "pull"]);
    assert!(again.contains("Downloaded 0 LFS objects") && again.contains("200 already here"), "{again}");

    // Outside any repository, even with the bucket named, there is nothing to pull into.
    let nowhere = env.path("not-a-repository");
    std::fs::create_dir_all(&nowhere).expect("a plain folder");
    let outside = env.git_s3_in(&nowhere, &["lfs", "pull", &url]);
    assert!(!outside.status.success());
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert!(stderr.contains("not in a git repository") && !stderr.contains("install --url"), "{stderr}");
}

#[test]
fn a_bare_mirror_pulls_every_object_of_every_commit() {
    let env = TestEnv::new();
    let url = env.url("mirror");
    let files = mixed_files(6)[2..].to_vec();
    let work = lfs_repo(&env, &url, &files);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let mirror = env.clone_without_lfs_content(&url, "mirror.git", &["--bare"]);

    let pulled = env.git_s3_ok(&mirror, &["lfs", "pull", "--all"]);
    assert!(pulled.contains("Downloaded 4 LFS objects"), "{pulled}");
    for (name, bytes) in &files {
        let stored = stored_in(&mirror, &sha256_hex(bytes));
        assert!(std::fs::read(&stored).is_ok_and(|held| held == *bytes), "{name} is in the mirror's LFS storage");
    }
}

#[test]
fn an_object_whose_bytes_do_not_hash_to_its_id_is_refused_and_not_placed() {
    let env = TestEnv::new();
    let url = env.url("tampered");
    // Two of 20 MiB (downloaded in ranges), three small (downloaded whole).
    let files = mixed_files(5);
    let work = lfs_repo(&env, &url, &files);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let oid = |index: usize| sha256_hex(&files[index].1);
    let forge = |index: usize, len: usize| {
        let forged = incompressible_bytes(len, 99 + index as u64);
        env.server.put(&env.bucket, &format!("tampered/lfs/{}", oid(index)), forged);
    };
    forge(0, files[0].1.len());
    forge(2, files[2].1.len());
    forge(3, files[3].1.len() + 4096);

    let clone = env.clone_without_lfs_content(&url, "clone", &[]);
    let pulled = env.git_s3_in(&clone, &["lfs", "pull"]);
    let stderr = String::from_utf8_lossy(&pulled.stderr);
    assert!(!pulled.status.success(), "a corrupt object fails the pull");
    let failure = |index: usize| stderr.lines().find(|line| line.contains(&oid(index))).unwrap_or_default().to_string();
    assert!(failure(0).contains("corrupt"), "a large object in ranges: {stderr}");
    assert!(failure(2).contains("corrupt"), "a small object: {stderr}");
    assert!(failure(3).contains("larger than"), "an object longer than its pointer: {stderr}");
    for index in [0, 2, 3] {
        assert!(!stored_object(&clone, &oid(index)).exists(), "the forged bytes of {} are not placed", files[index].0);
    }
    for (name, bytes) in [&files[1], &files[4]] {
        assert!(stored_object(&clone, &sha256_hex(bytes)).exists(), "{name} is placed");
        assert!(std::fs::read(clone.join(name)).expect("a checked-out file") == *bytes, "{name} holds its content");
    }
    // git-lfs keeps files of its own there; ours are named after their object.
    let leftovers: Vec<_> = std::fs::read_dir(clone.join(".git/lfs/tmp"))
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.iter().all(|name| ![0, 2, 3].iter().any(|&index| name.starts_with(&oid(index)))),
        "refused downloads leave nothing behind: {leftovers:?}"
    );
}

#[test]
fn a_push_lists_the_bucket_once_and_uploads_only_what_it_lacks() {
    let mut env = TestEnv::new();
    let proxy: FaultProxy = env.route_through_proxy();
    let url = env.url("lacks");
    let files = mixed_files(22)[2..].to_vec();
    let work = lfs_repo(&env, &url, &files);
    env.git_s3_ok(&work, &["lfs", "push"]);
    for i in 0..5 {
        env.commit(&work, &format!("new{i}.bin"), incompressible_bytes(2048 + i, 500 + i as u64), "more");
    }

    let before = proxy.seen().len();
    let planned = env.git_s3_ok(&work, &["lfs", "push", "--dry-run"]);
    assert!(
        planned.contains("Would upload 5 LFS objects") && planned.contains("20 already in the bucket"),
        "{planned}"
    );
    assert_eq!(planned.lines().filter(|l| l.contains(" new")).count(), 5, "{planned}");
    let dry: Vec<_> = proxy.seen()[before..].to_vec();
    assert!(dry.iter().all(|s| s.method == "GET"), "a dry run writes nothing: {dry:?}");

    let before = proxy.seen().len();
    let pushed = env.git_s3_ok(&work, &["lfs", "push"]);
    assert!(pushed.contains("Uploaded 5 LFS objects"), "{pushed}");
    let requests: Vec<_> = proxy.seen()[before..]
        .iter()
        .filter(|s| s.path.contains("/lacks/lfs") || s.query.contains("prefix=lacks%2Flfs"))
        .cloned()
        .collect();
    let puts = requests.iter().filter(|s| s.method == "PUT").count();
    let heads = requests.iter().filter(|s| s.method == "HEAD").count();
    let lists = requests.iter().filter(|s| s.method == "GET" && s.query.contains("list-type=2")).count();
    assert_eq!((puts, heads, lists), (5, 0, 1), "{requests:?}");
}

#[test]
fn a_push_of_a_handful_of_objects_asks_about_each_instead_of_listing_a_remote_holding_many() {
    push_of_a_handful_to_a_remote_holding_many(TestEnv::new());
}

#[test]
fn a_push_of_a_handful_of_objects_asks_about_each_on_s3s_fs_too() {
    push_of_a_handful_to_a_remote_holding_many(TestEnv::with_server(ServerKind::S3sFs));
}

fn push_of_a_handful_to_a_remote_holding_many(mut env: TestEnv) {
    let proxy: FaultProxy = env.route_through_proxy();
    // A remote whose listing takes two pages.
    for i in 0..1001u32 {
        env.server.put(&env.bucket, &format!("busy/lfs/{}", sha256_hex(&i.to_le_bytes())), Vec::new());
    }
    let files = mixed_files(5)[2..].to_vec();
    let work = lfs_repo(&env, &env.url("busy"), &files);

    let requests_of = |push: &[&str]| {
        let before = proxy.seen().len();
        let said = env.git_s3_ok(&work, push);
        let seen: Vec<_> = proxy.seen()[before..]
            .iter()
            .filter(|s| s.path.contains("/busy/lfs") || s.query.contains("prefix=busy%2Flfs"))
            .cloned()
            .collect();
        let count = |method: &str| seen.iter().filter(|s| s.method == method && !s.query.contains("list-type")).count();
        let lists = seen.iter().filter(|s| s.query.contains("list-type=2")).count();
        (said, (count("HEAD"), count("PUT"), lists))
    };
    let (pushed, requests) = requests_of(&["lfs", "push"]);
    assert!(pushed.contains("Uploaded 3 LFS objects"), "{pushed}");
    assert_eq!(requests, (3, 3, 0), "(HEAD, PUT, LIST)");
    let (again, requests) = requests_of(&["lfs", "push"]);
    assert!(again.contains("Uploaded 0 LFS objects") && again.contains("3 already in the bucket"), "{again}");
    assert_eq!(requests, (3, 0, 0), "(HEAD, PUT, LIST)");
}

#[test]
fn placed_objects_honour_core_shared_repository() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let url = env.url("shared");
    let files = mixed_files(5)[2..].to_vec();
    let work = lfs_repo(&env, &url, &files);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let clone = env.clone_without_lfs_content(&url, "clone", &[]);
    let mode = |path: &Path| std::fs::metadata(path).expect("placed").permissions().mode() & 0o7777;

    // One file per setting, as a team changes it over time.
    for ((name, bytes), setting) in files.iter().zip(["group", "0640", "all"]) {
        env.git_ok(&clone, &["config", "core.sharedRepository", setting]);
        env.git_s3_ok(&clone, &["lfs", "pull", "-I", name]);
        let object = stored_object(&clone, &sha256_hex(bytes));
        let file = mode(&object);
        match setting {
            "group" => assert_eq!(file & 0o660, 0o660, "{name}: {file:o}, group may read and write"),
            "0640" => assert_eq!(file, 0o640, "{name}: exactly the mode asked for"),
            _ => assert_eq!(file & 0o664, 0o664, "{name}: {file:o}, everybody may read"),
        }
    }
}

#[test]
fn a_bulk_pull_on_a_terminal_counts_objects_as_well_as_bytes() {
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("shown");
    let files = mixed_files(5)[2..].to_vec();
    let work = lfs_repo(&env, &url, &files);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let clone = env.clone_without_lfs_content(&url, "clone", &[]);
    // The downloads end apart, so the line is drawn while one is still coming (progress shows
    // only for transfers that last more than a second).
    for delay_ms in [300, 1600, 2400] {
        proxy.add(Rule::new("GET", "/shown/lfs/", Fault::Delay(Duration::from_millis(delay_ms))));
    }

    // `script` gives the command a terminal, where progress is shown.
    let mut pull = env.command("script");
    pull.args(["-qec", "git s3 lfs pull", "/dev/null"]).current_dir(&clone);
    let output = env.run(pull);
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("Downloading LFS objects:  66% (2/3), "), "{shown:?}");
    assert!(shown.contains("Downloading LFS objects: 100% (3/3), ") && shown.contains(", done."), "{shown:?}");
}

/// Whether git-lfs's storage of `repo` holds `content` (by its id).
fn holds(repo: &Path, content: &[u8]) -> bool {
    stored_object(repo, &sha256_hex(content)).exists()
}

#[test]
fn include_and_exclude_patterns_choose_which_objects_move() {
    let env = TestEnv::new();
    let url = env.url("patterns");
    let work = lfs_repo(&env, &url, &[]);
    let [kept, also_kept, skipped, other] =
        [1, 2, 3, 4].map(|seed| incompressible_bytes(4096 + seed, 40 + seed as u64));
    for (path, content) in
        [("assets/a.bin", &kept), ("assets/b.bin", &also_kept), ("assets/skip.bin", &skipped), ("other/c.bin", &other)]
    {
        env.commit(&work, path, content, path);
    }
    let bucket_holds = |content: &[u8]| env.keys(&format!("patterns/lfs/{}", sha256_hex(content))).len() == 1;

    let pushed = env.git_s3_ok(&work, &["lfs", "push", "-I", "assets/**", "-X", "assets/skip.bin"]);
    assert!(pushed.contains("Uploaded 2 LFS objects"), "{pushed}");
    assert!(bucket_holds(&kept) && bucket_holds(&also_kept) && !bucket_holds(&skipped) && !bucket_holds(&other));
    env.git_s3_ok(&work, &["lfs", "push"]);
    env.git_ok(&work, &["push", "-q", "--no-verify", "origin", "main"]);

    let clone = env.clone_without_lfs_content(&url, "clone", &[]);
    let pulled = env.git_s3_ok(&clone, &["lfs", "pull", "-X", "assets/**"]);
    assert!(pulled.contains("Downloaded 1 LFS objects"), "{pulled}");
    assert!(holds(&clone, &other) && !holds(&clone, &kept));
    assert!(std::fs::read(clone.join("other/c.bin")).expect("checked out") == other, "its content is written");
    let pulled = env.git_s3_ok(&clone, &["lfs", "pull", "-I", "assets/*.bin", "-X", "assets/skip.bin"]);
    assert!(pulled.contains("Downloaded 2 LFS objects"), "{pulled}");
    assert!(holds(&clone, &kept) && holds(&clone, &also_kept) && !holds(&clone, &skipped));
}

#[test]
fn named_commits_move_the_objects_of_their_trees() {
    let env = TestEnv::new();
    let url = env.url("named");
    let [first, second, topic] = [1, 2, 3].map(|seed| incompressible_bytes(8192 + seed, 50 + seed as u64));
    let work = lfs_repo(&env, &url, &[("model.bin".to_string(), first.clone())]);
    env.git_ok(&work, &["tag", "v1"]);
    env.commit(&work, "model.bin", &second, "a better model");
    env.git_ok(&work, &["checkout", "-q", "-b", "topic"]);
    env.commit(&work, "extra.bin", &topic, "an experiment");
    env.git_ok(&work, &["checkout", "-q", "main"]);
    let bucket_holds = |content: &[u8]| env.keys(&format!("named/lfs/{}", sha256_hex(content))).len() == 1;

    let pushed = env.git_s3_ok(&work, &["lfs", "push", "origin", "v1"]);
    assert!(pushed.contains("Uploaded 1 LFS objects"), "{pushed}");
    assert!(bucket_holds(&first) && !bucket_holds(&second), "a tag's tree, not main's");
    let pushed = env.git_s3_ok(&work, &["lfs", "push", "origin", "main", "topic"]);
    assert!(
        pushed.contains("Uploaded 2 LFS objects") && pushed.contains("2 in all"),
        "v1's is in neither tree: {pushed}"
    );
    env.git_ok(&work, &["push", "-q", "--no-verify", "origin", "main", "topic", "v1"]);

    let clone = env.clone_without_lfs_content(&url, "clone", &[]);
    let pulled = env.git_s3_ok(&clone, &["lfs", "pull", "origin", "v1"]);
    assert!(pulled.contains("Downloaded 1 LFS objects"), "{pulled}");
    assert!(holds(&clone, &first) && !holds(&clone, &second) && !holds(&clone, &topic));
    let pulled = env.git_s3_ok(&clone, &["lfs", "pull", "origin", "main", "origin/topic"]);
    assert!(pulled.contains("Downloaded 2 LFS objects"), "{pulled}");
    assert!(std::fs::read(clone.join("model.bin")).expect("checked out") == second, "main's content is written");
    assert!(holds(&clone, &topic));
}

/// A repository whose code goes to a plain git host and whose LFS objects go to `prefix` in S3
/// (`git-lfs-s3 install --url … --lfsconfig`): the host, the work repository, the LFS URL, and
/// what the install said.
fn code_elsewhere(env: &TestEnv, prefix: &str) -> (PathBuf, PathBuf, String, String) {
    env.enable_lfs();
    let host = env.path("code-host.git");
    env.git_ok(&env.path(""), &["init", "-q", "--bare", &host.to_string_lossy()]);
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &host.to_string_lossy()]);
    env.git_ok(&work, &["lfs", "track", "*.bin"]);
    let lfs_url = env.url(prefix);
    let installed = env.lfs_agent(&work, &["install", "--url", &lfs_url, "--lfsconfig"]);
    (host, work, lfs_url, installed)
}

#[test]
fn a_repository_whose_code_lives_elsewhere_pushes_and_pulls_its_lfs_objects_in_bulk() {
    let env = TestEnv::new();
    let (host, work, lfs_url, _) = code_elsewhere(&env, "assets");
    let files = mixed_files(6)[2..].to_vec();
    for (name, bytes) in &files {
        std::fs::write(work.join(name), bytes).expect("write an LFS file");
    }
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "models, their LFS home in S3"]);
    let pushed = env.git_s3_ok(&work, &["lfs", "push"]);
    assert!(pushed.contains("Uploaded 4 LFS objects"), "{pushed}");
    assert_eq!(env.keys("assets/lfs/").len(), 4);
    env.git_ok(&work, &["push", "-q", "--no-verify", "origin", "main"]);

    // One clone is told where the objects live, the other finds it in the committed .lfsconfig.
    let told = env.clone_without_lfs_content(&host.to_string_lossy(), "told", &[]);
    env.lfs_agent(&told, &["install", "--url", &lfs_url]);
    let committed = env.clone_without_lfs_content(&host.to_string_lossy(), "committed", &[]);
    for clone in [told, committed] {
        let pulled = env.git_s3_ok(&clone, &["lfs", "pull"]);
        assert!(pulled.contains("Downloaded 4 LFS objects"), "{pulled}");
        for (name, bytes) in &files {
            assert!(std::fs::read(clone.join(name)).expect("checked out") == *bytes, "{name} in {}", clone.display());
        }
    }
}

#[test]
fn a_worktree_pulls_and_pushes_through_the_lfs_storage_it_shares() {
    let env = TestEnv::new();
    let url = env.url("trees");
    let files = mixed_files(5)[2..].to_vec();
    let work = lfs_repo(&env, &url, &files);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let clone = env.clone_without_lfs_content(&url, "clone", &[]);
    let storage = env.path("lfs-storage");
    env.git_ok(&clone, &["config", "lfs.storage", &storage.to_string_lossy()]);
    let tree = env.path("tree");
    let mut add = env.command("git");
    add.env("GIT_LFS_SKIP_SMUDGE", "1").args(["worktree", "add", "-q", "-b", "feature"]).arg(&tree).current_dir(&clone);
    assert!(env.run(add).status.success(), "git worktree add");

    let pulled = env.git_s3_ok(&tree, &["lfs", "pull"]);
    assert!(pulled.contains("Downloaded 3 LFS objects"), "{pulled}");
    let in_storage = |content: &[u8]| {
        let oid = sha256_hex(content);
        storage.join("objects").join(&oid[..2]).join(&oid[2..4]).join(&oid).exists()
    };
    for (name, bytes) in &files {
        assert!(in_storage(bytes) && !holds(&clone, bytes), "{name} is in lfs.storage, shared by the worktrees");
        assert!(std::fs::read(tree.join(name)).expect("checked out") == *bytes, "{name} in the worktree");
    }

    let added = incompressible_bytes(12 * 1024, 60);
    env.commit(&tree, "feature.bin", &added, "a feature's model");
    assert!(in_storage(&added), "git-lfs keeps it in lfs.storage");
    let pushed = env.git_s3_ok(&tree, &["lfs", "push"]);
    assert!(pushed.contains("Uploaded 1 LFS objects"), "{pushed}");
    assert_eq!(env.keys(&format!("trees/lfs/{}", sha256_hex(&added))).len(), 1);
}

#[test]
fn an_lfs_store_moves_to_s3_with_fetch_all_and_one_bulk_push() {
    let env = TestEnv::new();
    let old_url = env.url("old-home");
    let files = mixed_files(12)[2..].to_vec();
    let work = lfs_repo(&env, &old_url, &files);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    // An older commit's objects move too.
    env.commit(&work, "f002.bin", b"replaced\n", "replace one file");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);

    // A team member's clone: everything from the old store, then all of it into the new one.
    let member = env.clone_without_lfs_content(&old_url, "member", &[]);
    env.git_ok(&member, &["lfs", "fetch", "--all", "origin"]);
    let new_url = env.url("new-home");
    env.git_ok(&member, &["remote", "add", "s3", &new_url]);
    env.git_ok(&member, &["push", "-q", "--no-verify", "s3", "main"]);
    let moved = env.git_s3_ok(&member, &["lfs", "push", "--all", "s3"]);
    assert!(moved.contains("Uploaded 11 LFS objects"), "{moved}");

    let mut expected: Vec<String> =
        files.iter().map(|(_, bytes)| format!("new-home/lfs/{}", sha256_hex(bytes))).collect();
    expected.push(format!("new-home/lfs/{}", sha256_hex(b"replaced\n")));
    expected.sort();
    assert_eq!(env.keys("new-home/lfs/"), expected);
    let clone = env.clone_repo(&new_url, "from-new");
    assert_eq!(std::fs::read(clone.join("f002.bin")).expect("a checked-out file"), b"replaced\n");
    for (name, bytes) in &files[1..] {
        assert!(std::fs::read(clone.join(name)).expect("a checked-out file") == *bytes, "{name}");
    }
}

#[test]
fn a_clone_of_a_plain_remote_checks_out_lfs_content_from_s3_with_no_extra_step() {
    let env = TestEnv::new();
    let (host, work, _, installed) = code_elsewhere(&env, "lfs-only");
    assert!(installed.contains(".lfsconfig"), "{installed}");
    let content = incompressible_bytes(300 * 1024, 5);
    std::fs::write(work.join("model.bin"), &content).expect("write an LFS file");
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "a model, its LFS home in S3"]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(env.keys("lfs-only/lfs/"), [format!("lfs-only/lfs/{}", sha256_hex(&content))]);

    // Another user of this machine's kind: once per user, then a plain clone.
    env.lfs_agent(&env.path(""), &["install", "--global"]);
    let clone = env.path("clone");
    env.git_ok(&env.path(""), &["clone", "-q", &host.to_string_lossy(), &clone.to_string_lossy()]);
    assert!(std::fs::read(clone.join("model.bin")).expect("the LFS file") == content, "real content, not a pointer");
}
