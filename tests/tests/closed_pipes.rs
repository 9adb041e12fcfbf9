//! A reader that stops reading (`git s3 ls origin | head -1`) ends our programs as it ends git's:
//! killed by SIGPIPE, nothing on stderr — no panic, no `fatal:` line.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use git_s3_tests::{TestEnv, bin_dir, finish_within};

const BOUND: Duration = Duration::from_secs(120);
/// The smallest pipe Linux makes: output longer than this after the first line cannot all be
/// written before the reader closes, so it surely meets the closed pipe.
const PIPE_BYTES: usize = 4096;

/// How the reader of a command's stdout leaves.
#[derive(Clone, Copy, Debug)]
enum Reader {
    /// Like `| head -1`: takes the first line, then closes the pipe.
    FirstLine,
    /// Gone before the command writes anything (`| true`, a `head` that already has its
    /// lines): the one way a short output surely meets the closed pipe.
    Gone,
}

/// Runs `command` with its stdout going to `reader`, and `stdin` on its stdin.
fn into_pipe(mut command: Command, reader: Reader, stdin: &str) -> Output {
    let (mut read_end, write_end) = std::io::pipe().expect("pipe");
    rustix::pipe::fcntl_setpipe_size(&read_end, PIPE_BYTES).expect("shrink the pipe");
    command.stdout(write_end).stderr(Stdio::piped()).stdin(Stdio::piped());
    let mut child = match reader {
        Reader::Gone => {
            drop(read_end);
            let child = command.spawn().expect("spawn");
            drop(command);
            child
        }
        Reader::FirstLine => {
            let child = command.spawn().expect("spawn");
            // Our copy of the write end goes, so the reader sees the command's output only.
            drop(command);
            // Byte by byte: a buffered reader would drain the pipe beyond the first line.
            let mut byte = [0u8];
            while read_end.read(&mut byte).expect("read the first line") == 1 && byte[0] != b'\n' {}
            drop(read_end);
            child
        }
    };
    let mut input = child.stdin.take().expect("stdin");
    // A command that has already died of the closed pipe may not read its input.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    finish_within(child, BOUND, &format!("a command writing into a closed pipe ({reader:?})"))
}

fn assert_ends_quietly(what: &str, output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "{what}: printed on stderr:\n{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(rustix::process::Signal::PIPE.as_raw()),
        "{what}: ended with {:?}, not by the closed pipe",
        output.status
    );
}

fn git_s3(env: &TestEnv, dir: &std::path::Path, args: &[&str], reader: Reader) -> Output {
    let mut command = env.command(bin_dir().join("git-s3"));
    command.args(args).current_dir(dir);
    into_pipe(command, reader, "")
}

#[test]
fn long_output_piped_into_head_ends_quietly() {
    let env = TestEnv::new();
    let url = env.url("many");
    let repo = env.new_repo("work");
    // Long names make a listing longer than the pipe holds, with few refs to push.
    let branches: Vec<String> = (0..40).map(|i| format!("topic-{i:02}-{}", "x".repeat(140))).collect();
    for branch in &branches {
        env.git_ok(&repo, &["branch", branch]);
    }
    let mut push = vec!["push", "-q", url.as_str(), "main"];
    push.extend(branches.iter().map(String::as_str));
    env.git_ok(&repo, &push);

    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = git_s3(&env, &repo, &["completions", shell], Reader::FirstLine);
        assert_ends_quietly(&format!("git s3 completions {shell} | head -1"), &output);
    }
    assert_ends_quietly("git s3 ls | head -1", &git_s3(&env, &repo, &["ls", &url], Reader::FirstLine));
    let log_bytes = env.daemon_log().len();
    assert!(log_bytes > 2 * PIPE_BYTES, "the log is long enough to meet the closed pipe: {log_bytes} bytes");
    let output = git_s3(&env, &repo, &["daemon", "logs", "-n", "100000"], Reader::FirstLine);
    assert_ends_quietly("git s3 daemon logs | head -1", &output);
}

#[test]
fn every_git_s3_command_that_prints_ends_quietly_when_its_reader_has_gone() {
    let env = TestEnv::new();
    let url = env.url("repo");
    let repo = env.lfs_repo("work", &url, &[("big.bin", vec![7u8; 1024])]);
    env.git_ok(&repo, &["push", "-q", "origin", "main"]);
    env.git_ok(&repo, &["push", "-q", "origin", "main:doomed"]);
    let man_dir = env.path("man");

    let commands: &[&[&str]] = &[
        &["ls", &url],
        &["doctor", "--dry-run", &url],
        &["doctor", &url],
        &["protect", &url, "main"],
        &["unprotect", &url, "main"],
        &["delete-branch", &url, "doomed", "--yes"],
        &["migrate", &url, "--to", "native", "--dry-run"],
        &["lfs", "push", "--dry-run"],
        &["lfs", "pull", "--dry-run"],
        &["lfs", "pull"],
        &["man"],
        &["man", "--install", "--dir", man_dir.to_str().expect("utf-8 path")],
        &["completions", "bash"],
        &["daemon", "status"],
        &["daemon", "status", "--json"],
        &["daemon", "start"],
        &["daemon", "logs"],
        // install-service and uninstall-service without --print run systemctl, whose own
        // messages are not ours to judge.
        &["daemon", "install-service", "--print"],
        &["daemon", "install-service", "--print", "--manager", "launchd"],
        &["daemon", "restart"],
        &["daemon", "stop"],
        &["daemon", "stop"],
        &["daemon", "status"],
    ];
    for args in commands {
        let output = git_s3(&env, &repo, args, Reader::Gone);
        assert_ends_quietly(&format!("git s3 {} | (gone)", args.join(" ")), &output);
    }

    // clap prints help and versions itself and takes a closed pipe as the end of its output.
    for args in [&["--help"][..], &["-h"], &["--version"], &["daemon", "--help"]] {
        let output = git_s3(&env, &repo, args, Reader::Gone);
        let what = format!("git s3 {}", args.join(" "));
        assert!(output.stderr.is_empty(), "{what}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{what}: {:?}", output.status);
    }
}

#[test]
fn the_helper_and_the_lfs_agent_end_quietly_when_git_goes_away() {
    let env = TestEnv::new();
    let url = env.url("agent");
    let repo = env.lfs_repo("work", &url, &[("big.bin", vec![7u8; 1024])]);

    let mut helper = env.command(bin_dir().join("git-remote-s3"));
    helper.args(["origin", &url]).current_dir(&repo);
    assert_ends_quietly("git-remote-s3 answering capabilities", &into_pipe(helper, Reader::Gone, "capabilities\n"));

    let mut agent = env.command(bin_dir().join("git-lfs-s3"));
    agent.current_dir(&repo);
    let init = r#"{"event":"init","operation":"upload","remote":"origin","concurrent":true,"concurrenttransfers":1}"#;
    assert_ends_quietly("git-lfs-s3 answering init", &into_pipe(agent, Reader::Gone, &format!("{init}\n")));

    for args in [&["install", "--remote", "origin"][..], &["enable-debug"], &["disable-debug"], &["uninstall"]] {
        let mut command = env.command(bin_dir().join("git-lfs-s3"));
        command.args(args).current_dir(&repo);
        assert_ends_quietly(&format!("git-lfs-s3 {}", args.join(" ")), &into_pipe(command, Reader::Gone, ""));
    }
}
