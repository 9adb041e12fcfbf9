//! `git s3 …`: looking at a remote, protecting branches, deleting them, repairing what crashed
//! pushes left behind, and running the daemon as a service.

use std::process::{Output, Stdio};
use std::time::Duration;

use git_s3_tests::{TestEnv, bin_dir, incompressible_bytes, wait_for};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn git_s3_in(env: &TestEnv, dir: &std::path::Path, args: &[&str]) -> Output {
    let mut command = env.command(bin_dir().join("git-s3"));
    command.args(args).current_dir(dir);
    env.run(command)
}

/// A remote whose main has two bundles (a push cut short between upload and cleanup), a HEAD
/// naming a ref that does not exist, and a lock on another ref. Returns (older, newer) commit ids.
fn damaged_remote(env: &TestEnv, prefix: &str) -> (String, String) {
    let url = env.url(prefix);
    let work = env.new_repo(&format!("work-{prefix}"));
    env.git_ok(&work, &["push", &url, "main"]);
    let older = env.rev_parse(&work, "HEAD");
    let newer = env.commit(&work, "more", "more\n", "newer");
    env.git_ok(&work, &["push", &env.url(&format!("{prefix}-staging")), "main"]);
    // The interrupted push uploaded its bundle after the old one, in a later second of the
    // server's clock (LastModified has one-second resolution).
    let stamp = |key: &str| env.server.head(&env.bucket, key).map(|(_, t)| t.secs()).unwrap_or(0);
    let older_time = stamp(&format!("{prefix}/refs/heads/main/{older}.bundle"));
    let clock = format!("{prefix}-clock");
    wait_for("the server clock to pass the old bundle", Duration::from_secs(10), || {
        env.server.put(&env.bucket, &clock, Vec::new());
        (stamp(&clock) > older_time).then_some(())
    });
    let staged = format!("{prefix}-staging/refs/heads/main/{newer}.bundle");
    env.server.copy(&env.bucket, &staged, &format!("{prefix}/refs/heads/main/{newer}.bundle"));
    env.git_ok(&work, &["push", &url, "main:refs/heads/feature"]);
    env.server.put(&env.bucket, &format!("{prefix}/refs/heads/feature/LOCK#.lock"), Vec::new());
    env.server.put(&env.bucket, &format!("{prefix}/HEAD"), b"refs/heads/gone".to_vec());
    (older, newer)
}

#[test]
fn doctor_reports_then_repairs_with_each_flag() {
    let env = TestEnv::new();
    let (older, newer) = damaged_remote(&env, "sick");
    let url = env.url("sick");
    let keys_before = env.keys("sick/");

    // Report only: everything found, nothing changed, exit 1.
    let report = wait_for("the lock to go stale", Duration::from_secs(20), || {
        let output = env.git_s3(&["doctor", &url, "--dry-run", "--lock-ttl", "1"]);
        stdout(&output).contains("stale lock").then_some(output)
    });
    assert_eq!(report.status.code(), Some(1));
    let text = stdout(&report);
    assert!(text.contains("refs/heads/main: 2 bundles; keeping"), "{text}");
    assert!(text.contains(&format!("would move bundle {} to refs/heads/main_{}", &older[..8], &older[..8])), "{text}");
    assert!(
        text.contains("HEAD: names refs/heads/gone, which does not exist: would point it at refs/heads/main"),
        "{text}"
    );
    assert!(text.contains("refs/heads/feature: stale lock"), "{text}");
    assert_eq!(env.keys("sick/"), keys_before, "--dry-run changes nothing");

    // Defaults (no terminal): the extra bundle becomes a branch, HEAD is fixed; the lock stays.
    let output = env.git_s3(&["doctor", &url, "--lock-ttl", "1"]);
    assert_eq!(output.status.code(), Some(1), "a problem remains: {}", stdout(&output));
    assert_eq!(env.bundle_keys("sick", "refs/heads/main"), vec![format!("sick/refs/heads/main/{newer}.bundle")]);
    let branch = format!("refs/heads/main_{}", &older[..8]);
    assert_eq!(env.bundle_keys("sick", &branch), vec![format!("sick/{branch}/{older}.bundle")]);
    assert_eq!(env.server.get(&env.bucket, "sick/HEAD"), b"refs/heads/main");
    assert!(!env.keys("sick/refs/heads/feature/LOCK#.lock").is_empty());

    let output = env.git_s3(&["doctor", &url, "--delete-stale-locks", "--lock-ttl", "1"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(env.keys("sick/refs/heads/feature/LOCK#.lock").is_empty());
    let output = env.git_s3(&["doctor", &url]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("healthy"));

    // The moved bundle is a branch anyone can fetch.
    let refs = env.ls_remote(&env.path(""), &url);
    assert!(refs.iter().any(|(oid, name)| oid == &older && name == &branch), "{refs:?}");
}

#[test]
fn doctor_can_delete_extra_bundles_and_keep_a_chosen_one() {
    let env = TestEnv::new();
    let (older, _newer) = damaged_remote(&env, "pick");
    let output = env.git_s3(&["doctor", &env.url("pick"), "--delete-bundle", "--keep", &older[..10], "--yes"]);
    assert!(stdout(&output).contains("delete bundle"), "{}", stdout(&output));
    assert_eq!(env.bundle_keys("pick", "refs/heads/main"), vec![format!("pick/refs/heads/main/{older}.bundle")]);
    assert!(env.keys("pick/refs/heads/main_").is_empty(), "nothing was moved to a branch");
}

#[test]
fn doctor_aborts_uploads_nobody_will_finish_and_leaves_live_ones() {
    let env = TestEnv::new();
    let url = env.url("uploads");
    let work = env.new_repo("work");
    env.git_ok(&work, &["push", &url, "main", "main:refs/heads/busy"]);
    let oid = env.rev_parse(&work, "HEAD");
    // A push killed mid-upload on main (unlocked now); a push in progress on busy (locked);
    // an LFS upload that may still be running.
    env.server.abandoned_upload(&env.bucket, &format!("uploads/refs/heads/main/{}.bundle", "1".repeat(40)));
    env.server.abandoned_upload(&env.bucket, &format!("uploads/refs/heads/busy/{}.bundle", "2".repeat(40)));
    env.server.put(&env.bucket, "uploads/refs/heads/busy/LOCK#.lock", Vec::new());
    let lfs_key = format!("uploads/lfs/{}", "a".repeat(64));
    env.server.abandoned_upload(&env.bucket, &lfs_key);

    let dry = env.git_s3(&["doctor", &url, "--dry-run"]);
    assert!(stdout(&dry).contains("would abort it"), "{}{}", stdout(&dry), String::from_utf8_lossy(&dry.stderr));
    assert_eq!(env.server.open_multipart_uploads(&env.bucket), 3, "a dry run changes nothing");

    // moto dates every upload 2010-11-10, so the LFS one counts as idle for years.
    let output = env.git_s3(&["doctor", &url, "--yes"]);
    let report = stdout(&output);
    assert!(report.contains("refs/heads/main: unfinished upload") && report.contains("aborted it"), "{report}");
    assert!(report.contains(&format!("lfs/{}: unfinished upload", "a".repeat(64))), "{report}");
    assert!(!report.contains("refs/heads/busy: unfinished"), "a locked ref's upload is a push in progress: {report}");
    assert_eq!(
        env.server.open_uploads(&env.bucket, "uploads/"),
        vec![format!("uploads/refs/heads/busy/{}.bundle", "2".repeat(40))]
    );
    assert_eq!(env.keys("uploads/refs/heads/main/"), vec![format!("uploads/refs/heads/main/{oid}.bundle")]);
}

#[test]
fn protect_is_seen_by_pushes_and_delete_branch_respects_it() {
    let env = TestEnv::new();
    let url = env.url("guarded");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "origin", "main", "main:refs/heads/release"]);

    // By remote name, from inside the repository.
    let output = git_s3_in(&env, &work, &["protect", "origin", "release"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains("refs/heads/release is protected"));
    // A mark on a branch the remote does not have would read as protection it lacks.
    let output = git_s3_in(&env, &work, &["protect", "origin", "nosuch"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refs/heads/nosuch does not exist on the remote"), "{stderr}");
    assert!(env.keys("guarded/refs/heads/nosuch/").is_empty());
    let listing = stdout(&git_s3_in(&env, &work, &["ls", "origin"]));
    assert!(listing.lines().nth(1) == Some("format: bundles"), "{listing}");
    assert!(listing.lines().any(|l| l.starts_with("refs/heads/release") && l.contains("protected")), "{listing}");
    assert!(listing.contains("HEAD -> refs/heads/main"), "{listing}");

    env.git_ok(&work, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let stderr = env.git_fails(&work, &["push", "--force", "origin", "HEAD:release"]);
    assert!(stderr.contains("protected branch"), "{stderr}");

    let output = git_s3_in(&env, &work, &["delete-branch", "origin", "release", "--yes"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is protected"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = git_s3_in(&env, &work, &["unprotect", "origin", "release"]);
    assert!(output.status.success());
    env.git_ok(&work, &["push", "--force", "origin", "HEAD:release"]);

    // Deleting the branch HEAD names moves HEAD; without --yes and without a terminal, nothing happens.
    let output = git_s3_in(&env, &work, &["delete-branch", "origin", "main"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--yes"));
    let output = git_s3_in(&env, &work, &["delete-branch", "origin", "main", "--yes"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains("HEAD now points at refs/heads/release"), "{}", stdout(&output));
    assert!(env.bundle_keys("guarded", "refs/heads/main").is_empty());

    // --force deletes a protected branch, protection included.
    git_s3_in(&env, &work, &["protect", &url, "release"]);
    let output = git_s3_in(&env, &work, &["delete-branch", &url, "release", "--yes", "--force"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(env.keys("guarded/refs/heads/release/").is_empty());
}

#[test]
fn unknown_remote_names_get_a_clear_error() {
    let env = TestEnv::new();
    let work = env.new_repo("work");
    let output = git_s3_in(&env, &work, &["ls", "nope"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("'nope' is neither an s3:// URL nor a remote"));
}

#[test]
fn service_files_for_systemd_and_launchd() {
    let env = TestEnv::new();
    let output = env.git_s3(&["daemon", "install-service", "--print", "--manager", "systemd"]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(text.contains("ListenStream=%t/git-remote-s3/daemon.sock") && text.contains("--managed"), "{text}");

    // Written where systemd looks for user units.
    let output = env.git_s3(&["daemon", "install-service", "--manager", "systemd"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let unit_dir = env.home().join(".config/systemd/user");
    let service = unit_dir.join("git-s3d.service");
    assert!(service.is_file() && unit_dir.join("git-s3d.socket").is_file());
    if std::process::Command::new("systemd-analyze").arg("--version").output().is_ok() {
        let mut verify = env.command("systemd-analyze");
        verify.args(["verify", "--user"]).arg(&service).arg(unit_dir.join("git-s3d.socket"));
        let output = env.run(verify);
        let complaints = String::from_utf8_lossy(&output.stderr).into_owned();
        let relevant: Vec<&str> = complaints.lines().filter(|l| l.contains("git-s3d")).collect();
        assert!(relevant.is_empty(), "systemd-analyze verify: {complaints}");
    } else {
        eprintln!("skipped systemd-analyze verify: not installed");
    }
    let output = env.git_s3(&["daemon", "uninstall-service"]);
    assert!(output.status.success());
    assert!(!service.exists());

    let output = env.git_s3(&["daemon", "install-service", "--print", "--manager", "launchd"]);
    let plist = stdout(&output);
    let body = plist.split_once('\n').map(|(_, rest)| rest).unwrap_or_default();
    let mut parse = std::process::Command::new("python3");
    parse.args(["-c", "import plistlib,sys; p=plistlib.loads(sys.stdin.buffer.read()); print(p['Label'], p['ProgramArguments'][1], p['KeepAlive'])"]);
    parse.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = parse.spawn().expect("python3");
    {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("write");
    }
    let parsed = child.wait_with_output().expect("plistlib");
    assert_eq!(stdout(&parsed).trim(), "io.github.git-remote-s3.daemon --managed True", "{plist}");
}

#[test]
fn a_socket_handed_over_by_the_service_manager_is_used() {
    let env = TestEnv::new();
    let socket = env.socket();
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    std::fs::set_permissions(socket.parent().unwrap(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // What systemd does: bind and listen, put the socket at fd 3, set LISTEN_FDS/LISTEN_PID, exec.
    let trampoline = "import os, socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.bind(sys.argv[1]); s.listen(16)\n\
        if s.fileno() != 3: os.dup2(s.fileno(), 3)\n\
        os.set_inheritable(3, True)\n\
        os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_PID'] = str(os.getpid())\n\
        os.execv(sys.argv[2], [sys.argv[2]])\n";
    let mut daemon = env.command("python3");
    daemon
        .args(["-c", trampoline])
        .arg(&socket)
        .arg(bin_dir().join("git-s3d"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = daemon.spawn().expect("start the daemon as a service would");
    let status = wait_for("the activated daemon", Duration::from_secs(20), || env.daemon_status());
    assert_eq!(status["managed"], true);
    assert_eq!(status["pid"].as_u64(), Some(u64::from(daemon.id())), "the client used the service's daemon");
    assert_eq!(status["idle_timeout_s"], 0);
    env.ls_remote(&env.path(""), &env.url("activated"));
    let _ = env.git_s3(&["daemon", "stop"]);
    let exited = wait_for("the daemon to stop", Duration::from_secs(20), || daemon.try_wait().ok().flatten());
    assert!(exited.success());
    assert!(socket.exists(), "the socket belongs to the service manager and stays");
}

#[test]
fn status_shows_a_transfer_while_it_runs() {
    let env = TestEnv::new();
    env.enable_lfs();
    let repo = env.new_repo("work");
    env.git_ok(&repo, &["lfs", "track", "*.bin"]);
    std::fs::write(repo.join("big.bin"), incompressible_bytes(150 * 1024 * 1024, 9)).unwrap();
    env.git_ok(&repo, &["add", "."]);
    env.git_ok(&repo, &["commit", "-q", "-m", "big"]);
    env.git_ok(&repo, &["remote", "add", "origin", &env.url("busy")]);
    let mut install = env.command(bin_dir().join("git-lfs-s3"));
    install.args(["install", "--remote", "origin"]).current_dir(&repo);
    assert!(env.run(install).status.success());
    let mut push = env.command("git");
    push.args(["push", "origin", "main"]).current_dir(&repo).stdout(Stdio::null()).stderr(Stdio::null());
    let mut push = push.spawn().expect("push");
    let seen = wait_for("status to show the upload", Duration::from_secs(60), || {
        let status = env.daemon_status()?;
        let activity = status["activities"]
            .as_array()?
            .iter()
            .find(|a| a["what"] == "lfs upload" && a["bytes"].as_u64() > Some(0))?
            .clone();
        Some((status, activity))
    });
    assert!(seen.1["remote"].as_str().unwrap_or("").starts_with("s3://test-bucket/busy"), "{}", seen.0);
    assert!(seen.0["transfer_requests"]["max"].as_u64() > Some(0));
    let human = stdout(&env.git_s3(&["daemon", "status"]));
    assert!(human.contains("S3 transfer requests in flight"), "{human}");
    assert!(push.wait().expect("push").success());
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let env = TestEnv::new();
    let output = env.git_s3(&["completions", "bash"]);
    assert!(output.status.success() && stdout(&output).contains("delete-branch"));
    let output = env.git_s3(&["man"]);
    assert!(output.status.success() && stdout(&output).contains(".TH"));
}

#[test]
fn git_s3_help_shows_the_manual_once_installed() {
    let env = TestEnv::new();
    // Where `cargo install` puts programs: <prefix>/bin, on PATH.
    let bin = env.path("prefix/bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::fs::copy(bin_dir().join("git-s3"), bin.join("git-s3")).expect("install git-s3");
    let on_path = |mut command: std::process::Command| {
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        command.env("PATH", path).current_dir(env.path(""));
        env.run(command)
    };

    let mut install = env.command(bin.join("git-s3"));
    install.args(["man", "--install"]);
    let output = on_path(install);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let pages = env.path("prefix/share/man/man1");
    assert!(stdout(&output).contains(&pages.display().to_string()), "{}", stdout(&output));
    for page in ["git-s3.1", "git-s3-ls.1", "git-s3-daemon-status.1"] {
        let text = std::fs::read_to_string(pages.join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page} is a man page: {text}");
    }

    if std::process::Command::new("man").arg("-w").arg("man").output().is_err() {
        eprintln!("skipped the rest: man is not installed");
        return;
    }
    // git turns `git s3 --help` into `man git-s3`; man searches share/man beside each PATH folder.
    let mut locate = env.command("man");
    locate.args(["-w", "git-s3"]);
    let output = on_path(locate);
    assert_eq!(stdout(&output).trim(), pages.join("git-s3.1").display().to_string());
    let mut help = env.command("git");
    help.args(["s3", "--help"]).env("MANPAGER", "cat").env("PAGER", "cat");
    let output = on_path(help);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains("Manage s3:// git remotes"), "{}", stdout(&output));
}

#[test]
fn daemon_restart_and_logs() {
    let env = TestEnv::new();
    let output = env.git_s3(&["daemon", "start"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let first = env.daemon_status().expect("running")["pid"].as_u64();
    let output = env.git_s3(&["daemon", "restart"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let second = env.daemon_status().expect("running")["pid"].as_u64();
    assert_ne!(first, second);
    let logs = stdout(&env.git_s3(&["daemon", "logs", "-n", "100000"]));
    assert!(logs.contains("git-s3d ready"), "{logs}");
}
