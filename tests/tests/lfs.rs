//! Large files with git-lfs: objects at `<prefix>/lfs/<oid>`, moved by git-lfs-s3 through the
//! daemon, against moto (and the large transfers against s3s-fs).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use git_s3_tests::{ServerKind, TestEnv, bin_dir, incompressible_bytes, peak_rss_kib, sha256_hex, wait_for};

fn lfs_keys(env: &TestEnv, prefix: &str) -> Vec<String> {
    env.keys(&format!("{prefix}/lfs/"))
}

#[test]
fn lfs_files_are_pushed_and_a_clone_checks_out_their_content_with_no_extra_step() {
    let env = TestEnv::new();
    let url = env.url("lfs");
    let small = b"small file\n".to_vec();
    let large = incompressible_bytes(20 * 1024 * 1024, 1);
    let repo = env.lfs_repo("work", &url, &[("small.bin", small.clone()), ("large.bin", large.clone())]);
    env.git_ok(&repo, &["push", "origin", "main"]);
    let keys = lfs_keys(&env, "lfs");
    assert_eq!(keys, {
        let mut expected = vec![format!("lfs/lfs/{}", sha256_hex(&small)), format!("lfs/lfs/{}", sha256_hex(&large))];
        expected.sort();
        expected
    });

    let clone = env.clone_repo(&url, "clone");
    assert_eq!(std::fs::read(clone.join("small.bin")).unwrap(), small);
    assert_eq!(std::fs::read(clone.join("large.bin")).unwrap(), large, "real content, not a pointer");
}

#[test]
fn a_second_push_uploads_nothing() {
    let env = TestEnv::new();
    let url = env.url("again");
    let repo =
        env.lfs_repo("work", &url, &[("a.bin", b"aaa\n".to_vec()), ("b.bin", incompressible_bytes(1024 * 1024, 2))]);
    env.git_ok(&repo, &["push", "origin", "main"]);
    let stamps = |env: &TestEnv| {
        lfs_keys(env, "again").iter().map(|k| env.server.head(&env.bucket, k).expect("object").1).collect::<Vec<_>>()
    };
    let before = stamps(&env);
    // Offer every object again: the agent finds them in the bucket and sends nothing.
    env.git_ok(&repo, &["lfs", "push", "--all", "origin"]);
    assert_eq!(stamps(&env), before, "no object was written again");
}

#[test]
fn a_corrupted_object_never_reaches_the_working_tree() {
    let env = TestEnv::new();
    let url = env.url("bad");
    let content = incompressible_bytes(4096, 3);
    let oid = sha256_hex(&content);
    let repo = env.lfs_repo("work", &url, &[("data.bin", content)]);
    env.git_ok(&repo, &["push", "origin", "main"]);
    env.server.put(&env.bucket, &format!("bad/lfs/{oid}"), b"evil bytes".to_vec());

    let output = env.git(&env.path(""), &["clone", &url, "clone"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&oid) && stderr.contains("corrupt"), "the error names the object: {stderr}");
    let checked_out = std::fs::read(env.path("clone/data.bin")).unwrap_or_default();
    assert_ne!(checked_out, b"evil bytes");
    let tmp = env.path("clone/.git/lfs/tmp");
    let leftovers: Vec<_> =
        std::fs::read_dir(&tmp).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(
        leftovers.iter().all(|name| !name.to_string_lossy().starts_with(&oid)),
        "the bad download was removed: {leftovers:?}"
    );
}

#[test]
fn eight_agents_at_once() {
    let env = TestEnv::new();
    let url = env.url("many");
    let files: Vec<(String, Vec<u8>)> =
        (0..24).map(|i| (format!("f{i:02}.bin"), incompressible_bytes(256 * 1024 + i, i as u64))).collect();
    let file_refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
    let repo = env.lfs_repo("work", &url, &file_refs);
    env.git_ok(&repo, &["config", "lfs.concurrenttransfers", "8"]);
    env.git_ok(&repo, &["push", "origin", "main"]);
    assert_eq!(lfs_keys(&env, "many").len(), 24);

    let clone = env.path("clone");
    env.git_ok(&env.path(""), &["-c", "lfs.concurrenttransfers=8", "clone", "-q", &url, clone.to_str().unwrap()]);
    for (name, content) in &files {
        assert_eq!(&std::fs::read(clone.join(name)).unwrap(), content, "{name}");
    }
}

#[test]
fn a_300_mib_file_goes_up_in_parts_and_down_in_ranges_with_bounded_memory() {
    let env = TestEnv::with_server(ServerKind::S3sFs);
    let url = env.url("huge");
    let content = incompressible_bytes(300 * 1024 * 1024, 4);
    let oid = sha256_hex(&content);
    let repo = env.lfs_repo("work", &url, &[("huge.bin", content)]);
    drop(std::fs::read(repo.join("huge.bin")));
    env.git_ok(&repo, &["push", "origin", "main"]);
    let object = env.server.data_dir.as_ref().expect("s3s-fs data").join(&env.bucket).join(format!("huge/lfs/{oid}"));
    assert_eq!(std::fs::metadata(&object).expect("object on disk").len(), 300 * 1024 * 1024);

    let clone = env.clone_repo(&url, "clone");
    let downloaded = std::fs::read(clone.join("huge.bin")).unwrap();
    assert_eq!(downloaded.len(), 300 * 1024 * 1024);
    assert_eq!(sha256_hex(&downloaded), oid);

    let pid = env.daemon_status().expect("daemon")["pid"].as_u64().expect("pid");
    let peak_kib = peak_rss_kib(pid);
    eprintln!("daemon peak RSS after 300 MiB up and down: {} MiB", peak_kib / 1024);
    assert!(peak_kib < 200 * 1024, "daemon peak RSS {peak_kib} KiB");
}

#[test]
fn killing_a_push_mid_upload_leaves_no_object_and_no_open_upload() {
    let env = TestEnv::new();
    let url = env.url("killed");
    let content = incompressible_bytes(200 * 1024 * 1024, 5);
    let oid = sha256_hex(&content);
    let repo = env.lfs_repo("work", &url, &[("big.bin", content)]);
    let mut push = env.command("git");
    push.args(["push", "origin", "main"]).current_dir(&repo).stdout(Stdio::null()).stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut push, 0);
    let mut push = push.spawn().expect("push");
    wait_for("the multipart upload to start", Duration::from_secs(60), || {
        (env.server.open_multipart_uploads(&env.bucket) > 0).then_some(())
    });
    let group = rustix::process::Pid::from_raw(push.id() as i32).expect("pid");
    rustix::process::kill_process_group(group, rustix::process::Signal::KILL).expect("kill the push");
    let _ = push.wait();
    wait_for("the upload to be aborted", Duration::from_secs(30), || {
        (env.server.open_multipart_uploads(&env.bucket) == 0).then_some(())
    });
    assert!(lfs_keys(&env, "killed").iter().all(|k| !k.ends_with(&oid)), "no object at lfs/{oid}");
}

#[test]
fn lfs_only_mode_keeps_objects_in_s3_while_the_code_lives_elsewhere() {
    let env = TestEnv::new();
    env.enable_lfs();
    let code_remote = env.path("code.git");
    env.git_ok(&env.path(""), &["init", "-q", "--bare", code_remote.to_str().unwrap()]);
    let repo = env.new_repo("work");
    env.git_ok(&repo, &["lfs", "track", "*.bin"]);
    let content = incompressible_bytes(64 * 1024, 6);
    std::fs::write(repo.join("asset.bin"), &content).unwrap();
    env.git_ok(&repo, &["add", "."]);
    env.git_ok(&repo, &["commit", "-q", "-m", "asset"]);
    let code_url = format!("file://{}", code_remote.display());
    env.git_ok(&repo, &["remote", "add", "origin", &code_url]);
    env.lfs_agent(&repo, &["install", "--url", &env.url("assets")]);
    env.git_ok(&repo, &["push", "origin", "main"]);
    assert_eq!(lfs_keys(&env, "assets"), vec![format!("assets/lfs/{}", sha256_hex(&content))]);

    let clone = env.path("clone");
    env.git_ok(&env.path(""), &["-c", "lfs.fetchexclude=*", "clone", "-q", &code_url, clone.to_str().unwrap()]);
    env.lfs_agent(&clone, &["install", "--url", &env.url("assets")]);
    env.git_ok(&clone, &["-c", "lfs.fetchexclude=", "lfs", "pull"]);
    assert_eq!(std::fs::read(clone.join("asset.bin")).unwrap(), content);
}

#[test]
fn objects_pushed_by_the_python_agent_are_read_by_ours_and_the_other_way_round() {
    let env = TestEnv::new();
    let url = env.url("mixed");
    let python_git = |dir: &Path, args: &[&str]| {
        let mut command = env.python_tool_command("git");
        // The Python tool needs its install step before LFS content can be checked out.
        command.env("GIT_LFS_SKIP_SMUDGE", "1").current_dir(dir).args(args);
        let output = env.run(command);
        assert!(output.status.success(), "python: git {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    };
    let first = incompressible_bytes(100 * 1024, 7);
    let repo = env.lfs_repo("work", &url, &[("one.bin", first.clone())]);
    // The Python tool pushes the first object...
    python_git(&repo, &["push", "origin", "main"]);
    assert_eq!(lfs_keys(&env, "mixed"), vec![format!("mixed/lfs/{}", sha256_hex(&first))]);
    // ...ours clones it and pushes a second one...
    let clone = env.clone_repo(&url, "clone");
    assert_eq!(std::fs::read(clone.join("one.bin")).unwrap(), first);
    let second = incompressible_bytes(50 * 1024, 8);
    std::fs::write(clone.join("two.bin"), &second).unwrap();
    env.git_ok(&clone, &["add", "two.bin"]);
    env.git_ok(&clone, &["commit", "-q", "-m", "second"]);
    env.git_ok(&clone, &["push", "origin", "main"]);
    // ...which the Python tool's agent downloads.
    let python_clone = env.path("python-clone");
    python_git(&env.path(""), &["clone", "-q", &url, python_clone.to_str().unwrap()]);
    let mut install = env.python_tool_command("git-lfs-s3");
    install.args(["install", "--remote", "origin"]).current_dir(&python_clone);
    assert!(env.run(install).status.success());
    python_git(&python_clone, &["lfs", "pull"]);
    assert_eq!(std::fs::read(python_clone.join("two.bin")).unwrap(), second);
}

#[test]
fn the_agent_refuses_bad_requests_object_by_object_and_goes_on() {
    let env = TestEnv::new();
    let url = env.url("refuse");
    let content = b"fine\n".to_vec();
    let oid = sha256_hex(&content);
    let repo = env.lfs_repo("work", &url, &[("ok.bin", content)]);
    let stored = repo.join(format!(".git/lfs/objects/{}/{}/{oid}", &oid[..2], &oid[2..4]));
    assert!(stored.exists());
    let secret = env.path("outside.txt");
    std::fs::write(&secret, b"not for the bucket").unwrap();
    let secret_oid = sha256_hex(b"not for the bucket");

    let requests = [
        r#"{"event":"init","operation":"upload","remote":"origin","concurrent":true,"concurrenttransfers":1}"#
            .to_string(),
        format!(r#"{{"event":"upload","oid":"{secret_oid}","size":18,"path":"{}"}}"#, secret.display()),
        format!(r#"{{"event":"upload","oid":"../../etc/passwd","size":5,"path":"{}"}}"#, stored.display()),
        format!(r#"{{"event":"upload","oid":"{oid}","size":5,"path":"{}"}}"#, stored.display()),
        r#"{"event":"terminate"}"#.to_string(),
    ];
    let mut agent = env.command(bin_dir().join("git-lfs-s3"));
    agent.current_dir(&repo).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut agent = agent.spawn().expect("agent");
    {
        use std::io::Write;
        let mut stdin = agent.stdin.take().expect("stdin");
        stdin.write_all((requests.join("\n") + "\n").as_bytes()).expect("write");
    }
    let output = agent.wait_with_output().expect("agent output");
    assert!(output.status.success());
    let replies: Vec<serde_json::Value> =
        String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let completions: Vec<&serde_json::Value> = replies.iter().filter(|r| r["event"] == "complete").collect();
    assert_eq!(replies[0], serde_json::json!({}));
    assert_eq!(completions.len(), 3, "{replies:?}");
    assert!(
        completions[0]["error"]["message"].as_str().unwrap_or("").contains("not inside this repository"),
        "{replies:?}"
    );
    assert!(
        completions[1]["error"]["message"].as_str().unwrap_or("").contains("not a git-lfs object id"),
        "{replies:?}"
    );
    assert!(completions[2].get("error").is_none(), "the good object still went up: {replies:?}");
    let last_progress = replies.iter().rfind(|r| r["event"] == "progress").expect("progress");
    assert_eq!(last_progress["bytesSoFar"], 5, "the last progress event equals the size");
    assert_eq!(lfs_keys(&env, "refuse"), vec![format!("refuse/lfs/{oid}")]);
}

#[test]
fn uninstall_undoes_install_at_the_level_it_was_made() {
    let env = TestEnv::new();
    env.enable_lfs();
    let home = env.path("");
    // Another agent's setting of this user's, which is not ours to remove.
    env.git_ok(&home, &["config", "--global", "lfs.https://lfs.example.com/.standalonetransferagent", "other-agent"]);
    let user_config = |env: &TestEnv| env.git_ok(&home, &["config", "--global", "--list"]);
    let before = user_config(&env);
    env.lfs_agent(&home, &["install", "--global"]);
    assert_ne!(user_config(&env), before, "install --global writes this user's config");
    let repo = env.new_repo("work");
    env.git_ok(&repo, &["remote", "add", "origin", &env.url("uninstalled")]);
    env.lfs_agent(&repo, &["install", "--remote", "origin"]);
    let local_config = |env: &TestEnv| env.git_ok(&repo, &["config", "--local", "--list"]);
    assert!(local_config(&env).contains("lfs-alias"), "{}", local_config(&env));

    // In the repository: its own settings go, the user's stay.
    let global_installed = user_config(&env);
    env.lfs_agent(&repo, &["uninstall"]);
    let local = local_config(&env);
    assert!(!local.contains("git-lfs-s3") && !local.contains("lfs-alias"), "{local}");
    assert_eq!(user_config(&env), global_installed, "a repository's uninstall leaves the user's config alone");

    let said = env.lfs_agent(&home, &["uninstall", "--global"]);
    assert!(said.contains("uninstalled for this user"), "{said}");
    assert_eq!(user_config(&env), before, "uninstall --global removes exactly what install --global wrote");
}
