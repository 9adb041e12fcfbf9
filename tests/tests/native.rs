//! The native format, as a user who chose it for a project with many refs meets it: a mirror
//! push stores the history once, a clone downloads it once, a change costs its own bytes, and
//! pushes are atomic — on moto and on s3s-fs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use git_s3_tests::project::{ProjectShape, project_repository};
use git_s3_tests::{ServerKind, TestEnv, finish_within, incompressible_bytes, wait_for};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// `git show-ref` of a repository, as `(oid, ref)` pairs, HEAD left out.
fn local_refs(env: &TestEnv, repo: &Path) -> BTreeSet<(String, String)> {
    env.git_ok(repo, &["show-ref"])
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(o, n)| (o.to_string(), n.to_string())))
        .filter(|(_, n)| !n.starts_with("refs/remotes/"))
        .collect()
}

fn remote_refs(env: &TestEnv, repo: &Path) -> BTreeSet<(String, String)> {
    env.ls_remote(repo, "origin").into_iter().filter(|(_, n)| n != "HEAD").collect()
}

/// Bytes of the objects under `prefix` that are new or changed since `before` was taken.
fn bytes_written(env: &TestEnv, prefix: &str, before: &[(String, u64)]) -> u64 {
    sizes(env, prefix).into_iter().filter(|entry| !before.contains(entry)).map(|(_, size)| size).sum()
}

fn sizes(env: &TestEnv, prefix: &str) -> Vec<(String, u64)> {
    env.keys(prefix).into_iter().map(|k| (k.clone(), env.server.size(&env.bucket, &k).unwrap_or(0))).collect()
}

/// A project with a native remote `origin` at `prefix`.
fn project_with_native_remote(env: &TestEnv, name: &str, prefix: &str) -> PathBuf {
    let work = project_repository(env, name, ProjectShape::SMALL);
    env.git_ok(&work, &["remote", "add", "origin", &env.url(prefix)]);
    env.git_ok(&work, &["config", "remote.origin.s3format", "native"]);
    work
}

/// The size of the whole history as one bundle: what one copy of it costs.
fn history_bytes(env: &TestEnv, repo: &Path) -> u64 {
    let bundle = env.path("history.bundle");
    env.git_ok(repo, &["bundle", "create", "-q", bundle.to_str().expect("path"), "--all"]);
    std::fs::metadata(&bundle).expect("bundle").len()
}

fn a_project_lives_in_one_copy_of_its_history(env: &TestEnv) {
    let work = project_with_native_remote(env, "work", "project");
    let history = history_bytes(env, &work);

    // A mirror push: 308 refs, one pack.
    env.git_ok(&work, &["push", "-q", "--mirror", "origin"]);
    let keys = env.keys("project/");
    assert!(keys.contains(&"project/refs/native.json".to_string()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with(".bundle")), "{keys:?}");
    let packs: Vec<&String> = keys.iter().filter(|k| k.ends_with(".pack")).collect();
    assert_eq!(packs.len(), 1, "{keys:?}");
    let stored: u64 = sizes(env, "project/").iter().map(|(_, s)| s).sum();
    assert!(stored <= history * 13 / 10, "the bucket holds {stored} bytes for a history of {history}");
    assert_eq!(remote_refs(env, &work), local_refs(env, &work));
    assert_eq!(remote_refs(env, &work).len(), 1 + 8 + 300);
    assert!(env.git_s3_ok(&work, &["ls", "origin"]).contains("format: native"));

    // A clone needs no setting: the prefix says what it holds.
    let fetched_before = env.fetched_bytes();
    let clone = env.clone_repo(&env.url("project"), "clone");
    let fetched = env.fetched_bytes() - fetched_before;
    assert!(fetched <= history * 12 / 10, "the clone downloaded {fetched} bytes for a history of {history}");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&work, "main"));
    assert_eq!(env.git_ok(&clone, &["tag"]).lines().count(), 300);

    // A one-line change costs its own bytes, both ways.
    let mut text = std::fs::read_to_string(work.join("file-3.txt")).expect("file");
    text.push_str("one more line\n");
    let change = env.commit(&work, "file-3.txt", text, "a one-line change");
    let before = sizes(env, "project/");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let written = bytes_written(env, "project/", &before);
    assert!(written <= 64 * KIB, "a one-line push wrote {written} bytes");
    let fetched_before = env.fetched_bytes();
    env.git_ok(&clone, &["pull", "-q", "--ff-only"]);
    let fetched = env.fetched_bytes() - fetched_before;
    assert!(fetched <= 64 * KIB, "fetching a one-line change downloaded {fetched} bytes");
    assert_eq!(env.rev_parse(&clone, "HEAD"), change);

    // A branch deleted by one pusher is gone for everyone, and the history still clones whole.
    env.git_ok(&clone, &["push", "-q", "origin", ":refs/heads/topic-0"]);
    assert!(!remote_refs(env, &work).iter().any(|(_, n)| n == "refs/heads/topic-0"));
    let second = env.clone_repo(&env.url("project"), "second-clone");
    env.git_ok(&second, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.rev_parse(&second, "HEAD"), change);

    // A large change (40 MiB in 80 files) is uploaded while git writes its pack (under a
    // temporary key, copied to the pack's name once git has named it): the bucket then holds it
    // under its name alone.
    for i in 0..80 {
        std::fs::write(work.join(format!("part-{i}.bin")), incompressible_bytes(512 * KIB as usize, i)).expect("write");
    }
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "a large change"]);
    let big = env.rev_parse(&work, "HEAD");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let packs = env.keys("project/native/packs/");
    assert!(!packs.iter().any(|k| k.contains("incoming-")), "{packs:?}");
    assert!(
        packs.iter().any(|k| k.ends_with(".pack") && env.server.size(&env.bucket, k) > Some(40 * MIB)),
        "{packs:?}"
    );
    env.git_ok(&second, &["pull", "-q", "--ff-only"]);
    env.git_ok(&second, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.rev_parse(&second, "HEAD"), big);
}

#[test]
fn a_project_lives_in_one_copy_of_its_history_on_moto() {
    a_project_lives_in_one_copy_of_its_history(&TestEnv::new());
}

#[test]
fn a_project_lives_in_one_copy_of_its_history_on_s3s_fs() {
    a_project_lives_in_one_copy_of_its_history(&TestEnv::with_server(ServerKind::S3sFs));
}

#[test]
fn atomic_pushes_are_all_or_none_and_leases_are_checked_at_the_commit() {
    use std::io::{BufRead, BufReader, Write};
    let env = TestEnv::new();
    let url = env.url("atomic");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["config", "remote.origin.s3format", "native"]);
    let first = env.rev_parse(&work, "HEAD");
    env.commit(&work, "a", "a\n", "second");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    env.git_s3_ok(&work, &["protect", "origin", "main"]);

    // The remote refuses one ref (main is protected), so it writes none.
    env.git_ok(&work, &["branch", "topic", first.as_str()]);
    let stderr = env.git_fails(&work, &["push", "--atomic", "origin", "+refs/heads/topic:refs/heads/main", "topic"]);
    assert!(stderr.contains("protected"), "{stderr}");
    let refs = remote_refs(&env, &work);
    assert_eq!(refs.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), vec!["refs/heads/main"]);
    env.git_s3_ok(&work, &["unprotect", "origin", "main"]);

    // A lease git saw hold, lost to a push that lands between git's listing and its push.
    let bob = env.clone_repo(&url, "bob");
    let listed = env.rev_parse(&bob, "origin/main");
    env.commit(&bob, "b", "b\n", "bob's work");
    env.git_ok(&bob, &["branch", "bob-topic"]);
    let mut helper = env.spawn_remote_helper(&bob, &url);
    let mut stdin = helper.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(helper.stdout.take().expect("stdout"));
    let mut read_block = || {
        let mut block = String::new();
        loop {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read");
            if line.trim().is_empty() {
                return block;
            }
            block.push_str(&line);
        }
    };
    writeln!(stdin, "list for-push").expect("write");
    assert!(read_block().contains(&listed));
    let alice = env.commit(&work, "c", "c\n", "alice's work");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    write!(
        stdin,
        "option atomic true\noption cas refs/heads/main:{listed}\npush +refs/heads/main:refs/heads/main\npush refs/heads/bob-topic:refs/heads/bob-topic\n\n"
    )
    .expect("write");
    // One line answers each option; a block, the push.
    let answer = read_block();
    let answer = answer.strip_prefix("ok\nok\n").unwrap_or_else(|| panic!("options refused: {answer}"));
    assert!(answer.contains("error refs/heads/main stale info"), "{answer}");
    assert!(answer.contains("error refs/heads/bob-topic atomic push failed"), "{answer}");
    drop(stdin);
    let _ = helper.wait();
    let refs = remote_refs(&env, &work);
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec![(alice.clone(), "refs/heads/main".to_string())]);

    // With the lease it holds, the same force push goes through.
    env.git_ok(&bob, &["fetch", "-q"]);
    env.git_ok(&bob, &["push", "-q", &format!("--force-with-lease=main:{alice}"), "origin", "main"]);
    assert_eq!(
        env.ls_remote(&bob, "origin").iter().find(|(_, n)| n == "refs/heads/main").map(|(o, _)| o.clone()),
        Some(env.rev_parse(&bob, "main"))
    );

    // SHA-256 repositories too, and a SHA-1 one is told it cannot push there.
    let sha256 = env.path("sha256");
    std::fs::create_dir_all(&sha256).expect("dir");
    env.git_ok(&sha256, &["init", "-q", "--object-format=sha256"]);
    let tip = env.commit(&sha256, "a", "a\n", "first");
    env.git_ok(&sha256, &["-c", "s3.format=native", "push", "-q", &env.url("sha256"), "main"]);
    let clone = env.clone_repo(&env.url("sha256"), "sha256-clone");
    assert_eq!(env.rev_parse(&clone, "HEAD"), tip);
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    let stderr = env.git_fails(&work, &["push", &env.url("sha256"), "main:refs/heads/sha1"]);
    assert!(stderr.contains("sha256"), "{stderr}");
}

/// Pushers race: of different branches, all land; of one branch, exactly one wins each round
/// and no push reported `ok` is lost.
fn pushers_race(env: &TestEnv) {
    const PUSHERS: usize = 8;
    const ROUNDS: usize = 4;
    let limit = Duration::from_secs(120);
    let url = env.url("race");
    let seed = env.new_repo("seed");
    env.git_ok(&seed, &["remote", "add", "origin", &url]);
    env.git_ok(&seed, &["config", "remote.origin.s3format", "native"]);
    env.git_ok(&seed, &["push", "-q", "origin", "main"]);
    let clones: Vec<PathBuf> = (0..PUSHERS).map(|i| env.clone_repo(&url, &format!("pusher-{i}"))).collect();

    let spawn = |i: usize, refspec: String| {
        let mut push = env.command("git");
        push.args(["push", "origin", &refspec]).current_dir(&clones[i]).stdout(Stdio::null()).stderr(Stdio::piped());
        push.spawn().expect("spawn git push")
    };
    // Different branches: every one lands.
    let tips: Vec<String> =
        clones.iter().enumerate().map(|(i, c)| env.commit(c, &format!("own-{i}"), "x\n", "own branch")).collect();
    let pushes: Vec<_> = (0..PUSHERS).map(|i| spawn(i, format!("HEAD:refs/heads/pusher-{i}"))).collect();
    for (i, push) in pushes.into_iter().enumerate() {
        let output = finish_within(push, limit, &format!("pusher {i}"));
        assert!(output.status.success(), "pusher {i}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let refs = remote_refs(env, &seed);
    for (i, tip) in tips.iter().enumerate() {
        assert!(refs.contains(&(tip.clone(), format!("refs/heads/pusher-{i}"))), "pusher {i} lost: {refs:?}");
    }

    // One branch: exactly one winner per round, and what it was told holds.
    for round in 0..ROUNDS {
        for clone in &clones {
            env.git_ok(clone, &["fetch", "-q", "origin"]);
            env.git_ok(clone, &["reset", "-q", "--hard", "origin/main"]);
        }
        let commits: Vec<String> = clones
            .iter()
            .enumerate()
            .map(|(i, c)| env.commit(c, &format!("race-{i}"), format!("round {round}\n"), "race"))
            .collect();
        let pushes: Vec<_> = (0..PUSHERS).map(|i| spawn(i, "main".to_string())).collect();
        let outputs: Vec<_> = pushes
            .into_iter()
            .enumerate()
            .map(|(i, p)| finish_within(p, limit, &format!("round {round}, pusher {i}")))
            .collect();
        let winners: Vec<usize> = (0..PUSHERS).filter(|&i| outputs[i].status.success()).collect();
        let report =
            || outputs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect::<Vec<_>>().join("\n");
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner\n{}", report());
        let main = env.ls_remote(&seed, "origin").into_iter().find(|(_, n)| n == "refs/heads/main").map(|(o, _)| o);
        assert_eq!(main, Some(commits[winners[0]].clone()), "round {round}: the winner's push was lost\n{}", report());
    }
    let last = env.clone_repo(&url, "last");
    env.git_ok(&last, &["fsck", "--strict", "--no-progress"]);
}

#[test]
fn pushers_race_on_moto() {
    pushers_race(&TestEnv::new());
}

#[test]
fn pushers_race_on_s3s_fs() {
    pushers_race(&TestEnv::with_server(ServerKind::S3sFs));
}

#[test]
fn a_damaged_remote_gives_clear_errors_and_a_wrong_record_costs_only_bytes() {
    let env = TestEnv::new();
    let work = project_with_native_remote(&env, "work", "damaged");
    env.git_ok(&work, &["push", "-q", "--mirror", "origin"]);
    let url = env.url("damaged");

    // A healthy remote passes the thorough check: every pack indexes, every ref's history is there.
    env.git_s3_ok(&work, &["doctor", "origin", "--thorough", "--dry-run"]);

    // A repository whose record of fetched packs lies (copied from a clone, objects gone)
    // still fetches everything it lacks.
    let clone = env.clone_repo(&url, "clone");
    let fresh = env.path("fresh");
    std::fs::create_dir_all(&fresh).expect("dir");
    env.git_ok(&fresh, &["init", "-q"]);
    env.git_ok(&fresh, &["remote", "add", "origin", &url]);
    let records = clone.join(".git/git-remote-s3");
    let copied = fresh.join(".git/git-remote-s3");
    std::fs::create_dir_all(&copied).expect("dir");
    for entry in std::fs::read_dir(&records).expect("the clone keeps a record of its packs") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), copied.join(entry.file_name())).expect("copy");
    }
    env.git_ok(&fresh, &["fetch", "-q", "origin"]);
    env.git_ok(&fresh, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.rev_parse(&fresh, "origin/main"), env.rev_parse(&work, "main"));

    // An index that lies is never used for what a clone keeps: git index-pack indexes afresh.
    let idx = env.keys("damaged/native/packs/").into_iter().find(|k| k.ends_with(".idx")).expect("an index");
    env.server.put(&env.bucket, &idx, b"not an index at all".to_vec());
    let indexed = env.clone_repo(&url, "despite-the-index");
    env.git_ok(&indexed, &["fsck", "--strict", "--no-progress"]);

    // A pack whose bytes are not what its name says.
    let pack = env.keys("damaged/native/packs/").into_iter().find(|k| k.ends_with(".pack")).expect("a pack");
    let original = env.server.get(&env.bucket, &pack);
    let mut lying = original.clone();
    let middle = lying.len() / 2;
    lying[middle] ^= 0xff;
    env.server.put(&env.bucket, &pack, lying);
    let stderr = env.git_fails(&env.path(""), &["clone", "-q", &url, "lying"]);
    assert!(stderr.contains("does not hold the pack its name says") && stderr.contains("git s3 doctor"), "{stderr}");
    let doctor = env.git_s3_in(&work, &["doctor", "origin", "--thorough", "--dry-run"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(!doctor.status.success() && report.contains(&pack) && report.contains("cannot be indexed"), "{report}");
    assert!(!env.path("lying").exists());

    // A manifest naming a pack the bucket lacks.
    env.server.put(&env.bucket, &pack, original);
    let tips = pack.replace(".pack", ".tips");
    let idx = pack.replace(".pack", ".idx");
    env.server.copy(&env.bucket, &pack, "damaged/elsewhere.pack");
    env.server.client().0.block_on(async {
        let (_, client) = env.server.client();
        client.delete_object().bucket(&env.bucket).key(&pack).send().await.expect("delete");
    });
    let stderr = env.git_fails(&env.path(""), &["clone", "-q", &url, "missing"]);
    assert!(stderr.contains("missing from the bucket"), "{stderr}");
    let doctor = env.git_s3_in(&work, &["doctor", "origin"]);
    let doctor = String::from_utf8_lossy(&doctor.stdout).into_owned() + &String::from_utf8_lossy(&doctor.stderr);
    assert!(doctor.contains(&pack) && doctor.contains("missing"), "{doctor}");
    assert!(env.keys("damaged/").contains(&tips) && env.keys("damaged/").contains(&idx));
    env.server.copy(&env.bucket, "damaged/elsewhere.pack", &pack);

    // A forged manifest: a clear error, nothing written.
    env.server.put(&env.bucket, "damaged/refs/native.json", b"{\"format\": \"git-remote-s3 native\"}".to_vec());
    let stderr = env.git_fails(&work, &["ls-remote", "origin"]);
    assert!(stderr.contains("native manifest") && stderr.contains("git s3 doctor"), "{stderr}");
    let root = serde_json::json!({
        "format": "git-remote-s3 native", "version": 1, "object_format": "sha1", "generation": 9,
        "commit": "x", "head": null, "shards": ["0".repeat(64)], "packs": [],
    });
    env.server.put(&env.bucket, "damaged/refs/native.json", serde_json::to_vec(&root).expect("json"));
    let stderr = env.git_fails(&work, &["ls-remote", "origin"]);
    assert!(stderr.contains("missing from the bucket"), "{stderr}");
}

/// The packs of a native remote, as its root names them: `(name, objects)`.
/// The size of a fresh pack of `revs` (`git pack-objects --revs` input) in `repo`.
fn pack_bytes(env: &TestEnv, repo: &Path, revs: &str) -> u64 {
    let mut pack = env.command("git");
    pack.args(["pack-objects", "--revs", "--stdout", "-q"])
        .current_dir(repo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = pack.spawn().expect("git pack-objects");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), revs.as_bytes()).expect("feed");
    child.wait_with_output().expect("git pack-objects").stdout.len() as u64
}

/// Waits until the daemon's latest maintenance of the remote at `prefix` has ended; returns
/// what `git s3 daemon status` says of it.
fn maintenance_done(env: &TestEnv, prefix: &str) -> serde_json::Value {
    let remote = format!("s3://test-bucket/{prefix}");
    wait_for("the daemon's maintenance to end", Duration::from_secs(60), || {
        let status = env.daemon_status()?;
        let entry = status["maintenance"].as_array()?.iter().find(|m| m["remote"] == remote.as_str())?.clone();
        (entry["running"] == false).then_some(entry)
    })
}

/// The native root of the remote at `prefix`, read straight from the server.
fn root_json(env: &TestEnv, prefix: &str) -> serde_json::Value {
    serde_json::from_slice(&env.server.get(&env.bucket, &format!("{prefix}/refs/native.json"))).expect("root")
}

fn root_packs(env: &TestEnv, prefix: &str) -> Vec<(String, u64)> {
    let root = root_json(env, prefix);
    root["packs"]
        .as_array()
        .expect("packs")
        .iter()
        .map(|p| (p["name"].as_str().expect("name").to_string(), p["objects"].as_u64().expect("objects")))
        .collect()
}

#[test]
fn many_pushes_leave_few_packs_and_a_fetch_still_costs_the_change() {
    let env = TestEnv::new();
    let work = project_with_native_remote(&env, "work", "compact");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let url = env.url("compact");
    let reader = env.clone_repo(&url, "reader");
    let collections = || -> u64 {
        let root = root_json(&env, "compact");
        root["gc"].as_u64().unwrap_or(0)
    };
    let mut read_at = collections();
    for push in 0..200 {
        env.commit(&work, &format!("push-{}.txt", push % 5), format!("push {push}\n"), "a small change");
        if push % 10 == 9 {
            // A rewrite: the last commit amended and force-pushed over the one pushed before.
            env.git_ok(&work, &["push", "-q", "origin", "main"]);
            env.git_ok(&work, &["commit", "-q", "--amend", "-m", "amended"]);
            env.git_ok(&work, &["push", "-q", "--force", "origin", "main"]);
        } else if push % 7 == 3 {
            // A branch pushed and deleted again.
            env.git_ok(&work, &["push", "-q", "origin", "main", "main:refs/heads/short-lived"]);
            env.git_ok(&work, &["push", "-q", "origin", ":refs/heads/short-lived"]);
        } else {
            env.git_ok(&work, &["push", "-q", "origin", "main"]);
        }
        // Compaction runs in the background after the push: once it is done, each pack holds at
        // least twice the objects of the next smaller one, so there are at most log2(objects) + 1.
        let packs = wait_for("the packs to be compacted", Duration::from_secs(60), || {
            let packs = root_packs(&env, "compact");
            let mut objects: Vec<u64> = packs.iter().map(|(_, o)| *o).collect();
            objects.sort();
            objects.windows(2).all(|w| w[1] >= 2 * w[0]).then_some(packs)
        });
        let objects: u64 = packs.iter().map(|(_, o)| o).sum();
        assert!(packs.len() as f64 <= (objects as f64).log2() + 1.0, "{packs:?}");
        if push % 10 == 5 {
            // A reader that fetches now and then downloads the change since its last fetch, not
            // the history, however the packs were merged meanwhile; a garbage collection in
            // between makes it download the one repacked history once.
            maintenance_done(&env, "compact");
            let change = pack_bytes(&env, &work, &format!("main\n^{}\n", env.rev_parse(&reader, "origin/main")));
            let before = env.fetched_bytes();
            env.git_ok(&reader, &["fetch", "-q", "origin"]);
            let fetched = env.fetched_bytes() - before;
            let collected = collections();
            if collected == read_at {
                assert!(
                    fetched <= 2 * change + (64 << 10),
                    "the fetch downloaded {fetched} bytes; the change is {change}"
                );
            }
            read_at = collected;
            assert_eq!(env.rev_parse(&reader, "origin/main"), env.rev_parse(&work, "main"));
        }
    }
    let packs = root_packs(&env, "compact");
    // `git s3 daemon status` says what the daemon last did for the remote.
    let maintained = maintenance_done(&env, "compact");
    assert_eq!(maintained["packs"].as_u64(), Some(packs.len() as u64), "{maintained}");
    let status = String::from_utf8_lossy(&env.git_s3(&["daemon", "status"]).stdout).into_owned();
    assert!(status.contains("native remote s3://test-bucket/compact:"), "{status}");

    env.git_ok(&reader, &["fsck", "--strict", "--no-progress"]);

    // Replaced packs stay for fetches in flight until doctor sweeps them after the grace period.
    let named: BTreeSet<String> = packs.iter().map(|(n, _)| n.clone()).collect();
    let stored = |env: &TestEnv| -> BTreeSet<String> {
        env.keys("compact/native/packs/")
            .iter()
            .filter_map(|k| k.strip_prefix("compact/native/packs/pack-")?.strip_suffix(".pack").map(str::to_string))
            .collect()
    };
    assert!(stored(&env).len() > named.len());
    env.git_s3_ok(&work, &["doctor", "origin", "--yes", "--upload-idle", "0"]);
    assert_eq!(stored(&env), named);
    // So are the shards of the ref table that 200 pushes replaced: only the root's are left.
    let root = root_json(&env, "compact");
    let shards: BTreeSet<String> =
        root["shards"].as_array().expect("shards").iter().filter_map(|s| s.as_str().map(str::to_string)).collect();
    let stored_shards: BTreeSet<String> = env
        .keys("compact/native/refs/")
        .iter()
        .filter_map(|k| k.strip_prefix("compact/native/refs/").map(str::to_string))
        .collect();
    assert_eq!(stored_shards, shards);
    // Within twice a fresh pack of what the refs reach, rewrites and all.
    let fresh = pack_bytes(&env, &work, "main\n");
    let stored_bytes: u64 =
        sizes(&env, "compact/native/packs/").iter().filter(|(k, _)| k.ends_with(".pack")).map(|(_, s)| s).sum();
    assert!(stored_bytes <= 2 * fresh, "the packs hold {stored_bytes} bytes; a fresh pack of main {fresh}");
    let clone = env.clone_repo(&url, "after-the-sweep");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&work, "main"));

    // The grace period is the remote's own: `git s3 gc-grace` shows it and changes it for good,
    // after which the sweep that follows every push keeps nothing.
    assert_eq!(env.git_s3_ok(&work, &["gc-grace", "origin"]).trim(), "grace period: 3600s");
    assert_eq!(env.git_s3_ok(&work, &["gc-grace", "origin", "0"]).trim(), "grace period set to 0s");
    assert_eq!(env.git_s3_ok(&work, &["gc-grace", "origin", "0"]).trim(), "grace period: 0s (already)");
    let root = root_json(&env, "compact");
    assert_eq!(root["grace_s"].as_u64(), Some(0), "{root}");
    let before = stored(&env).len();
    for push in 0..4 {
        env.commit(&work, "after.txt", format!("after {push}\n"), "a change after the grace was set");
        env.git_ok(&work, &["push", "-q", "origin", "main"]);
    }
    // Four packs pushed, the small ones merged, and what the merges replaced already gone.
    wait_for("every pack the manifest dropped to be swept", Duration::from_secs(60), || {
        let named: BTreeSet<String> = root_packs(&env, "compact").into_iter().map(|(n, _)| n).collect();
        (named.len() < before + 4 && stored(&env) == named).then_some(())
    });
    // The shared layout keeps no packs: the command says so, and how to move the remote.
    env.git_ok(&work, &["push", "-q", &env.url("compact-bundles"), "main"]);
    let refused = env.git_s3_in(&work, &["gc-grace", &env.url("compact-bundles"), "0"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("shared layout") && said.contains("git s3 migrate"), "{said}");
}

#[test]
fn a_one_ref_push_to_a_remote_of_ten_thousand_refs_writes_a_few_kib() {
    let env = TestEnv::new();
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &env.url("wide")]);
    env.git_ok(&work, &["config", "remote.origin.s3format", "native"]);
    let head = env.rev_parse(&work, "HEAD");
    let updates: String = (0..10_000).map(|i| format!("create refs/tags/build-{i:05} {head}\n")).collect();
    let mut update_ref = env.command("git");
    update_ref.args(["update-ref", "--stdin"]).current_dir(&work).stdin(Stdio::piped());
    let mut child = update_ref.spawn().expect("git update-ref");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), updates.as_bytes()).expect("feed");
    assert!(child.wait().expect("git update-ref").success());
    env.git_ok(&work, &["push", "-q", "--mirror", "origin"]);
    assert_eq!(remote_refs(&env, &work).len(), 10_001);

    let before = sizes(&env, "wide/");
    env.commit(&work, "a", "a one-line change\n", "one line");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let written = bytes_written(&env, "wide/", &before);
    assert!(written <= 256 * KIB, "a one-ref push to 10,000 refs wrote {written} bytes");
    let clone = env.clone_repo(&env.url("wide"), "clone");
    assert_eq!(env.git_ok(&clone, &["tag"]).lines().count(), 10_000);
}

#[test]
fn a_remote_the_python_tool_wrote_migrates_to_native_and_back() {
    let env = TestEnv::new();
    let url = env.url("migrating");
    let work = env.new_repo("work");
    env.commit(&work, "a", "a\n", "second");
    for branch in ["dev", "release"] {
        env.git_ok(&work, &["checkout", "-q", "-b", branch, "main"]);
        env.commit(&work, branch, format!("{branch}\n"), branch);
    }
    env.git_ok(&work, &["checkout", "-q", "main"]);
    env.git_ok(&work, &["tag", "-a", "-m", "one", "v1", "main~1"]);
    env.git_ok(&work, &["tag", "v2", "dev"]);
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.python_git_ok(&work, &["push", "-q", "origin", "main", "dev", "release", "v1", "v2"]);
    env.git_s3_ok(&work, &["protect", "origin", "release"]);
    let refs = remote_refs(&env, &work);
    assert_eq!(refs.len(), 5);
    let head = |env: &TestEnv| env.git_ok(&work, &["ls-remote", "--symref", "origin", "HEAD"]);
    let head_before = head(&env);

    // A dry run says what it would do and changes nothing.
    let keys = env.keys("migrating/");
    let plan = env.git_s3_ok(&work, &["migrate", "origin", "--to", "native", "--dry-run"]);
    assert!(plan.contains("would copy 5 ref(s)") && plan.contains("1 protected"), "{plan}");
    assert_eq!(env.keys("migrating/"), keys);

    // Into the native format: the same refs, HEAD and protection; no bundle left.
    let said = env.git_s3_ok(&work, &["migrate", "origin", "--to", "native"]);
    assert!(said.contains("now in the native format"), "{said}");
    let keys = env.keys("migrating/");
    assert!(keys.contains(&"migrating/refs/native.json".to_string()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with(".bundle") || k.ends_with("/HEAD")), "{keys:?}");
    assert!(env.git_s3_ok(&work, &["ls", "origin"]).contains("format: native"));
    assert_eq!(remote_refs(&env, &work), refs);
    assert_eq!(head(&env), head_before);
    env.git_ok(&work, &["checkout", "-q", "release"]);
    env.git_ok(&work, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let stderr = env.git_fails(&work, &["push", "--force", "origin", "release"]);
    assert!(stderr.contains("protected"), "{stderr}");
    env.git_ok(&work, &["checkout", "-q", "main"]);
    let clone = env.clone_repo(&url, "native-clone");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);

    // And back, for a Python reader: it clones what it pushed.
    env.git_s3_ok(&work, &["migrate", "origin", "--to", "bundles"]);
    assert!(
        env.keys("migrating/native/").is_empty()
            && !env.keys("migrating/").contains(&"migrating/refs/native.json".to_string())
    );
    assert!(env.git_s3_ok(&work, &["ls", "origin"]).contains("format: bundles"));
    assert_eq!(remote_refs(&env, &work), refs);
    let python_clone = env.path("python-clone");
    env.python_git_ok(&env.path(""), &["clone", "-q", &url, &python_clone.to_string_lossy()]);
    env.git_ok(&python_clone, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(
        env.rev_parse(&python_clone, "origin/release"),
        refs.iter().find(|(_, n)| n == "refs/heads/release").map(|(o, _)| o.clone()).expect("release")
    );
    let stderr = env.git_fails(&work, &["push", "--force", "origin", "release"]);
    assert!(stderr.contains("protected"), "{stderr}");
}

#[test]
fn the_python_tool_pointed_at_a_native_remote_is_noticed() {
    let env = TestEnv::new();
    let url = env.url("mixed");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["config", "remote.origin.s3format", "native"]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let main = env.rev_parse(&work, "main");

    // The Python tool cannot read the format: to it the remote is empty.
    let python = env.python_git(&env.path(""), &["ls-remote", &url]);
    assert!(String::from_utf8_lossy(&python.stdout).trim().is_empty());

    // What it pushes anyway lands beside the manifest; we keep reading the native remote, say
    // so once, and doctor names what it wrote.
    env.commit(&work, "b", "b\n", "pushed by the Python tool");
    env.python_git_ok(&work, &["push", "-q", &url, "main:refs/heads/python"]);
    assert!(env.keys("mixed/refs/heads/python/").iter().any(|k| k.ends_with(".bundle")));
    let other = env.path("other");
    std::fs::create_dir_all(&other).expect("dir");
    env.git_ok(&other, &["init", "-q"]);
    let output = env.git(&other, &["ls-remote", &url]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains(&main) && !stdout.contains("refs/heads/python"), "{stdout}");
    assert_eq!(stderr.matches("bundles of the shared layout").count(), 1, "{stderr}");
    let doctor = env.git_s3_in(&work, &["doctor", "origin", "--dry-run"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(report.contains("1 bundle(s) of the shared layout beside the native manifest"), "{report}");
}

#[test]
fn history_nobody_reaches_is_collected_and_readers_never_notice() {
    let env = TestEnv::new();
    let url = env.url("garbage");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["config", "remote.origin.s3format", "native"]);
    // No grace period: what leaves the manifest is swept by the same daemon run.
    env.git_ok(&work, &["config", "s3.gcGraceSeconds", "0"]);
    std::fs::write(work.join("old.bin"), git_s3_tests::incompressible_bytes(2 << 20, 1)).expect("write");
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "a history about to be rewritten"]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let reader = env.clone_repo(&url, "reader");

    // main rewritten from scratch: the old history is garbage once nothing reaches it.
    env.git_ok(&work, &["checkout", "-q", "--orphan", "fresh"]);
    env.git_ok(&work, &["rm", "-rfq", "."]);
    std::fs::write(work.join("new.bin"), git_s3_tests::incompressible_bytes(3 << 20, 2)).expect("write");
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "a new history"]);
    env.git_ok(&work, &["push", "-q", "--force", "origin", "fresh:main"]);
    let root = || root_json(&env, "garbage");
    wait_for("the garbage to be collected", Duration::from_secs(60), || {
        (root()["gc"].as_u64() == Some(1)).then_some(())
    });
    let kept: u64 = root()["packs"].as_array().expect("packs").iter().filter_map(|p| p["bytes"].as_u64()).sum();
    assert!(kept < (3 << 20) + (256 << 10), "the packs hold {kept} bytes for a 3 MiB history");

    // Readers never notice: one that fetched before, and a new clone.
    env.git_ok(&reader, &["fetch", "-q", "origin"]);
    assert_eq!(env.rev_parse(&reader, "origin/main"), env.rev_parse(&work, "fresh"));
    env.git_ok(&reader, &["fsck", "--strict", "--no-progress"]);
    let clone = env.clone_repo(&url, "clone");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);

    // After the grace period the bucket holds the new history once, swept with nothing to run.
    let stored = || -> u64 { sizes(&env, "garbage/native/packs/").iter().map(|(_, s)| s).sum() };
    wait_for("the old packs to be swept", Duration::from_secs(60), || {
        (stored() < (3 << 20) + (256 << 10)).then_some(())
    });
    assert!(root()["retired"].as_array().is_none_or(Vec::is_empty), "{}", root());
    let clone = env.clone_repo(&url, "after-the-sweep");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
}

#[test]
fn a_push_whose_pack_is_swept_before_its_commit_uploads_it_again() {
    use git_s3_tests::fault_proxy::{Fault, Rule};
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("slow");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["config", "remote.origin.s3format", "native"]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);

    // The push's tips take long to be acknowledged: its pack sits unnamed in the bucket while
    // doctor, with no grace period, sweeps it.
    env.commit(&work, "b", "b\n", "a slow push");
    proxy.add(Rule::new("PUT", ".tips", Fault::Delay(Duration::from_secs(15))).times(1));
    let mut push = env.command("git");
    push.args(["push", "-q", "origin", "main"]).current_dir(&work).stdout(Stdio::null()).stderr(Stdio::piped());
    let push = push.spawn().expect("spawn git push");
    let packs = || -> BTreeSet<String> {
        env.keys("slow/native/packs/").into_iter().filter(|k| k.ends_with(".pack")).collect()
    };
    let named = root_packs(&env, "slow").len();
    wait_for("the slow push's pack to be uploaded", Duration::from_secs(30), || (packs().len() > named).then_some(()));
    let doctor = env.git_s3_in(&work, &["doctor", "origin", "--yes", "--upload-idle", "0"]);
    assert!(
        String::from_utf8_lossy(&doctor.stdout).contains("deleted it"),
        "{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
    assert_eq!(packs().len(), named);
    let output = finish_within(push, Duration::from_secs(60), "the slow push");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(env.daemon_log().contains("packing again"), "the push noticed its pack was gone");
    let clone = env.clone_repo(&url, "clone");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&work, "main"));
}

#[test]
fn a_push_racing_a_branch_delete_and_a_collection_packs_again() {
    use git_s3_tests::fault_proxy::{Fault, Rule};
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("race-gc");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["config", "remote.origin.s3format", "native"]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    env.git_ok(&work, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(work.join("feature.bin"), git_s3_tests::incompressible_bytes(1 << 20, 3)).expect("write");
    env.git_ok(&work, &["add", "."]);
    env.git_ok(&work, &["commit", "-q", "-m", "a feature"]);
    env.git_ok(&work, &["push", "-q", "origin", "feature"]);
    let feature_blob = env.rev_parse(&work, "feature:feature.bin");
    maintenance_done(&env, "race-gc");

    // A colleague builds on the feature; their push packs against a remote that has it, so
    // its pack leaves the feature's objects out. It is held after the pack is uploaded...
    let colleague = env.clone_repo(&url, "colleague");
    env.git_ok(&colleague, &["checkout", "-q", "-b", "on-top", "origin/feature"]);
    env.commit(&colleague, "on-top.txt", "built on the feature\n", "on top of the feature");
    proxy.add(Rule::new("PUT", ".tips", Fault::Delay(Duration::from_secs(15))).times(1));
    let mut push = env.command("git");
    push.args(["push", "-q", "origin", "on-top"]).current_dir(&colleague).stdout(Stdio::null()).stderr(Stdio::piped());
    let push = push.spawn().expect("spawn git push");
    let packs = || env.keys("race-gc/native/packs/").into_iter().filter(|k| k.ends_with(".pack")).count();
    let stored = packs();
    wait_for("the held push's pack to be uploaded", Duration::from_secs(30), || (packs() > stored).then_some(()));

    // ...while the feature branch is deleted and the collection that delete makes due drops
    // its objects from every pack the manifest names.
    env.git_ok(&work, &["push", "-q", "origin", ":feature"]);
    let root = || root_json(&env, "race-gc");
    wait_for("the garbage to be collected", Duration::from_secs(60), || {
        (root()["gc"].as_u64() == Some(1)).then_some(())
    });

    // The held push must not name objects the collection dropped: it packs again and lands.
    let output = finish_within(push, Duration::from_secs(60), "the held push");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let clone = env.clone_repo(&url, "clone");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.rev_parse(&clone, "origin/on-top"), env.rev_parse(&colleague, "on-top"));
    assert_eq!(env.rev_parse(&clone, "origin/on-top:feature.bin"), feature_blob);
    assert!(env.daemon_log().contains("packing again"), "the push noticed the collection");
}

#[test]
fn fetches_that_outlive_a_compaction_and_its_grace_period_still_land() {
    use git_s3_tests::fault_proxy::{Fault, Rule};
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let work = project_with_native_remote(&env, "work", "outlive");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let url = env.url("outlive");
    let reader = env.clone_repo(&url, "reader");
    let stored =
        |env: &TestEnv, name: &str| env.server.size(&env.bucket, &format!("outlive/native/packs/pack-{name}.pack"));

    // Each round: a push the reader will fetch; the reader's fetch reads the root, and is held
    // while a second push makes a compaction merge the first push's pack away.
    for (round, grace) in [(0, None), (1, Some("0"))] {
        if let Some(grace) = grace {
            env.git_s3_ok(&work, &["gc-grace", "origin", grace]);
        }
        env.commit(&work, "round.txt", format!("round {round}, first push\n"), "the push the reader fetches");
        env.git_ok(&work, &["push", "-q", "origin", "main"]);
        let fetched_value = env.rev_parse(&work, "main");
        let wanted: Vec<String> = root_packs(&env, "outlive").into_iter().map(|(name, _)| name).collect();
        let newest = wanted.last().expect("a pack").clone();

        // The fetch has read the root (naming the new pack) when it asks for the new pack's tips:
        // that answer is held back.
        let held_before = proxy.faulted().len();
        proxy.add(Rule::new("GET", &format!("pack-{newest}.tips"), Fault::Delay(Duration::from_secs(12))).times(1));
        let mut fetch = env.command("git");
        fetch.args(["fetch", "-q", "origin"]).current_dir(&reader).stdout(Stdio::null()).stderr(Stdio::piped());
        let fetch = fetch.spawn().expect("spawn git fetch");
        wait_for("the fetch to be held", Duration::from_secs(30), || {
            (proxy.faulted().len() > held_before).then_some(())
        });

        env.commit(&work, "round.txt", format!("round {round}, second push\n"), "a push that makes a compaction");
        env.git_ok(&work, &["push", "-q", "origin", "main"]);
        // The compaction that push makes due merges away a pack the held root names.
        let merged_away: Vec<String> = wait_for("the compaction", Duration::from_secs(60), || {
            let named = root_packs(&env, "outlive");
            let gone: Vec<String> = wanted.iter().filter(|w| !named.iter().any(|(n, _)| n == *w)).cloned().collect();
            (!gone.is_empty()).then_some(gone)
        });
        match grace {
            // Within the grace period the merged packs are still there for the fetch.
            None => assert!(merged_away.iter().all(|name| stored(&env, name).is_some())),
            // With none, they are gone before the fetch reads them.
            Some(_) => wait_for("the merged packs to be swept", Duration::from_secs(60), || {
                merged_away.iter().all(|name| stored(&env, name).is_none()).then_some(())
            }),
        }

        let output = finish_within(fetch, Duration::from_secs(60), "the held fetch");
        assert!(output.status.success(), "round {round}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(env.rev_parse(&reader, "origin/main"), fetched_value, "round {round}");
        env.git_ok(&reader, &["fsck", "--strict", "--no-progress"]);
        proxy.clear_rules();
    }
    assert!(env.daemon_log().contains("a pack went away during the fetch"), "the last fetch read the root again");
}

#[test]
fn a_python_push_during_a_migration_is_refused_or_migrated_never_lost() {
    use git_s3_tests::fault_proxy::{Fault, Rule};
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("mig-race");
    let work = env.new_repo("work");
    env.git_ok(&work, &["checkout", "-q", "-b", "dev"]);
    env.commit(&work, "dev", "dev\n", "dev");
    env.git_ok(&work, &["checkout", "-q", "main"]);
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.python_git_ok(&work, &["push", "-q", "origin", "main", "dev"]);
    let dev_before = env.rev_parse(&work, "dev");

    // The migration is held at its commit (the native root's write)...
    proxy.add(Rule::new("PUT", "mig-race/refs/native.json", Fault::Delay(Duration::from_secs(10))).times(1));
    let mut migrate = env.command(git_s3_tests::bin_dir().join("git-s3"));
    migrate
        .args(["migrate", "origin", "--to", "native"])
        .current_dir(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let migrate = migrate.spawn().expect("spawn git s3 migrate");
    wait_for("the migration's commit to be held", Duration::from_secs(60), || {
        proxy.faulted().iter().any(|s| s.path.contains("refs/native.json")).then_some(())
    });

    // ...while the Python tool pushes: to a ref being migrated, refused by its lock; a new
    // branch, which the migration adds after its commit.
    env.git_ok(&work, &["checkout", "-q", "dev"]);
    env.commit(&work, "dev", "dev, later\n", "dev moves during the migration");
    let refused = env.python_git(&work, &["push", "origin", "dev"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    // The Python tool 0.4.2 says so in S3's words (its lock object's conditional write was refused).
    assert!(!refused.status.success() && said.contains("[remote rejected] dev"), "{said}");
    env.git_ok(&work, &["checkout", "-q", "-b", "late", "main"]);
    env.commit(&work, "late", "late\n", "a branch pushed during the migration");
    env.python_git_ok(&work, &["push", "-q", "origin", "late"]);

    let output = finish_within(migrate, Duration::from_secs(120), "the migration");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}{}", String::from_utf8_lossy(&output.stderr));
    assert!(said.contains("added 1 ref(s) pushed in the bundles format during the migration"), "{said}");
    let clone = env.clone_repo(&url, "clone");
    assert_eq!(env.rev_parse(&clone, "origin/dev"), dev_before);
    assert_eq!(env.rev_parse(&clone, "origin/late"), env.rev_parse(&work, "late"));
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    // Nothing of the shared layout is left: no bundle, no lock.
    let left: Vec<String> =
        env.keys("mig-race/refs/").into_iter().filter(|k| !k.ends_with("refs/native.json")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_push_killed_between_its_pack_and_its_commit_leaves_an_orphan_swept_after_the_grace_period() {
    use git_s3_tests::fault_proxy::{Fault, Rule};
    use rustix::process::{Pid, Signal};
    let mut env = TestEnv::new();
    let proxy = env.route_through_proxy();
    let url = env.url("orphan");
    let work = env.new_repo("work");
    env.git_ok(&work, &["remote", "add", "origin", &url]);
    env.git_ok(&work, &["config", "remote.origin.s3format", "native"]);
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    let packs = || -> BTreeSet<String> {
        env.keys("orphan/native/packs/").into_iter().filter(|k| k.ends_with(".pack")).collect()
    };
    let before = packs();

    // The push's pack is in the bucket, its commit not yet written, when its daemon is killed.
    env.commit(&work, "b", "b\n", "a push about to be killed");
    proxy.add(Rule::new("PUT", ".tips", Fault::Delay(Duration::from_secs(30))).times(1));
    let mut push = env.command("git");
    push.args(["push", "-q", "origin", "main"]).current_dir(&work).stdout(Stdio::null()).stderr(Stdio::piped());
    let push = push.spawn().expect("spawn git push");
    wait_for("the push's pack to be uploaded", Duration::from_secs(30), || {
        (packs().len() > before.len()).then_some(())
    });
    let daemon = env.daemon_status().and_then(|s| s["pid"].as_i64()).and_then(|pid| Pid::from_raw(pid as i32));
    rustix::process::kill_process(daemon.expect("the daemon's pid"), Signal::KILL).expect("kill the daemon");
    let output = finish_within(push, Duration::from_secs(60), "the killed push");
    assert!(!output.status.success(), "the push reported success without its commit");
    let orphan: Vec<String> = packs().difference(&before).cloned().collect();
    assert_eq!(orphan.len(), 1, "{orphan:?}");
    proxy.clear_rules();

    // Not sooner: doctor leaves it for the grace period; even with a grace period of 0, the
    // sweep after the next push leaves a pack this fresh (it could be a push between its upload
    // and its commit); doctor, with that grace period, deletes it.
    let report = env.git_s3_in(&work, &["doctor", "origin", "--dry-run"]);
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(report.contains("not named by the manifest") && report.contains("left alone"), "{report}");
    env.git_s3_ok(&work, &["gc-grace", "origin", "0"]);
    env.commit(&work, "c", "c\n", "the next push");
    env.git_ok(&work, &["push", "-q", "origin", "main"]);
    maintenance_done(&env, "orphan");
    assert!(packs().contains(&orphan[0]), "the sweep after a push took a fresh orphan");
    env.git_s3_ok(&work, &["doctor", "origin", "--yes"]);
    assert!(!packs().contains(&orphan[0]), "doctor deleted the orphan");
    let clone = env.clone_repo(&url, "clone");
    env.git_ok(&clone, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(env.rev_parse(&clone, "HEAD"), env.rev_parse(&work, "main"));

    // A daemon killed while it uploaded a large pack as git wrote it leaves that upload open:
    // doctor aborts it once idle.
    let incoming = "orphan/native/packs/incoming-00112233445566778899aabbccddeeff.pack";
    env.server.abandoned_upload(&env.bucket, incoming);
    let report = env.git_s3_ok(&work, &["doctor", "origin", "--yes", "--upload-idle", "0"]);
    assert!(report.contains(incoming) && report.contains("aborted it"), "{report}");
    assert_eq!(env.server.open_multipart_uploads(&env.bucket), 0);
}
