//! Whatever the bucket holds (written by the Python tool, by a broken client or by someone with
//! write access), every command stays correct, bounded and clear: real git, the real daemon and
//! moto, with keys planted straight into the bucket.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use git_s3_tests::{Fault, FaultProxy, Rule, TestEnv, finish_within, incompressible_bytes, peak_rss_kib, wait_for};

const BOUND: Duration = Duration::from_secs(120);
/// An oid no repository of these tests holds.
const STRANGER: &str = "0123456789abcdef0123456789abcdef01234567";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("warning:")).collect()
}

fn no_escape_sequences(output: &str) {
    assert!(
        !output.contains('\u{1b}') && !output.contains('\u{7}'),
        "raw control characters reached the terminal: {output:?}"
    );
}

/// A repository with `main` pushed to `prefix`; returns it and main's object id.
fn pushed_repo(env: &TestEnv, prefix: &str) -> (std::path::PathBuf, String) {
    let repo = env.new_repo(&format!("{prefix}-work"));
    let main = env.rev_parse(&repo, "HEAD");
    env.git_ok(&repo, &["push", "-q", &env.url(prefix), "main"]);
    (repo, main)
}

#[test]
fn a_clone_of_many_refs_keeps_no_pack_locked_and_a_failed_fetch_leaves_nothing() {
    let env = TestEnv::new();
    let url = env.url("many");
    let repo = env.new_repo("work");
    let mut pushes = vec!["main".to_string()];
    for i in 0..12 {
        env.git_ok(&repo, &["checkout", "-q", "-b", &format!("topic-{i}"), "main"]);
        env.commit(&repo, &format!("topic-{i}.txt"), format!("topic {i}"), &format!("topic {i}"));
        pushes.push(format!("topic-{i}"));
    }
    let mut args = vec!["push", "-q", url.as_str()];
    args.extend(pushes.iter().map(String::as_str));
    env.git_ok(&repo, &args);

    let clone = env.clone_repo(&url, "clone");
    let packs: Vec<String> = std::fs::read_dir(clone.join(".git/objects/pack"))
        .expect("pack dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(packs.iter().filter(|p| p.ends_with(".pack")).count() > 1, "each bundle is a pack: {packs:?}");
    assert!(!packs.iter().any(|p| p.ends_with(".keep")), "no pack stays kept after the clone: {packs:?}");

    // A branch whose bundle is garbage after a valid header: git index-pack refuses it.
    let mut bad = format!("# v2 git bundle\n{STRANGER} refs/heads/bad\n\n").into_bytes();
    bad.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\x05");
    bad.extend(incompressible_bytes(4000, 7));
    env.server.put(&env.bucket, &format!("many/refs/heads/bad/{STRANGER}.bundle"), bad);
    let before = pack_dir_listing(&clone);
    let stderr = env.git_fails(&clone, &["fetch", "-q", "origin", "refs/heads/bad:refs/remotes/origin/bad"]);
    assert!(stderr.contains("corrupt") && stderr.contains("git s3 doctor"), "{stderr}");
    assert_eq!(pack_dir_listing(&clone), before, "the refused pack left nothing in the repository");
}

fn pack_dir_listing(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo.join(".git/objects/pack"))
        .expect("pack dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn ref_names_with_hash_and_bundle_suffix_round_trip_with_the_python_tool_both_ways() {
    let env = TestEnv::new();
    let url = env.url("names");
    let repo = env.new_repo("work");
    for branch in ["fix#123", "v1.bundle", "ours#7", "rel/2.bundle"] {
        env.git_ok(&repo, &["branch", branch]);
    }
    // The Python tool pushes two of them; we clone them.
    env.python_git_ok(&repo, &["push", "-q", &url, "main", "fix#123", "v1.bundle"]);
    let ours = env.path("ours");
    env.git_ok(&env.path(""), &["clone", "-q", "-b", "fix#123", &url, &ours.to_string_lossy()]);
    let listed = env.ls_remote(&ours, "origin");
    for name in ["refs/heads/fix#123", "refs/heads/v1.bundle", "refs/heads/main"] {
        assert!(listed.iter().any(|(_, r)| r == name), "{name} in {listed:?}");
    }

    // We push the other two; the Python tool clones everything.
    env.git_ok(&repo, &["push", "-q", &url, "ours#7", "rel/2.bundle"]);
    let python = env.path("python");
    env.python_git_ok(&env.path(""), &["clone", "-q", &url, &python.to_string_lossy()]);
    let python_refs = env.git_ok(&python, &["for-each-ref", "--format=%(refname)", "refs/remotes/origin"]);
    for name in ["fix#123", "v1.bundle", "ours#7", "rel/2.bundle"] {
        assert!(python_refs.lines().any(|l| l == format!("refs/remotes/origin/{name}")), "{name} in {python_refs}");
    }
    assert_eq!(env.rev_parse(&python, "origin/ours#7"), env.rev_parse(&repo, "ours#7"));
}

#[test]
fn a_key_with_a_control_character_breaks_no_command() {
    let env = TestEnv::new();
    let (repo, main) = pushed_repo(&env, "ctl");
    env.server.put(&env.bucket, &format!("ctl/refs/heads/a\u{1}b/{main}.bundle"), Vec::new());

    let output = env.git(&repo, &["ls-remote", &env.url("ctl")]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("refs/heads/main") && !stdout.contains("a\u{1}b"), "{stdout}");
    assert_eq!(warnings(&stderr).len(), 1, "{stderr}");
    assert!(stderr.contains("refs/heads/a\\u{1}b"), "the warning names the key, spelled out: {stderr}");
    env.clone_repo(&env.url("ctl"), "clone");
}

#[test]
fn an_enormous_head_is_never_read_whole() {
    let env = TestEnv::new();
    let (repo, _) = pushed_repo(&env, "big");
    env.server.put(&env.bucket, "big/HEAD", incompressible_bytes(96 * 1024 * 1024, 3));

    let clone = env.path("clone");
    let output = env.git(&env.path(""), &["clone", "-q", &env.url("big"), &clone.to_string_lossy()]);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&repo, "main"), "the clone checked out main");
    assert!(warnings(&stderr).iter().any(|w| w.contains("HEAD holds more than")), "{stderr}");

    let ls = env.git_s3(&["ls", &env.url("big")]);
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    assert!(text(&ls.stdout).contains("HEAD: (not set)"), "{}", text(&ls.stdout));
    let doctor = env.git_s3(&["doctor", "--dry-run", &env.url("big")]);
    assert!(text(&doctor.stdout).contains("HEAD: holds more than"), "{}", text(&doctor.stdout));

    let pid = env.daemon_status().and_then(|s| s["pid"].as_u64()).expect("daemon running");
    let peak_mib = peak_rss_kib(pid) / 1024;
    assert!(peak_mib < 64, "the daemon's peak memory ({peak_mib} MiB) stayed well below the HEAD's size");
}

#[test]
fn terminal_escapes_in_the_bucket_are_spelled_out() {
    let env = TestEnv::new();
    let (_, main) = pushed_repo(&env, "esc");
    env.server.put(&env.bucket, "esc/HEAD", b"\x1b]0;pwned\x07".to_vec());
    env.server.put(&env.bucket, &format!("esc/refs/heads/\u{1b}]0;owned\u{7}/{main}.bundle"), Vec::new());

    for args in [vec!["ls"], vec!["doctor", "--dry-run"]] {
        let mut args = args;
        let url = env.url("esc");
        args.push(&url);
        let output = env.git_s3(&args);
        let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
        no_escape_sequences(&all);
        assert!(all.contains("\\u{1b}]0;"), "git s3 {args:?} names what it found, spelled out: {all}");
    }
}

#[test]
fn the_profile_named_in_the_url_wins_over_keys_in_the_environment() {
    let mut env = TestEnv::new();
    let (repo, _) = pushed_repo(&env, "prof");
    let bucket = env.bucket.clone();

    let stderr = env.git_fails(&repo, &["ls-remote", &format!("s3://nope@{bucket}/prof")]);
    assert!(stderr.contains("AWS profile 'nope' (named in the URL) is not in the AWS config"), "{stderr}");

    // A profile whose credentials come from a process: that process must run.
    let marker = env.path("credential-process-ran");
    let script = env.path("credentials.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"Version\": 1, \"AccessKeyId\": \"from-process\", \"SecretAccessKey\": \"secret\"}}'\n",
            marker.display()
        ),
    )
    .expect("script");
    std::process::Command::new("chmod").arg("+x").arg(&script).status().expect("chmod");
    std::fs::create_dir_all(env.home().join(".aws")).expect(".aws");
    std::fs::write(
        env.home().join(".aws/config"),
        format!("[profile team]\ncredential_process = {}\nregion = us-east-1\n", script.display()),
    )
    .expect("aws config");
    let listed = env.ls_remote(&repo, &format!("s3://team@{bucket}/prof"));
    assert!(listed.iter().any(|(_, r)| r == "refs/heads/main"), "{listed:?}");
    assert!(marker.exists(), "the URL's profile was used, not AWS_ACCESS_KEY_ID");

    env.set_env("AWS_PROFILE", "missing");
    let stderr = env.git_fails(&repo, &["ls-remote", &env.url("prof")]);
    assert!(stderr.contains("AWS profile 'missing' (from AWS_PROFILE) is not in"), "{stderr}");
}

#[test]
fn doctor_finds_every_bundle_a_clone_would_refuse_and_says_how_to_repair_it() {
    let env = TestEnv::new();
    let url = env.url("doc");
    let repo = env.new_repo("work");
    for branch in ["empty", "noise", "other", "thin", "truncated", "fine"] {
        env.git_ok(&repo, &["checkout", "-q", "-b", branch, "main"]);
        env.commit(&repo, &format!("{branch}.txt"), branch, branch);
    }
    env.git_ok(&repo, &["push", "-q", &url, "main", "empty", "noise", "other", "thin", "truncated", "fine"]);
    let key = |branch: &str| env.bundle_keys("doc", &format!("refs/heads/{branch}")).remove(0);

    env.server.put(&env.bucket, &key("empty"), Vec::new());
    env.server.put(&env.bucket, &key("noise"), incompressible_bytes(3000, 1));
    // A real bundle, but of another ref: not what its key says.
    env.server.put(&env.bucket, &key("other"), env.server.get(&env.bucket, &key("main")));
    // A bundle with a prerequisite: not self-contained.
    let thin = env.path("thin.bundle");
    env.git_ok(&repo, &["bundle", "create", "-q", &thin.to_string_lossy(), "main..thin"]);
    env.server.put(&env.bucket, &key("thin"), std::fs::read(&thin).expect("thin bundle"));
    // A sound header, a pack cut short: only the thorough check sees it.
    let whole = env.server.get(&env.bucket, &key("truncated"));
    env.server.put(&env.bucket, &key("truncated"), whole[..whole.len() - 60].to_vec());

    let doctor = env.git_s3(&["doctor", "--dry-run", &url]);
    let report = text(&doctor.stdout);
    assert!(!doctor.status.success(), "findings are not healthy: {report}");
    let line =
        |branch: &str| report.lines().find(|l| l.starts_with(&format!("refs/heads/{branch}:"))).map(str::to_string);
    for (branch, says) in [
        ("empty", "empty"),
        ("noise", "not a git bundle"),
        ("other", "not what its key says"),
        ("thin", "not self-contained"),
    ] {
        let found = line(branch).unwrap_or_else(|| panic!("doctor reports {branch}: {report}"));
        assert!(found.contains(says), "{found}");
        assert!(found.contains("git push --force") && found.contains("git s3 delete-branch"), "says how: {found}");
    }
    assert!(line("truncated").is_none() && line("fine").is_none() && line("main").is_none(), "{report}");

    let thorough = env.git_s3(&["doctor", "--dry-run", "--thorough", &url]);
    let report = text(&thorough.stdout);
    assert!(report.lines().any(|l| l.starts_with("refs/heads/truncated:") && l.contains("corrupt")), "{report}");
    assert!(!report.lines().any(|l| l.starts_with("refs/heads/fine:")), "{report}");
}

#[test]
fn ref_names_git_cannot_use_are_left_out_with_one_warning() {
    let env = TestEnv::new();
    let (repo, main) = pushed_repo(&env, "odd");
    for name in ["a b", "x..y", "w.lock", "tab\there"] {
        env.server.put(&env.bucket, &format!("odd/refs/heads/{name}/{main}.bundle"), Vec::new());
    }
    let output = env.git(&repo, &["fetch", &env.url("odd"), "refs/heads/*:refs/remotes/odd/*"]);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warned = warnings(&stderr);
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(warned[0].contains("left out 4") && warned[0].contains("'refs/heads/a b'"), "{}", warned[0]);
    let fetched = env.git_ok(&repo, &["for-each-ref", "--format=%(refname)", "refs/remotes/odd"]);
    assert_eq!(fetched.trim(), "refs/remotes/odd/main");

    let doctor = text(&env.git_s3(&["doctor", "--dry-run", &env.url("odd")]).stdout);
    assert!(doctor.contains("refs/heads/x..y: not a ref name git can use"), "{doctor}");
}

#[test]
fn a_killed_push_leaves_no_scratch_space_behind_and_stop_returns_once_the_daemon_is_gone() {
    let mut env = TestEnv::new();
    let tmp = env.path("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    env.set_env("TMPDIR", &tmp.to_string_lossy());
    let proxy: FaultProxy = env.route_through_proxy();
    proxy.add(Rule::new("PUT", ".bundle", Fault::Delay(Duration::from_secs(60))));
    let repo = env.new_repo("work");
    let mut push = env.command("git");
    push.current_dir(&repo)
        .args(["push", "-q", &env.url("kill"), "main"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let push = push.spawn().expect("git push");
    let scratch = env.home().join(".cache/git-remote-s3/scratch");
    // While the bundle's upload is held back, the push works in the daemon's scratch space.
    let pid = wait_for("the bundle upload to start in the daemon's scratch space", BOUND, || {
        proxy.seen().iter().any(|s| s.method == "PUT" && s.path.contains(".bundle")).then_some(())?;
        dir_entries(&scratch).iter().any(|d| !dir_entries(d).is_empty()).then_some(())?;
        env.daemon_status().and_then(|s| s["pid"].as_i64())
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill the daemon");
    let output = finish_within(push, BOUND, "the push whose daemon was killed");
    assert!(!output.status.success());
    assert!(dir_entries(&tmp).is_empty(), "nothing in the temp dir: {:?}", dir_entries(&tmp));

    // The next daemon clears what the killed one left.
    let status = env.daemon_status();
    assert!(status.is_none(), "the daemon is dead");
    env.git_ok(&repo, &["ls-remote", &env.url("kill")]);
    for daemon_scratch in dir_entries(&scratch) {
        assert!(dir_entries(&daemon_scratch).is_empty(), "{:?}", dir_entries(&daemon_scratch));
    }

    let pid = env.daemon_status().and_then(|s| s["pid"].as_i64()).expect("daemon running");
    let stop = env.git_s3(&["daemon", "stop"]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let exited = state.is_empty() || state.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
    assert!(exited, "the daemon process has exited when 'stop' returns: {state}");
}

fn dir_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

#[test]
fn an_upload_whose_key_holds_a_control_character_is_listed_url_encoded_and_aborted() {
    let mut env = TestEnv::new();
    let proxy: FaultProxy = env.route_through_proxy();
    pushed_repo(&env, "ctlup");
    // A push killed mid-upload of a branch whose name holds a control character.
    env.server.upload_with_unsendable_key(&env.bucket, &format!("ctlup/refs/heads/a\u{1}b/{STRANGER}.bundle"));
    // S3 sends such a listing URL-encoded when asked; moto does not, so the proxy plays S3.
    proxy.add(Rule::new("GET", "", Fault::UrlEncodeUploadKeys).query("encoding-type=url").times(usize::MAX));

    let output = env.git_s3(&["doctor", &env.url("ctlup"), "--yes"]);
    let report = text(&output.stdout);
    assert!(output.status.success(), "{report}{}", text(&output.stderr));
    no_escape_sequences(&report);
    assert!(report.contains("unfinished upload") && report.contains("aborted it"), "{report}");
    assert!(proxy.seen().iter().any(|s| s.query.contains("uploads") && s.query.contains("encoding-type=url")));
    assert_eq!(env.server.open_multipart_uploads(&env.bucket), 0, "the upload was aborted");
}
