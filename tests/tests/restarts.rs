//! Servers that go away and come back: the S3 server stopped and restarted between operations
//! (s3s-fs keeps its data on disk), and the daemon restarted or killed in the middle of a helper
//! session or a transfer. git always sees a completed operation or a clear error, and nothing
//! waits forever.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use git_s3_tests::{ServerKind, TestEnv, finish_within, incompressible_bytes, wait_for};

const BOUND: Duration = Duration::from_secs(120);

fn daemon_pid(env: &TestEnv) -> Option<i64> {
    env.daemon_status().and_then(|s| s["pid"].as_i64())
}

/// Polls until the daemon reports an activity `what` ("fetch", "push"); returns its pid.
fn wait_until_daemon_is(env: &TestEnv, what: &str) -> i64 {
    wait_for(&format!("the daemon to be doing a {what}"), BOUND, || {
        let status = env.daemon_status()?;
        let busy = status["activities"].as_array()?.iter().any(|a| a["what"] == what);
        busy.then(|| status["pid"].as_i64()).flatten()
    })
}

/// Exactly one `fatal:` line, saying what is wrong.
fn assert_one_clear_error(stderr: &str, says: &str) {
    let fatal: Vec<&str> = stderr.lines().filter(|l| l.starts_with("fatal:") || l.starts_with("error:")).collect();
    assert!(
        !fatal.is_empty() && fatal.iter().any(|l| l.contains(says)),
        "expected an error saying '{says}':\n{stderr}"
    );
}

#[test]
fn s3s_fs_stopped_and_restarted_between_operations() {
    let mut env = TestEnv::with_server(ServerKind::S3sFs);
    let url = env.url("persistent");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["push", "origin", "main"]);
    let pushed = env.rev_parse(&work, "HEAD");

    env.server.stop();
    let started = Instant::now();
    let stderr = env.git_fails(&work, &["ls-remote", "origin"]);
    assert_one_clear_error(&stderr, "cannot reach S3");
    env.commit(&work, "b", "b\n", "while the server is down");
    let stderr = env.git_fails(&work, &["push", "origin", "main"]);
    assert!(stderr.contains("cannot reach S3"), "{stderr}");
    assert!(started.elapsed() < BOUND, "failing took {:?}", started.elapsed());

    env.server.restart();
    assert_eq!(
        env.ls_remote(&work, "origin"),
        vec![(pushed.clone(), "HEAD".into()), (pushed, "refs/heads/main".into())]
    );
    assert!(env.keys("persistent/refs/heads/main/").iter().all(|k| k.ends_with(".bundle")), "no lock left");
    env.git_ok(&work, &["push", "origin", "main"]);
    let clone = env.clone_repo(&url, "clone");
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&work, "HEAD"));
}

#[test]
fn a_daemon_restarted_between_list_and_fetch_of_one_helper_session() {
    let env = TestEnv::new();
    let url = env.url("session");
    let work = env.new_repo("work");
    env.git_ok(&work, &["push", &url, "main"]);
    let reader = env.path("reader");
    std::fs::create_dir_all(&reader).expect("reader dir");
    env.git_ok(&reader, &["init", "-q"]);

    let mut helper = env.spawn_remote_helper(&reader, &url);
    let mut stdin = helper.stdin.take().expect("stdin");
    let stdout = helper.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let answer = |what: &str| -> Option<Vec<String>> {
        let mut got = Vec::new();
        loop {
            match lines.recv_timeout(BOUND) {
                Ok(line) if line.is_empty() => return Some(got),
                Ok(line) => got.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("no answer to {what} within {BOUND:?}"),
            }
        }
    };

    writeln!(stdin, "list").expect("send list");
    let listed = answer("list").expect("the list answer");
    let main = listed.iter().find_map(|l| l.strip_suffix(" refs/heads/main")).expect("main listed").to_string();

    let before = daemon_pid(&env).expect("the daemon runs");
    let restart = env.git_s3(&["daemon", "restart"]);
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    let after = wait_for("a new daemon", BOUND, || daemon_pid(&env).filter(|pid| *pid != before));
    assert_ne!(before, after);

    let sent = writeln!(stdin, "fetch {main} refs/heads/main\n");
    let fetched = sent.is_ok() && answer("fetch").is_some();
    drop(stdin);
    let output = finish_within(helper, BOUND, "the helper after the restart");
    if fetched {
        env.git_ok(&reader, &["cat-file", "-e", &main]);
    } else {
        assert_one_clear_error(&String::from_utf8_lossy(&output.stderr), "daemon");
    }
}

#[test]
fn a_daemon_killed_mid_clone_fails_the_clone_clearly_and_the_next_one_works() {
    let env = TestEnv::new();
    let url = env.url("big");
    let work = env.new_repo("work");
    env.commit(&work, "big.dat", incompressible_bytes(48 * 1024 * 1024, 9), "big");
    env.git_ok(&work, &["push", &url, "main"]);

    let clone = env.path("clone");
    let mut command = env.command("git");
    command.args(["clone", "-q", &url, clone.to_str().expect("utf-8 path")]).current_dir(env.path(""));
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let child = command.spawn().expect("spawn clone");
    let pid = wait_until_daemon_is(&env, "fetch");
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill the daemon");
    let output = finish_within(child, BOUND, "git clone with its daemon killed");
    if !output.status.success() {
        assert_one_clear_error(&String::from_utf8_lossy(&output.stderr), "daemon");
        assert!(!clone.exists(), "git removes a failed clone");
    }

    let again = env.clone_repo(&url, "again");
    assert_eq!(env.rev_parse(&again, "HEAD"), env.rev_parse(&work, "HEAD"));
}

#[test]
fn a_daemon_restarted_mid_push_finishes_it_or_refuses_it_cleanly() {
    let env = TestEnv::new();
    let url = env.url("drained");
    let work = env.new_repo("work");
    env.git_ok(&work, &["push", &url, "main"]);
    let old = env.rev_parse(&work, "HEAD");
    let new = env.commit(&work, "big.dat", incompressible_bytes(48 * 1024 * 1024, 10), "big");

    let mut command = env.command("git");
    command.args(["push", &url, "main"]).current_dir(&work).stdout(Stdio::null()).stderr(Stdio::piped());
    let child = command.spawn().expect("spawn push");
    wait_until_daemon_is(&env, "push");
    let restart = env.git_s3(&["daemon", "restart"]);
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    let output = finish_within(child, BOUND, "git push across a daemon restart");

    let listed = env.ls_remote(&work, &url);
    let value = listed.iter().find(|(_, r)| r == "refs/heads/main").map(|(o, _)| o.clone());
    if output.status.success() {
        assert_eq!(value, Some(new));
    } else {
        assert!(value == Some(old.clone()) || value == Some(new), "main is {value:?}");
        assert_one_clear_error(&String::from_utf8_lossy(&output.stderr), "");
    }
    assert!(env.keys("drained/refs/heads/main/").iter().all(|k| k.ends_with(".bundle")), "no lock left");
    assert_eq!(env.server.open_multipart_uploads(&env.bucket), 0);
}
