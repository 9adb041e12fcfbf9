//! Hand-written bad input at the edges (the fuzz targets in fuzz/ cover the parsers at
//! random): what git or anything else could write to the helper and the agent is refused
//! with a clear message and writes nothing to the bucket; odd but legal names round-trip.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use git_s3_tests::{TestEnv, bin_dir, finish_within, sha256_hex};

const BOUND: Duration = Duration::from_secs(60);

/// Feeds `input` to git-remote-s3 in `repo`; returns (stdout, stderr, success).
fn helper_session(env: &TestEnv, repo: &Path, url: &str, input: &str) -> (String, String, bool) {
    let mut helper = env.spawn_remote_helper(repo, url);
    let mut stdin = helper.stdin.take().expect("stdin");
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let output = finish_within(helper, BOUND, "git-remote-s3");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.success(),
    )
}

#[test]
fn the_helper_refuses_dot_dot_refs_option_like_sources_and_short_object_ids() {
    let env = TestEnv::new();
    let url = env.url("bad");
    let repo = env.new_repo("work");

    let (stdout, _, _) = helper_session(&env, &repo, &url, "push HEAD:refs/heads/a..b\n\n");
    assert!(stdout.contains("error refs/heads/a..b") && stdout.contains("invalid ref name"), "{stdout}");

    let (stdout, stderr, ok) = helper_session(&env, &repo, &url, "push --upload-pack=x:refs/heads/main\n\n");
    assert!(!stdout.contains("ok refs/heads/main"), "{stdout}");
    assert!(!ok || stdout.contains("error"), "refused: {stdout}{stderr}");
    assert!(format!("{stdout}{stderr}").contains("must not start with '-'"), "{stdout}{stderr}");

    let (_, stderr, ok) = helper_session(&env, &repo, &url, "fetch 1234abcd refs/heads/main\n\n");
    assert!(!ok && stderr.contains("malformed 'fetch' line"), "{stderr}");

    assert!(env.keys("bad/").is_empty(), "nothing was written: {:?}", env.keys("bad/"));
}

#[test]
fn branch_names_with_odd_characters_round_trip_as_s3_keys() {
    let env = TestEnv::new();
    let url = env.url("odd");
    let repo = env.new_repo("work");
    let branch = "feat/ünïcødé%20+@&=;'x,!";
    env.git_ok(&repo, &["branch", branch]);
    env.git_ok(&repo, &["push", &url, "main", branch]);
    assert!(env.keys("odd/").contains(&format!("odd/refs/heads/{branch}/{}.bundle", env.rev_parse(&repo, "HEAD"))));
    let listed = env.ls_remote(&repo, &url);
    assert!(listed.iter().any(|(_, r)| *r == format!("refs/heads/{branch}")), "{listed:?}");
    let clone = env.path("clone");
    env.git_ok(&env.path(""), &["clone", "-q", "-b", branch, &url, clone.to_str().expect("utf-8 path")]);
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&repo, "HEAD"));
}

#[test]
fn the_agent_refuses_relative_paths_and_symlinks_out_of_the_repository() {
    let env = TestEnv::new();
    let url = env.url("paths");
    let repo = env.lfs_repo("work", &url, &[("ok.bin", b"fine\n".to_vec())]);
    let outside = env.path("outside.txt");
    std::fs::write(&outside, b"not for the bucket").expect("write");
    let oid = sha256_hex(b"not for the bucket");
    let link = repo.join(".git/lfs/objects/link");
    std::os::unix::fs::symlink(&outside, &link).expect("symlink");

    let requests = [
        r#"{"event":"init","operation":"upload","remote":"origin","concurrent":false}"#.to_string(),
        format!(r#"{{"event":"upload","oid":"{oid}","size":18,"path":"../outside.txt"}}"#),
        format!(r#"{{"event":"upload","oid":"{oid}","size":18,"path":"{}"}}"#, link.display()),
        r#"{"event":"terminate"}"#.to_string(),
    ];
    let mut agent = env.command(bin_dir().join("git-lfs-s3"));
    agent.current_dir(&repo).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut agent = agent.spawn().expect("agent");
    agent.stdin.take().expect("stdin").write_all((requests.join("\n") + "\n").as_bytes()).expect("write");
    let output = finish_within(agent, BOUND, "git-lfs-s3");
    let replies: Vec<serde_json::Value> =
        String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let errors: Vec<&str> = replies
        .iter()
        .filter(|r| r["event"] == "complete")
        .map(|r| r["error"]["message"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(errors.len(), 2, "{replies:?}");
    assert!(errors[0].contains("absolute path"), "{errors:?}");
    assert!(errors[1].contains("not inside this repository"), "{errors:?}");
    assert!(env.keys(&format!("paths/lfs/{oid}")).is_empty());
}
