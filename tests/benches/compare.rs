//! Side by side with awslabs' Python git-remote-s3 0.4.2 (and, in the `formats` group, its fork
//! fduplex-git-remote-s3 0.6.1), on the same local S3 servers, with the release build: writes
//! bench/RESULTS.md. Run `scripts/bench.sh`. Every figure is a ratio against a baseline measured
//! in the same run; nothing here is asserted.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use git_s3_tests::project::{ProjectShape, project_repository};
use git_s3_tests::{FaultProxy, ServerKind, TestEnv, Traffic, bin_dir, incompressible_bytes, peak_rss_kib};

const MIB: u64 = 1024 * 1024;

fn runs() -> usize {
    std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5)
}

/// Writes out what earlier steps left in the page cache, so a measurement does not pay for the
/// disk writes of the one before it.
fn settle() {
    let _ = Command::new("sync").status();
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ours,
    Python,
}

/// Timings of one measurement.
#[derive(Default, Clone)]
struct Stats(Vec<Duration>);

impl Stats {
    fn median(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
    fn range(&self) -> (Duration, Duration) {
        (self.0.iter().min().copied().unwrap_or_default(), self.0.iter().max().copied().unwrap_or_default())
    }
    fn cell(&self) -> String {
        let (lo, hi) = self.range();
        format!("{} ({}–{})", ms(self.median()), ms(lo), ms(hi))
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

struct Row {
    scenario: String,
    server: &'static str,
    ours: Stats,
    baseline: Stats,
    baseline_name: &'static str,
    goal: &'static str,
    /// `ours / baseline` must be at most this for the goal to hold.
    max_ratio: Option<f64>,
    note: String,
}

impl Row {
    /// A row against the Python tool.
    fn versus_python(
        scenario: &str,
        server: &'static str,
        ours: Stats,
        python: Stats,
        goal: &'static str,
        max_ratio: Option<f64>,
    ) -> Self {
        Row {
            scenario: scenario.into(),
            server,
            ours,
            baseline: python,
            baseline_name: "Python",
            goal,
            max_ratio,
            note: String::new(),
        }
    }

    fn ratio(&self) -> f64 {
        self.ours.median().as_secs_f64() / self.baseline.median().as_secs_f64().max(1e-9)
    }
}

struct Bench {
    env: TestEnv,
    server: &'static str,
}

impl Bench {
    fn new(kind: ServerKind) -> Self {
        let mut env = TestEnv::with_server(kind);
        env.set_env("GIT_REMOTE_S3_LOG", "info");
        env.set_env("GIT_LFS_SKIP_SMUDGE", "1");
        if kind == ServerKind::S3sFs {
            // boto3's default checksum trailers are refused by s3s-fs, as the SDK's are.
            env.set_env("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required");
            env.set_env("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required");
        }
        let server = if kind == ServerKind::S3sFs { "s3s-fs" } else { "moto" };
        env.enable_lfs();
        Self { env, server }
    }

    fn command(&self, tool: Tool, program: &str) -> Command {
        match tool {
            Tool::Ours => self.env.command(program),
            Tool::Python => self.env.python_tool_command(program),
        }
    }

    fn git(&self, tool: Tool, dir: &Path, args: &[&str]) {
        let mut command = self.command(tool, "git");
        command.current_dir(dir).args(args).stdout(Stdio::null());
        let output = command.output().expect("git");
        assert!(output.status.success(), "git {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }

    fn time(&self, tool: Tool, dir: &Path, args: &[&str]) -> Duration {
        settle();
        let started = Instant::now();
        self.git(tool, dir, args);
        started.elapsed()
    }

    /// Warm-up then `runs()` measurements of each tool, alternating.
    fn compare(&self, measure: impl FnMut(Tool, usize) -> Duration) -> (Stats, Stats) {
        self.compare_n(runs(), measure)
    }

    /// Warm-up then `n` measurements of each tool, alternating.
    fn compare_n(&self, n: usize, mut measure: impl FnMut(Tool, usize) -> Duration) -> (Stats, Stats) {
        let (mut ours, mut python) = (Stats::default(), Stats::default());
        for run in 0..=n {
            let a = measure(Tool::Ours, run);
            let b = measure(Tool::Python, run);
            if run > 0 {
                ours.0.push(a);
                python.0.push(b);
            }
        }
        (ours, python)
    }

    fn stop_daemon(&self) {
        let _ = self.env.git_s3(&["daemon", "stop"]);
    }
}

/// `BENCH_ONLY=lfs` (or `small`, `shim`, `history`, `branches`, `mix`, `formats`,
/// `native-history`, `many-pushes`) runs one group, for profiling; the results file is written
/// only by a full run.
fn selected(group: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only == group)
}

/// A clone of a repository with 200 branches, each a small change off main, all pushed by us
/// (the Python tool reads the same layout). 20 MB of history, not 200: the Python tool downloads
/// every branch's whole bundle, 40 GB per clone at 200 MB.
fn many_branches(bench: &Bench, rows: &mut Vec<Row>) {
    let env = &bench.env;
    let repo = env.new_repo("branches");
    std::fs::write(repo.join("assets.dat"), incompressible_bytes(20 * MIB as usize, 9)).expect("write");
    env.git_ok(&repo, &["add", "."]);
    env.git_ok(&repo, &["commit", "-q", "-m", "history"]);
    let url = env.url("branches");
    bench.git(Tool::Ours, &repo, &["push", "-q", &url, "main"]);
    for i in 0..200 {
        env.git_ok(&repo, &["checkout", "-q", "-b", &format!("topic-{i:03}"), "main"]);
        env.commit(&repo, "topic.txt", format!("topic {i}\n"), "a topic");
    }
    env.git_ok(&repo, &["checkout", "-q", "main"]);
    bench.git(Tool::Ours, &repo, &["push", "-q", &url, "--all"]);
    let mut got: Vec<u64> = Vec::new();
    let (ours, python) = bench.compare_n(runs().min(3), |tool, run| {
        let dest = env.path(&format!("clone-branches-{run}-{}", usize::from(tool == Tool::Python)));
        let before = env.fetched_bytes();
        let took = bench.time(tool, &env.path(""), &["clone", "-q", &url, dest.to_str().unwrap()]);
        let bytes = match tool {
            Tool::Ours => env.fetched_bytes() - before,
            Tool::Python => 0,
        };
        let _ = std::fs::remove_dir_all(&dest);
        if tool == Tool::Ours {
            got.push(bytes);
        }
        took
    });
    let main = env.rev_parse(&repo, "main");
    let bundle = env.server.size(&env.bucket, &format!("branches/refs/heads/main/{main}.bundle")).unwrap_or(0);
    let mut sorted = got.get(1..).unwrap_or_default().to_vec();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    rows.push(Row {
        note: format!(
            "ours received {:.1} MiB, {:.2}× one bundle ({:.1} MiB); Python downloads all 201 bundles",
            median as f64 / MIB as f64,
            median as f64 / bundle.max(1) as f64,
            bundle as f64 / MIB as f64
        ),
        ..Row::versus_python(
            "clone of 200 branches, 20 MB history, pushed by us",
            bench.server,
            ours,
            python,
            "≤ 1/5",
            Some(0.2),
        )
    });
}

fn main() {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if selected("small") {
        for kind in [ServerKind::S3sFs, ServerKind::Moto] {
            eprintln!("bench: small-repository scenarios on {kind:?}");
            small_repository(&Bench::new(kind), &mut rows);
        }
    }
    let bench = Bench::new(ServerKind::S3sFs);
    if selected("shim") {
        eprintln!("bench: shim start-up");
        shim_start(&bench, &mut rows);
    }
    if selected("history") {
        eprintln!("bench: 200 MB history");
        large_history(&bench, &mut rows, &mut notes);
    }
    if selected("branches") {
        eprintln!("bench: a clone of 200 branches");
        many_branches(&bench, &mut rows);
    }
    if selected("lfs") {
        eprintln!("bench: LFS");
        lfs(&bench, &mut rows, &mut notes);
    }
    if selected("mix") {
        eprintln!("bench: four clients at once, shipped defaults");
        mixed_load(&Bench::new(ServerKind::S3sFs), &mut notes);
    }
    if selected("native-history") {
        eprintln!("bench: the native format on the 200 MB history");
        native_history(&Bench::new(ServerKind::S3sFs), &mut rows);
    }
    if selected("many-pushes") {
        eprintln!("bench: storage and clones after {} pushes", many_push_count());
        many_pushes(&mut rows, &mut notes);
    }
    if selected("formats") {
        eprintln!("bench: storage formats side by side on a project's history");
        formats(&mut rows, &mut notes);
    }
    if selected("many-objects") {
        eprintln!("bench: a first push of a history of a few hundred thousand objects");
        first_push_of_many_objects(&Bench::new(ServerKind::S3sFs), &mut rows);
    }
    if std::env::var("BENCH_ONLY").is_ok() {
        for row in &rows {
            eprintln!(
                "{} [{}]: ours {} vs {} {} (ratio {:.3})",
                row.scenario,
                row.server,
                row.ours.cell(),
                row.baseline_name,
                row.baseline.cell(),
                row.ratio()
            );
            if !row.note.is_empty() {
                eprintln!("  ↳ {}", row.note);
            }
        }
        for note in &notes {
            eprintln!("{note}");
        }
        return;
    }
    write_results(&rows, &notes);
}

fn small_repository(bench: &Bench, rows: &mut Vec<Row>) {
    let env = &bench.env;
    let work = env.new_repo("small");
    for (tool, prefix) in [(Tool::Ours, "small-ours"), (Tool::Python, "small-py")] {
        bench.git(tool, &work, &["push", &env.url(prefix), "main"]);
        bench.git(tool, &env.path(""), &["clone", "-q", &env.url(prefix), &format!("clone-{prefix}")]);
    }
    let url = |tool| env.url(if tool == Tool::Ours { "small-ours" } else { "small-py" });
    let root = env.path("");
    let (ours, python) = bench.compare(|tool, _| bench.time(tool, &root, &["ls-remote", &url(tool)]));
    rows.push(Row::versus_python("git ls-remote, warm daemon", bench.server, ours, python, "≤ 1/20", Some(0.05)));
    let (ours, python) = bench.compare(|tool, _| {
        if tool == Tool::Ours {
            bench.stop_daemon();
        }
        bench.time(tool, &root, &["ls-remote", &url(tool)])
    });
    rows.push(Row::versus_python(
        "git ls-remote, cold daemon (started by the command)",
        bench.server,
        ours,
        python,
        "",
        None,
    ));
    let clone = |tool| env.path(if tool == Tool::Ours { "clone-small-ours" } else { "clone-small-py" });
    let (ours, python) = bench.compare(|tool, _| bench.time(tool, &clone(tool), &["fetch", "origin"]));
    rows.push(Row::versus_python("no-op git fetch", bench.server, ours, python, "≤ 1/20", Some(0.05)));
}

/// Time from starting a helper to its answer: `capabilities` (no daemon needed) and `list`
/// (warm daemon), each against the Python helper.
fn shim_start(bench: &Bench, rows: &mut Vec<Row>) {
    let env = &bench.env;
    let work = env.new_repo("shim");
    bench.git(Tool::Ours, &work, &["push", &env.url("shim"), "main"]);
    let answer = |tool: Tool, input: &'static str| -> Duration {
        let mut command = bench.command(tool, "git-remote-s3");
        command.args(["origin", &env.url("shim")]).current_dir(&work).stdin(Stdio::piped()).stdout(Stdio::piped());
        let started = Instant::now();
        let mut child = command.spawn().expect("helper");
        {
            use std::io::Write;
            let _ = child.stdin.take().expect("stdin").write_all(input.as_bytes());
        }
        let output = child.wait_with_output().expect("helper");
        assert!(!output.stdout.is_empty());
        started.elapsed()
    };
    for (input, scenario, goal, max) in [
        ("capabilities\n\n", "helper start to first answer (capabilities)", "< 5 ms", None),
        ("list\n\n", "helper start to ref list (warm daemon)", "", None),
    ] {
        let (ours, python) = bench.compare(|tool, _| answer(tool, input));
        let note = if input.starts_with("capabilities") {
            format!("absolute goal: ours {} vs 5 ms", ms(ours.median()))
        } else {
            String::new()
        };
        rows.push(Row {
            scenario: scenario.into(),
            server: bench.server,
            ours,
            baseline: python,
            baseline_name: "Python",
            goal,
            max_ratio: max,
            note,
        });
    }
}

/// A repository with ~200 MB of history (40 commits of 5 MiB that do not compress).
fn history_repo(env: &TestEnv, name: &str) -> PathBuf {
    let repo = env.new_repo(name);
    for i in 0..40u64 {
        std::fs::write(repo.join(format!("blob{i:02}.dat")), incompressible_bytes(5 * MIB as usize, 100 + i))
            .expect("write");
        env.git_ok(&repo, &["add", "."]);
        env.git_ok(&repo, &["commit", "-q", "-m", &format!("chunk {i}")]);
    }
    repo
}

/// The daemon's memory under load, with the shipped defaults: a fresh daemon serves four
/// clients at once — one making 20 composed pushes (a one-line change each) and two making 10
/// clones each of a 200 MB history, while the fourth moves 5 GiB of LFS objects up and then down
/// (`git s3 lfs push|pull --all`). Its peak RSS (VmHWM) is the figure.
fn mixed_load(bench: &Bench, notes: &mut Vec<String>) {
    let env = &bench.env;
    let repo = history_repo(env, "mix");
    let url = env.url("mix");
    bench.git(Tool::Ours, &repo, &["push", "-q", &url, "main"]);
    let pusher = env.path("mix-pusher");
    bench.git(Tool::Ours, &env.path(""), &["clone", "-q", &url, pusher.to_str().unwrap()]);

    let lfs = env.new_repo("mix-lfs");
    env.git_ok(&lfs, &["lfs", "track", "*.bin"]);
    for i in 0..20u64 {
        std::fs::write(lfs.join(format!("big{i:02}.bin")), incompressible_bytes(256 * MIB as usize, 500 + i))
            .expect("write");
    }
    env.git_ok(&lfs, &["add", "."]);
    env.git_ok(&lfs, &["commit", "-q", "-m", "5 GiB of LFS objects"]);
    env.git_ok(&lfs, &["remote", "add", "origin", &env.url("mix-lfs")]);
    let objects = lfs.join(".git/lfs/objects");

    bench.stop_daemon();
    let started = Instant::now();
    let (pushes, clones, lfs_up, lfs_down) = std::thread::scope(|scope| {
        let pushes = scope.spawn(|| {
            let mut took = Stats::default();
            for i in 0..20 {
                env.commit(&pusher, "CHANGELOG", format!("change {i}\n"), "one-line change");
                took.0.push(bench.time(Tool::Ours, &pusher, &["push", "-q", "origin", "HEAD:refs/heads/topic"]));
            }
            took
        });
        let cloners: Vec<_> = (0..2)
            .map(|c| {
                let url = &url;
                scope.spawn(move || {
                    let mut took = Stats::default();
                    for i in 0..10 {
                        let dest = env.path(&format!("mix-clone-{c}-{i}"));
                        took.0.push(bench.time(
                            Tool::Ours,
                            &env.path(""),
                            &["clone", "-q", url, dest.to_str().unwrap()],
                        ));
                        let _ = std::fs::remove_dir_all(&dest);
                    }
                    took
                })
            })
            .collect();
        let lfs_sync = scope.spawn(|| {
            let up = bench.time(Tool::Ours, &lfs, &["s3", "lfs", "push", "--all", "origin"]);
            let aside = lfs.join(".git/lfs/objects.kept");
            std::fs::rename(&objects, &aside).expect("set objects aside");
            let down = bench.time(Tool::Ours, &lfs, &["s3", "lfs", "pull", "--all", "origin"]);
            (up, down)
        });
        let pushes = pushes.join().expect("pusher");
        let mut clones = Stats::default();
        for cloner in cloners {
            clones.0.extend(cloner.join().expect("cloner").0);
        }
        let (up, down) = lfs_sync.join().expect("LFS");
        (pushes, clones, up, down)
    });
    let elapsed = started.elapsed();
    let peak_mib = env
        .daemon_status()
        .and_then(|status| status["pid"].as_u64())
        .map_or(0.0, |pid| peak_rss_kib(pid) as f64 / 1024.0);
    let status = env.daemon_status().unwrap_or_default();
    let budget = status["transfer_requests"]["max_inflight_bytes"].as_u64().unwrap_or(0) / MIB;
    let max_requests = status["transfer_requests"]["max"].as_u64().unwrap_or(0);
    notes.push(format!(
        "Four clients at once on one fresh daemon with the shipped defaults ({max_requests} requests, {budget} MiB of bodies in memory): 20 composed pushes of a one-line change ({}), 20 clones of a 200 MB history ({}), and 5 GiB of LFS objects up ({}) and down ({}), all done in {}. Daemon peak RSS (VmHWM): {peak_mib:.0} MiB (goal < 150 MiB).",
        pushes.cell(),
        clones.cell(),
        ms(lfs_up),
        ms(lfs_down),
        ms(elapsed)
    ));
}

fn large_history(bench: &Bench, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let env = &bench.env;
    let repo = history_repo(env, "history");
    let prefix = |tool| if tool == Tool::Ours { "history-ours" } else { "history-py" };
    for tool in [Tool::Ours, Tool::Python] {
        bench.git(tool, &repo, &["push", &env.url(prefix(tool)), "main"]);
    }
    // Bytes a push sent: ours from the daemon's counter, Python's is the whole new bundle.
    let sent_by = |tool: Tool, before: u64, key: &str| match tool {
        Tool::Ours => env.pushed_bytes() - before,
        Tool::Python => env.server.size(&env.bucket, key).unwrap_or(0),
    };
    let mut sent = (Vec::new(), Vec::new());
    let record = |tool: Tool, bytes: u64, sent: &mut (Vec<u64>, Vec<u64>)| match tool {
        Tool::Ours => sent.0.push(bytes),
        Tool::Python => sent.1.push(bytes),
    };
    let (ours, python) = bench.compare(|tool, run| {
        env.commit(
            &repo,
            "CHANGELOG",
            format!("change {run} by {}\n", if tool == Tool::Ours { "ours" } else { "python" }),
            "one-line change",
        );
        let before = env.pushed_bytes();
        let took = bench.time(tool, &repo, &["push", "-f", &env.url(prefix(tool)), "HEAD:refs/heads/main"]);
        let head = env.rev_parse(&repo, "HEAD");
        let key = format!("{}/refs/heads/main/{head}.bundle", prefix(tool));
        record(tool, sent_by(tool, before, &key), &mut sent);
        took
    });
    rows.push(Row {
        note: bytes_note("bytes sent per push", &sent),
        ..Row::versus_python(
            "push of a one-line change, 200 MB history",
            bench.server,
            ours,
            python,
            "≤ 1/10, ≤ 6 MiB sent",
            Some(0.1),
        )
    });

    let mut sent = (Vec::new(), Vec::new());
    let (ours, python) = bench.compare(|tool, run| {
        let before = env.pushed_bytes();
        let branch = format!("refs/heads/topic-{run}");
        let took = bench.time(tool, &repo, &["push", &env.url(prefix(tool)), &format!("HEAD:{branch}")]);
        let head = env.rev_parse(&repo, "HEAD");
        record(tool, sent_by(tool, before, &format!("{}/{branch}/{head}.bundle", prefix(tool))), &mut sent);
        took
    });
    rows.push(Row {
        note: bytes_note("bytes sent per push", &sent),
        ..Row::versus_python("push of a new branch, 200 MB history", bench.server, ours, python, "≤ 6 MiB sent", None)
    });

    // A reader of each tool, cloned once; each run the writer pushes a one-line change with that
    // tool and the reader fetches it.
    let readers: Vec<PathBuf> = [Tool::Ours, Tool::Python]
        .into_iter()
        .map(|tool| {
            let reader = env.path(&format!("reader-{}", prefix(tool)));
            bench.git(tool, &env.path(""), &["clone", "-q", &env.url(prefix(tool)), reader.to_str().unwrap()]);
            reader
        })
        .collect();
    let mut got = (Vec::new(), Vec::new());
    let (ours, python) = bench.compare(|tool, run| {
        let by = if tool == Tool::Ours { "ours" } else { "python" };
        env.commit(&repo, "CHANGELOG", format!("fetched change {run} by {by}\n"), "one-line change");
        bench.git(tool, &repo, &["push", "-q", "-f", &env.url(prefix(tool)), "HEAD:refs/heads/main"]);
        let head = env.rev_parse(&repo, "HEAD");
        let reader = &readers[usize::from(tool == Tool::Python)];
        let before = env.fetched_bytes();
        let took = bench.time(tool, reader, &["fetch", "-q", "origin"]);
        let bytes = match tool {
            Tool::Ours => env.fetched_bytes() - before,
            Tool::Python => {
                env.server.size(&env.bucket, &format!("{}/refs/heads/main/{head}.bundle", prefix(tool))).unwrap_or(0)
            }
        };
        record(tool, bytes, &mut got);
        took
    });
    rows.push(Row {
        note: bytes_note("bytes received per fetch", &got),
        ..Row::versus_python(
            "fetch of a one-line change, 200 MB history",
            bench.server,
            ours,
            python,
            "≤ 1/10, ≤ 1 MiB received",
            Some(0.1),
        )
    });

    // A fresh clone, and for ours a daemon whose pack cache is empty: the push composes from the
    // pack the clone kept.
    let mut sent = (Vec::new(), Vec::new());
    let pack_cache = env.home().join(".cache/git-remote-s3/packs");
    let (ours, python) = bench.compare(|tool, run| {
        let clone = env.path(&format!("fresh-clone-{}-{run}", prefix(tool)));
        bench.git(tool, &env.path(""), &["clone", "-q", &env.url(prefix(tool)), clone.to_str().unwrap()]);
        env.commit(&clone, "CHANGELOG", format!("fresh clone change {run}\n"), "one-line change");
        if tool == Tool::Ours {
            bench.stop_daemon();
            let _ = std::fs::remove_dir_all(&pack_cache);
        }
        let before = env.pushed_bytes();
        let took = bench.time(tool, &clone, &["push", "-q", "origin", "main"]);
        let head = env.rev_parse(&clone, "HEAD");
        record(tool, sent_by(tool, before, &format!("{}/refs/heads/main/{head}.bundle", prefix(tool))), &mut sent);
        let _ = std::fs::remove_dir_all(&clone);
        took
    });
    rows.push(Row {
        note: bytes_note("bytes sent per push", &sent),
        ..Row::versus_python(
            "push of a one-line change from a fresh clone (ours: empty daemon cache)",
            bench.server,
            ours,
            python,
            "≤ 6 MiB sent",
            None,
        )
    });
    hundred_pushes(bench, &repo, notes);

    let (ours, python) = bench.compare(|tool, run| {
        let dest = env.path(&format!("clone-history-{}-{run}", prefix(tool)));
        let took = bench.time(tool, &env.path(""), &["clone", "-q", &env.url(prefix(tool)), dest.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&dest);
        took
    });
    rows.push(Row {
        scenario: "clone, 200 MB history".into(),
        server: bench.server,
        ours: ours.clone(),
        baseline: python,
        baseline_name: "Python",
        goal: "≤ 0.5×",
        max_ratio: Some(0.5),
        note: String::new(),
    });
    let bundle = env.path("history.bundle");
    env.git_ok(&repo, &["bundle", "create", bundle.to_str().unwrap(), "main"]);
    let mut local = Stats::default();
    for run in 0..=runs() {
        let dest = env.path(&format!("clone-local-{run}"));
        let took =
            bench.time(Tool::Ours, &env.path(""), &["clone", "-q", bundle.to_str().unwrap(), dest.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&dest);
        if run > 0 {
            local.0.push(took);
        }
    }
    let key = env
        .keys(&format!("{}/refs/heads/main/", prefix(Tool::Ours)))
        .into_iter()
        .find(|k| k.ends_with(".bundle"))
        .expect("our bundle");
    let (runtime, client) = env.server.client();
    let mut raw_get = Stats::default();
    for run in 0..=runs() {
        let started = Instant::now();
        runtime.block_on(async {
            let out = client.get_object().bucket(&env.bucket).key(&key).send().await.expect("get bundle");
            let mut body = out.body;
            while body.try_next().await.expect("read bundle").is_some() {}
        });
        if run > 0 {
            raw_get.0.push(started.elapsed());
        }
    }
    let note = format!("of which a raw GET of the bundle alone takes {}", ms(raw_get.median()));
    rows.push(Row {
        scenario: "clone, 200 MB history".into(),
        server: bench.server,
        ours,
        baseline: local,
        baseline_name: "git clone of the same bundle file",
        goal: "≤ 1.3×",
        max_ratio: Some(1.3),
        note,
    });
}

/// The native format against our shared layout on the 200 MB history: a first push to a new
/// prefix and a clone, each format on its own prefix, alternating; and the native clone against
/// a local `git clone` of the same history as one bundle file.
fn native_history(bench: &Bench, rows: &mut Vec<Row>) {
    let env = &bench.env;
    let repo = history_repo(env, "native-history");
    let (mut native_push, mut bundles_push) = (Stats::default(), Stats::default());
    for run in 0..=runs() {
        let native = env.url(&format!("native-history-n{run}"));
        let bundles = env.url(&format!("native-history-b{run}"));
        let a = bench.time(Tool::Ours, &repo, &["-c", "s3.format=native", "push", "-q", &native, "main"]);
        let b = bench.time(Tool::Ours, &repo, &["push", "-q", &bundles, "main"]);
        if run > 0 {
            native_push.0.push(a);
            bundles_push.0.push(b);
        }
    }
    rows.push(Row {
        scenario: "first push, 200 MB history: native".into(),
        server: bench.server,
        ours: native_push,
        baseline: bundles_push.clone(),
        baseline_name: "ours, bundles",
        goal: "no slower",
        max_ratio: Some(1.0),
        note: String::new(),
    });
    let (mut native_clone, mut bundles_clone) = (Stats::default(), Stats::default());
    for run in 0..=runs() {
        let clone = |prefix: &str, dest: &str| {
            let dest = env.path(dest);
            let took =
                bench.time(Tool::Ours, &env.path(""), &["clone", "-q", &env.url(prefix), dest.to_str().unwrap()]);
            let _ = std::fs::remove_dir_all(&dest);
            took
        };
        let a = clone("native-history-n0", &format!("native-clone-{run}"));
        let b = clone("native-history-b0", &format!("bundles-clone-{run}"));
        if run > 0 {
            native_clone.0.push(a);
            bundles_clone.0.push(b);
        }
    }
    rows.push(Row {
        scenario: "clone, 200 MB history: native".into(),
        server: bench.server,
        ours: native_clone.clone(),
        baseline: bundles_clone,
        baseline_name: "ours, bundles",
        goal: "no slower",
        max_ratio: Some(1.0),
        note: String::new(),
    });
    let bundle = env.path("native-history.bundle");
    env.git_ok(&repo, &["bundle", "create", "-q", bundle.to_str().unwrap(), "main"]);
    let mut local = Stats::default();
    for run in 0..=runs() {
        let dest = env.path(&format!("native-clone-local-{run}"));
        let took =
            bench.time(Tool::Ours, &env.path(""), &["clone", "-q", bundle.to_str().unwrap(), dest.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&dest);
        if run > 0 {
            local.0.push(took);
        }
    }
    rows.push(Row {
        scenario: "clone, 200 MB history: native".into(),
        server: bench.server,
        ours: native_clone,
        baseline: local,
        baseline_name: "git clone of the same bundle file",
        goal: "≤ 1.3×",
        max_ratio: Some(1.3),
        note: String::new(),
    });

    // `git s3 migrate` of the whole history, each way, against a first push of it.
    let (mut to_native, mut to_bundles) = (Stats::default(), Stats::default());
    let migrate = |to: &str| {
        settle();
        let started = Instant::now();
        let output = env.git_s3(&["migrate", &env.url("native-history-b0"), "--to", to]);
        assert!(output.status.success(), "migrate --to {to}: {}", String::from_utf8_lossy(&output.stderr));
        started.elapsed()
    };
    for _ in 0..runs().min(3) {
        to_native.0.push(migrate("native"));
        to_bundles.0.push(migrate("bundles"));
    }
    for (stats, to) in [(to_native, "native"), (to_bundles, "bundles")] {
        rows.push(Row {
            scenario: format!("git s3 migrate --to {to}, 200 MB history"),
            server: bench.server,
            ours: stats,
            baseline: bundles_push.clone(),
            baseline_name: "ours, first push (bundles)",
            goal: "",
            max_ratio: None,
            note: String::new(),
        });
    }
}

/// "ours X MiB, Python Y MiB" of the median bytes of each tool's runs (the warm-up left out).
fn bytes_note(what: &str, sent: &(Vec<u64>, Vec<u64>)) -> String {
    let median = |v: &[u64]| {
        let mut v = v.get(1..).unwrap_or_default().to_vec();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default() as f64 / MIB as f64
    };
    format!("{what}: ours {:.2} MiB, Python {:.1} MiB", median(&sent.0), median(&sent.1))
}

/// A hundred one-line pushes of ours to one ref: what they send in all, and what the bundle
/// weighs at the end against a fresh `git bundle create` of the same tip (the rewrite policy
/// writes a whole bundle after 50 appended pushes).
fn hundred_pushes(bench: &Bench, repo: &Path, notes: &mut Vec<String>) {
    let env = &bench.env;
    let url = env.url("history-hundred");
    bench.git(Tool::Ours, repo, &["push", "-q", &url, "HEAD:refs/heads/main"]);
    let before = env.pushed_bytes();
    let started = Instant::now();
    for i in 0..100 {
        env.commit(repo, "CHANGELOG", format!("hundred {i}\n"), "one-line change");
        bench.git(Tool::Ours, repo, &["push", "-q", &url, "HEAD:refs/heads/main"]);
    }
    let took = started.elapsed();
    let sent = env.pushed_bytes() - before;
    let head = env.rev_parse(repo, "HEAD");
    let size = env.server.size(&env.bucket, &format!("history-hundred/refs/heads/main/{head}.bundle")).unwrap_or(0);
    let fresh = env.path("hundred.bundle");
    env.git_ok(repo, &["bundle", "create", fresh.to_str().unwrap(), "HEAD"]);
    let fresh_size = std::fs::metadata(&fresh).map(|m| m.len()).unwrap_or(0);
    notes.push(format!(
        "100 one-line pushes to one ref (ours, {}): {:.1} MiB sent in all, {} in all ({} per push); the bundle after them is {:.1} MiB, a fresh `git bundle create` of the same tip {:.1} MiB ({:.3}×). The 51st push wrote the bundle whole (rewrite after 50 appended pushes).",
        bench.server,
        sent as f64 / MIB as f64,
        ms(took),
        ms(took / 100),
        size as f64 / MIB as f64,
        fresh_size as f64 / MIB as f64,
        size as f64 / fresh_size.max(1) as f64
    ));
}

/// 4 × 256 MiB + 1,000 × 64 KiB through git-lfs, up and down, against the raw SDK.
fn lfs(bench: &Bench, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let env = &bench.env;
    let repo = env.new_repo("lfs");
    env.git_ok(&repo, &["lfs", "track", "*.bin"]);
    for i in 0..4u64 {
        std::fs::write(repo.join(format!("large{i}.bin")), incompressible_bytes(256 * MIB as usize, 200 + i))
            .expect("write");
    }
    std::fs::create_dir_all(repo.join("small")).expect("dir");
    for i in 0..1000u64 {
        std::fs::write(repo.join(format!("small/s{i:04}.bin")), incompressible_bytes(64 * 1024, 1000 + i))
            .expect("write");
    }
    env.git_ok(&repo, &["add", "."]);
    env.git_ok(&repo, &["commit", "-q", "-m", "lfs data"]);
    env.git_ok(&repo, &["config", "lfs.customtransfer.git-lfs-s3.path", "git-lfs-s3"]);
    env.git_ok(&repo, &["config", "lfs.standalonetransferagent", "git-lfs-s3"]);
    env.git_ok(&repo, &["config", "lfs.concurrenttransfers", "8"]);
    env.git_ok(&repo, &["remote", "add", "origin", &env.url("lfs-none")]);
    let objects = repo.join(".git/lfs/objects");
    let files = lfs_files(&objects);
    let total_bytes: u64 = files.iter().map(|(_, size)| size).sum();
    let data_dir = env.server.data_dir.clone();
    let forget = |prefix: &str| {
        if let Some(data) = &data_dir {
            let _ = std::fs::remove_dir_all(data.join(&env.bucket).join(prefix));
        }
    };
    let name = |tool: Tool, run: usize| format!("lfs-{}-{run}", if tool == Tool::Ours { "ours" } else { "py" });
    let mut downloads = (Stats::default(), Stats::default());
    let (up_ours, up_python) = bench.compare(|tool, run| {
        let prefix = name(tool, run);
        bench.git(tool, &repo, &["remote", "set-url", "origin", &env.url(&prefix)]);
        let up = bench.time(tool, &repo, &["lfs", "push", "--all", "origin"]);
        // Down again into an empty object store.
        let aside = repo.join(".git/lfs/objects.kept");
        std::fs::rename(&objects, &aside).expect("set objects aside");
        let down = bench.time(tool, &repo, &["lfs", "fetch", "--all", "origin"]);
        let _ = std::fs::remove_dir_all(&objects);
        std::fs::rename(&aside, &objects).expect("restore objects");
        if run > 0 {
            if tool == Tool::Ours { downloads.0.0.push(down) } else { downloads.1.0.push(down) }
        }
        forget(&prefix);
        up
    });
    // The same data in bulk, without git-lfs in the way (`git s3 lfs push|pull --all`), and
    // straight through the SDK, alternating run by run so both see the same machine.
    let (mut bulk_up, mut bulk_down) = (Stats::default(), Stats::default());
    let (mut raw_up, mut raw_down) = (Stats::default(), Stats::default());
    for run in 0..=runs() {
        let prefix = format!("lfs-bulk-{run}");
        bench.git(Tool::Ours, &repo, &["remote", "set-url", "origin", &env.url(&prefix)]);
        let up = bench.time(Tool::Ours, &repo, &["s3", "lfs", "push", "--all", "origin"]);
        let aside = repo.join(".git/lfs/objects.kept");
        std::fs::rename(&objects, &aside).expect("set objects aside");
        let down = bench.time(Tool::Ours, &repo, &["s3", "lfs", "pull", "--all", "origin"]);
        let _ = std::fs::remove_dir_all(&objects);
        std::fs::rename(&aside, &objects).expect("restore objects");
        forget(&prefix);
        let raw_prefix = format!("raw-{run}");
        let (raw_took_up, raw_took_down) = raw_sdk(bench, &files, &raw_prefix);
        forget(&raw_prefix);
        if run > 0 {
            bulk_up.0.push(up);
            bulk_down.0.push(down);
            raw_up.0.push(raw_took_up);
            raw_down.0.push(raw_took_down);
        }
    }
    let (floor_up, floor_down) = git_lfs_floor(bench, &repo, &objects);
    let mb = total_bytes as f64 / 1e6;
    let rate = |s: &Stats| format!("{:.0} MB/s", mb / s.median().as_secs_f64());
    let note = |ours: &Stats, python: &Stats| format!("throughput: ours {}, Python {}", rate(ours), rate(python));
    rows.push(Row {
        scenario: format!("LFS upload, 4 × 256 MiB + 1,000 × 64 KiB ({mb:.0} MB)"),
        server: bench.server,
        ours: up_ours.clone(),
        baseline: up_python.clone(),
        baseline_name: "Python",
        goal: "≥ 3× throughput",
        max_ratio: Some(1.0 / 3.0),
        note: note(&up_ours, &up_python),
    });
    rows.push(Row {
        scenario: "LFS upload, same data".into(),
        server: bench.server,
        ours: up_ours.clone(),
        baseline: raw_up.clone(),
        baseline_name: "raw aws-sdk-s3 (the limit)",
        goal: "≥ 90% of raw",
        max_ratio: Some(1.0 / 0.9),
        note: format!("raw {}", rate(&raw_up)),
    });
    rows.push(Row {
        scenario: "LFS download, same data".into(),
        server: bench.server,
        ours: downloads.0.clone(),
        baseline: downloads.1.clone(),
        baseline_name: "Python",
        goal: "≥ 3× throughput",
        max_ratio: Some(1.0 / 3.0),
        note: note(&downloads.0, &downloads.1),
    });
    rows.push(Row {
        scenario: "LFS download, same data".into(),
        server: bench.server,
        ours: downloads.0.clone(),
        baseline: raw_down.clone(),
        baseline_name: "raw aws-sdk-s3 (the limit)",
        goal: "≥ 90% of raw",
        max_ratio: Some(1.0 / 0.9),
        note: format!("raw {}", rate(&raw_down)),
    });
    for (direction, command, bulk, python, raw) in [
        ("upload", "git s3 lfs push --all", &bulk_up, &up_python, &raw_up),
        ("download", "git s3 lfs pull --all", &bulk_down, &downloads.1, &raw_down),
    ] {
        rows.push(Row {
            scenario: format!("LFS bulk {direction} (`{command}`), same data"),
            server: bench.server,
            ours: bulk.clone(),
            baseline: python.clone(),
            baseline_name: "Python agent driven by git-lfs",
            goal: "≥ 3× throughput",
            max_ratio: Some(1.0 / 3.0),
            note: note(bulk, python),
        });
        rows.push(Row {
            scenario: format!("LFS bulk {direction} (`{command}`), same data"),
            server: bench.server,
            ours: bulk.clone(),
            baseline: raw.clone(),
            baseline_name: "raw aws-sdk-s3 (the limit)",
            goal: "≥ 90% of raw",
            max_ratio: Some(1.0 / 0.9),
            note: format!("ours {}, raw {}", rate(bulk), rate(raw)),
        });
    }

    let floor = |direction: &str, ours: &Stats, floor: &Stats| Row {
        scenario: format!("LFS {direction}, same data"),
        server: "none",
        ours: ours.clone(),
        baseline: floor.clone(),
        baseline_name: "git-lfs with a no-op agent (git-lfs's own cost)",
        goal: "",
        max_ratio: None,
        note: String::new(),
    };
    rows.push(floor("upload", &up_ours, &floor_up));
    rows.push(floor("download", &downloads.0, &floor_down));
    notes.push(format!(
        "git-lfs's own cost: with an agent that does nothing (upload) or copies from a local folder (download), `git lfs push --all` takes {} and `git lfs fetch --all` {} for this data. The raw SDK rows have no git-lfs in them, so an agent can at best reach raw + git-lfs's own cost.",
        ms(floor_up.median()),
        ms(floor_down.median())
    ));
    let moved = total_bytes * 2 * (runs() as u64 + 1);
    if let Some(status) = env.daemon_status() {
        let pid = status["pid"].as_u64().unwrap_or(0);
        let peak_kib = peak_rss_kib(pid);
        notes.push(format!(
            "Daemon peak RSS (VmHWM) after moving {:.1} GiB of LFS data through it: {:.0} MiB (goal < 150 MiB).",
            moved as f64 / (1024.0 * 1024.0 * 1024.0),
            peak_kib as f64 / 1024.0
        ));
    }
}

/// git-lfs driving an agent that moves nothing: uploads complete at once, downloads are copies
/// from a local folder. What git-lfs itself costs for this data.
fn git_lfs_floor(bench: &Bench, repo: &Path, objects: &Path) -> (Stats, Stats) {
    let env = &bench.env;
    let store = env.path("lfs-store");
    let agent = env.path("noop-agent.py");
    std::fs::write(
        &agent,
        "import json, os, shutil, sys\n\
         store, out = sys.argv[1], sys.argv[2]\n\
         for line in sys.stdin:\n\
         \x20   e = json.loads(line)\n\
         \x20   if e['event'] == 'init': print('{}', flush=True)\n\
         \x20   elif e['event'] == 'terminate': break\n\
         \x20   elif e['event'] == 'upload': print(json.dumps({'event': 'complete', 'oid': e['oid']}), flush=True)\n\
         \x20   else:\n\
         \x20       oid = e['oid']; dst = os.path.join(out, oid)\n\
         \x20       shutil.copyfile(os.path.join(store, oid[:2], oid[2:4], oid), dst)\n\
         \x20       print(json.dumps({'event': 'complete', 'oid': oid, 'path': dst}), flush=True)\n",
    )
    .expect("agent");
    let scratch = env.path("noop-out");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let args = format!("{} {} {}", agent.display(), store.display(), scratch.display());
    env.git_ok(repo, &["config", "lfs.customtransfer.git-lfs-s3.path", "python3"]);
    env.git_ok(repo, &["config", "lfs.customtransfer.git-lfs-s3.args", &args]);
    let (mut up, mut down) = (Stats::default(), Stats::default());
    for run in 0..=runs() {
        let took_up = bench.time(Tool::Ours, repo, &["lfs", "push", "--all", "origin"]);
        std::fs::rename(objects, &store).expect("set objects aside");
        let took_down = bench.time(Tool::Ours, repo, &["lfs", "fetch", "--all", "origin"]);
        let _ = std::fs::remove_dir_all(objects);
        std::fs::rename(&store, objects).expect("restore objects");
        if run > 0 {
            up.0.push(took_up);
            down.0.push(took_down);
        }
    }
    env.git_ok(repo, &["config", "lfs.customtransfer.git-lfs-s3.path", "git-lfs-s3"]);
    env.git_ok(repo, &["config", "--unset", "lfs.customtransfer.git-lfs-s3.args"]);
    (up, down)
}

/// `(path, size)` of every object in an LFS object store.
fn lfs_files(objects: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![objects.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() { stack.push(path) } else { out.push((path, meta.len())) }
        }
    }
    out
}

/// The same objects straight through aws-sdk-s3 to `prefix` and back: 16 requests in flight,
/// 8 MiB parts and ranges. Returns how long the way up and the way down took.
fn raw_sdk(bench: &Bench, files: &[(PathBuf, u64)], prefix: &str) -> (Duration, Duration) {
    use aws_sdk_s3::primitives::{ByteStream, Length};
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let env = &bench.env;
    let (runtime, client) = env.server.client();
    let bucket = env.bucket.clone();
    let part = 8 * MIB;
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    settle();
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (path, size) in files.iter().cloned() {
            let (client, bucket, limit) = (client.clone(), bucket.clone(), limit.clone());
            let key = format!("{prefix}/{}", path.file_name().unwrap().to_string_lossy());
            tasks.spawn(async move {
                if size <= 2 * part {
                    let _permit = limit.acquire().await.expect("permit");
                    let body = ByteStream::from_path(&path).await.expect("body");
                    client.put_object().bucket(&bucket).key(&key).body(body).send().await.expect("put");
                    return;
                }
                let id = client
                    .create_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .send()
                    .await
                    .expect("create")
                    .upload_id()
                    .unwrap()
                    .to_string();
                let mut parts = tokio::task::JoinSet::new();
                for (n, offset) in (0..size).step_by(part as usize).enumerate() {
                    let (client, bucket, key, id, path, limit) =
                        (client.clone(), bucket.clone(), key.clone(), id.clone(), path.clone(), limit.clone());
                    parts.spawn(async move {
                        let _permit = limit.acquire().await.expect("permit");
                        let len = part.min(size - offset);
                        let body = ByteStream::read_from()
                            .path(&path)
                            .offset(offset)
                            .length(Length::Exact(len))
                            .build()
                            .await
                            .expect("body");
                        let out = client
                            .upload_part()
                            .bucket(&bucket)
                            .key(&key)
                            .upload_id(&id)
                            .part_number(n as i32 + 1)
                            .body(body)
                            .send()
                            .await
                            .expect("part");
                        CompletedPart::builder()
                            .part_number(n as i32 + 1)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .build()
                    });
                }
                let mut done: Vec<CompletedPart> = parts.join_all().await;
                done.sort_by_key(|p| p.part_number());
                client
                    .complete_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
                    .send()
                    .await
                    .expect("complete");
            });
        }
        tasks.join_all().await;
    });
    let took_up = started.elapsed();
    let scratch = env.path(&format!("{prefix}-down"));
    std::fs::create_dir_all(&scratch).expect("scratch");
    settle();
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (path, size) in files.iter().cloned() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let target = scratch.join(&name);
            std::fs::File::create(&target).expect("file").set_len(size).expect("size");
            for offset in (0..size.max(1)).step_by(part as usize) {
                let (client, bucket, limit, target) = (client.clone(), bucket.clone(), limit.clone(), target.clone());
                let key = format!("{prefix}/{name}");
                tasks.spawn(async move {
                    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
                    let _permit = limit.acquire().await.expect("permit");
                    let len = part.min(size - offset);
                    let out = client
                        .get_object()
                        .bucket(&bucket)
                        .key(&key)
                        .range(format!("bytes={offset}-{}", offset + len - 1))
                        .send()
                        .await
                        .expect("get");
                    let mut file = tokio::fs::OpenOptions::new().write(true).open(&target).await.expect("open");
                    file.seek(std::io::SeekFrom::Start(offset)).await.expect("seek");
                    let mut body = out.body;
                    while let Some(chunk) = body.try_next().await.expect("chunk") {
                        file.write_all(&chunk).await.expect("write");
                    }
                });
            }
        }
        tasks.join_all().await;
    });
    let took_down = started.elapsed();
    let _ = std::fs::remove_dir_all(&scratch);
    (took_up, took_down)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_string))
        .unwrap_or_default();
    let version = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "- CPU: {cpu}, {} cores\n- {memory}\n- kernel {}\n- {}; {}; {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        version("uname", "-r"),
        version("git", "--version"),
        version("git-lfs", "version"),
        version("rustc", "--version"),
    )
}

fn binary_sizes() -> String {
    let mut out = String::from("| binary | stripped release size |\n|---|---|\n");
    for name in ["git-remote-s3", "git-lfs-s3", "git-s3", "git-s3d"] {
        let size = std::fs::metadata(bin_dir().join(name)).map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(out, "| {name} | {:.1} MiB |", size as f64 / MIB as f64);
    }
    out
}

fn write_results(rows: &[Row], notes: &[String]) {
    let mut md = String::from("# Benchmarks: git-remote-s3 (Rust) side by side with awslabs' git-remote-s3 0.4.2\n\n");
    let _ = writeln!(
        md,
        "Written by `scripts/bench.sh` (`cargo bench -p git-s3-tests --bench compare`). Release build; each row: a warm-up, then {} runs of each tool, alternating; median (min–max). Ratio = ours / baseline (lower is better; for throughput goals the time ratio is shown).\n",
        runs()
    );
    let _ = writeln!(md, "## Machine\n\n{}\n", machine());
    md.push_str("## Results\n\n| scenario | server | ours | baseline | baseline is | ratio | goal | met |\n|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let met = match row.max_ratio {
            Some(max) if row.ratio() <= max => "yes",
            Some(_) => "**no**",
            None => "",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.3} | {} | {met} |",
            row.scenario,
            row.server,
            row.ours.cell(),
            row.baseline.cell(),
            row.baseline_name,
            row.ratio(),
            row.goal
        );
        if !row.note.is_empty() {
            let _ = writeln!(md, "| ↳ {} | | | | | | | |", row.note);
        }
    }
    let _ = writeln!(md, "\n## Binaries\n\n{}", binary_sizes());
    if !notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        for note in notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    // The maintained explanation of the figures (profiling, missed goals) follows them.
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench");
    if let Ok(analysis) = std::fs::read_to_string(bench_dir.join("analysis.md")) {
        md.push('\n');
        md.push_str(&analysis);
    }
    let path = bench_dir.join("RESULTS.md");
    std::fs::create_dir_all(path.parent().expect("bench dir")).expect("bench dir");
    std::fs::write(&path, md).expect("write results");
    eprintln!("bench: wrote {}", path.display());
}

/// The four ways of keeping a repository in S3 that the `formats` group puts side by side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// awslabs' git-remote-s3 0.4.2: a bundle per ref.
    Python,
    /// Its fork fduplex-git-remote-s3 0.6.1: packs and a `gitwal.json` manifest.
    Fork,
    /// Ours in the layout shared with the Python tool.
    Bundles,
    /// Ours in the native format: packs, ref shards and a root (daemon/src/store/native).
    Native,
}

impl Format {
    const ALL: [Format; 4] = [Format::Python, Format::Fork, Format::Bundles, Format::Native];

    fn name(self) -> &'static str {
        match self {
            Format::Python => "Python 0.4.2",
            Format::Fork => "fork fduplex 0.6.1",
            Format::Bundles => "ours, bundles",
            Format::Native => "ours, native",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Format::Python => "py",
            Format::Fork => "fork",
            Format::Bundles => "bundles",
            Format::Native => "native",
        }
    }

    /// Whether its mirror push and clone take minutes on a project (a bundle or pack per ref).
    fn is_slow(self) -> bool {
        matches!(self, Format::Python | Format::Fork)
    }
}

/// Runs of the slow tools' mirror push and clone: `BENCH_SLOW_RUNS`, else at most 2.
fn slow_runs() -> usize {
    std::env::var("BENCH_SLOW_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(runs().min(2)).max(1)
}

/// The project the `formats` group pushes: `BENCH_PROJECT=small` for a quick check of the
/// group itself, else a real project's shape.
fn project_shape() -> ProjectShape {
    match std::env::var("BENCH_PROJECT").as_deref() {
        Ok("small") => ProjectShape::SMALL,
        _ => ProjectShape::PROJECT,
    }
}

/// One timed command and what crossed the proxy for it.
#[derive(Clone, Copy)]
struct Sample {
    took: Duration,
    traffic: Traffic,
}

/// The samples of one scenario, per format (indexed by `Format as usize`).
#[derive(Default)]
struct Samples([Vec<Sample>; 4]);

impl Samples {
    fn of(&self, format: Format) -> &[Sample] {
        &self.0[format as usize]
    }
    fn push(&mut self, format: Format, sample: Sample) {
        self.0[format as usize].push(sample);
    }
    fn stats(&self, format: Format) -> Stats {
        Stats(self.of(format).iter().map(|s| s.took).collect())
    }
    /// Median bytes (up, down) of a format's samples.
    fn bytes(&self, format: Format) -> (u64, u64) {
        let samples = self.of(format);
        (
            median_u64(samples.iter().map(|s| s.traffic.up_bytes)),
            median_u64(samples.iter().map(|s| s.traffic.down_bytes)),
        )
    }
    fn requests(&self, format: Format) -> u64 {
        median_u64(self.of(format).iter().map(|s| s.traffic.requests))
    }
}

fn median_u64(values: impl Iterator<Item = u64>) -> u64 {
    let mut v: Vec<u64> = values.collect();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if b < MIB as f64 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / MIB as f64)
    }
}

/// Whether a goal on bytes is met, in the words of the results' notes.
fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

impl Bench {
    fn format_command(&self, format: Format, program: &str) -> Command {
        match format {
            Format::Python => self.env.python_tool_command(program),
            Format::Fork => self.env.fduplex_tool_command(program),
            Format::Bundles | Format::Native => self.env.command(program),
        }
    }

    /// Times git with `format`'s tool and counts what crossed `proxy` for it, background work
    /// the command left behind included (counted until the proxy has been idle for a while).
    fn measure(&self, proxy: &FaultProxy, format: Format, dir: &Path, args: &[&str]) -> Sample {
        settle();
        proxy.reset_traffic();
        let mut command = self.format_command(format, "git");
        command.current_dir(dir).args(args).stdout(Stdio::null());
        let started = Instant::now();
        let output = command.output().expect("git");
        let took = started.elapsed();
        assert!(
            output.status.success(),
            "{}: git {}: {}\n--- daemon log ---\n{}",
            format.name(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            git_s3_tests::tail(&self.env.daemon_log(), 30)
        );
        let mut traffic = proxy.traffic();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = proxy.traffic();
            if now == traffic && proxy.answers_in_progress() == 0 && proxy.data_requests_in_flight() == 0 {
                return Sample { took, traffic };
            }
            traffic = now;
        }
    }

    /// The sum of the sizes of the objects under `prefix/`.
    fn bytes_held(&self, prefix: &str) -> u64 {
        self.bytes_and_keys_held(prefix).0
    }

    /// The bytes and the number of objects under `prefix/`.
    fn bytes_and_keys_held(&self, prefix: &str) -> (u64, u64) {
        self.env.server.bytes_and_keys_held(&self.env.bucket, &format!("{prefix}/"))
    }
}

/// The storage formats side by side on a project's history, all on one s3s-fs behind a counting
/// proxy: awslabs' Python tool, its fork (packs + a manifest), ours in the shared bundle layout
/// and ours in the native format. Each makes a mirror push to its own new prefix, a clone, a
/// one-line push, a fetch of it and an `ls-remote`; the figures are time and the body bytes each
/// way (uploads, downloads, listings, manifests and indexes included).
fn formats(rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let mut bench = Bench::new(ServerKind::S3sFs);
    let proxy = bench.env.route_through_proxy();
    let env = &bench.env;
    let shape = project_shape();
    let project = project_repository(env, "formats-project", shape);
    let project_name = format!(
        "project history ({} commits, {} branches, {} tags)",
        env.git_ok(&project, &["rev-list", "--all", "--count"]).trim(),
        shape.branches + shape.long_branches,
        shape.tags + shape.branch_tags
    );
    // git fast-import stores every blob whole (217 MB for the project's shape); a real project's
    // repository has been through git gc (7 MB).
    env.git_ok(&project, &["repack", "-a", "-d", "-f", "-q"]);
    let bundle = env.path("formats-all.bundle");
    env.git_ok(&project, &["bundle", "create", bundle.to_str().unwrap(), "--all"]);
    let bundle_bytes = std::fs::metadata(&bundle).map(|m| m.len()).expect("bundle size");
    let refs = env.git_ok(&project, &["for-each-ref"]).lines().count();
    // A working copy per tool, so that one tool's settings and records never help another.
    let sources = Format::ALL.map(|format| {
        let source = env.path(&format!("formats-src-{}", format.slug()));
        let copied = Command::new("cp").arg("-a").arg(&project).arg(&source).status().expect("cp");
        assert!(copied.success(), "copying the project");
        if format == Format::Native {
            env.git_ok(&source, &["config", "s3.format", "native"]);
        }
        source
    });
    let root = env.path("");
    // Our daemon is up before a mirror push, as it is for a user's second command (it exits
    // after 10 idle minutes, shorter than the Python tools' turns).
    let wake_daemon = || {
        let _ = env.git(&root, &["ls-remote", &env.url("formats-warm-up")]);
    };

    let cycles = Format::ALL.map(|format| if format.is_slow() { slow_runs() } else { runs() });
    let (mut mirror, mut clone) = (Samples::default(), Samples::default());
    let mut held: [Vec<u64>; 4] = Default::default();
    let mut readers: [Option<(PathBuf, String)>; 4] = Default::default();
    for cycle in 0..cycles.iter().copied().max().unwrap_or(0) {
        for format in Format::ALL {
            let f = format as usize;
            if cycle >= cycles[f] {
                continue;
            }
            let prefix = format!("formats-{}-{cycle}", format.slug());
            let url = env.url(&prefix);
            eprintln!("bench: formats: {} mirror push and clone, run {}/{}", format.name(), cycle + 1, cycles[f]);
            if !format.is_slow() {
                wake_daemon();
            }
            mirror.push(format, bench.measure(&proxy, format, &sources[f], &["push", "-q", "--mirror", &url]));
            held[f].push(bench.bytes_held(&prefix));
            let dest = env.path(&format!("formats-clone-{}-{cycle}", format.slug()));
            clone.push(format, bench.measure(&proxy, format, &root, &["clone", "-q", &url, dest.to_str().unwrap()]));
            // The last clone stays, to fetch the one-line pushes.
            if let Some((old, _)) = readers[f].replace((dest, url)) {
                let _ = std::fs::remove_dir_all(old);
            }
        }
    }

    // Each tool's clone of what the other pushed (the last mirror of each).
    let last_url = |format: Format| env.url(&format!("formats-{}-{}", format.slug(), cycles[format as usize] - 1));
    let mut cross = Samples::default();
    for (reader, writer) in [(Format::Bundles, Format::Python), (Format::Python, Format::Bundles)] {
        eprintln!("bench: formats: {} clones what {} pushed", reader.name(), writer.name());
        let dest = env.path(&format!("formats-cross-{}", reader.slug()));
        let args = ["clone", "-q", "--mirror", &last_url(writer), dest.to_str().unwrap()];
        cross.push(reader, bench.measure(&proxy, reader, &root, &args));
        let _ = std::fs::remove_dir_all(&dest);
    }

    let (mut push, mut fetch, mut list) = (Samples::default(), Samples::default(), Samples::default());
    for run in 0..=runs() {
        for format in Format::ALL {
            let f = format as usize;
            let (reader, url) = readers[f].as_ref().expect("a clone of each format");
            let changelog: String = (0..=run).map(|i| format!("change {i}\n")).collect();
            env.commit(&sources[f], "CHANGELOG", changelog, "one-line change");
            let pushed = bench.measure(&proxy, format, &sources[f], &["push", "-q", url, "main"]);
            let fetched = bench.measure(&proxy, format, reader, &["fetch", "-q", "origin"]);
            assert_eq!(
                env.rev_parse(reader, "refs/remotes/origin/main"),
                env.rev_parse(&sources[f], "main"),
                "{}: the fetch brought the pushed change",
                format.name()
            );
            let listed = bench.measure(&proxy, format, &root, &["ls-remote", url]);
            if run > 0 {
                push.push(format, pushed);
                fetch.push(format, fetched);
                list.push(format, listed);
            }
        }
    }

    let server = bench.server;
    let row = |scenario: String, samples: &Samples, format: Format, baseline: Format, goal, max_ratio, note| Row {
        scenario,
        server,
        ours: samples.stats(format),
        baseline: samples.stats(baseline),
        baseline_name: baseline.name(),
        goal,
        max_ratio,
        note,
    };
    let traffic = |samples: &Samples, format: Format| {
        let (up, down) = samples.bytes(format);
        format!("{}: {} up, {} down, {} requests", format.name(), size(up), size(down), samples.requests(format))
    };
    let traffic_note = |samples: &Samples, format: Format| {
        format!("{}; {}", traffic(samples, format), traffic(samples, Format::Python))
    };
    let ratio_to_bundle = |bytes: u64| bytes as f64 / bundle_bytes.max(1) as f64;
    for format in [Format::Fork, Format::Bundles, Format::Native] {
        let mut note = traffic_note(&mirror, format);
        let _ = write!(
            note,
            "; the bucket then holds {} (Python's {}); one bundle of all refs is {}",
            size(median_u64(held[format as usize].iter().copied())),
            size(median_u64(held[Format::Python as usize].iter().copied())),
            size(bundle_bytes)
        );
        let (goal, max) = if format == Format::Native {
            let up = mirror.bytes(format).0;
            let _ = write!(
                note,
                "; up = {:.2}× the bundle, goal ≤ 1.2×: {}",
                ratio_to_bundle(up),
                met(ratio_to_bundle(up) <= 1.2)
            );
            ("≤ 1/10, up ≤ 1.2× one bundle", Some(0.1))
        } else {
            ("", None)
        };
        rows.push(row(
            format!("mirror push, {project_name}: {}", format.name()),
            &mirror,
            format,
            Format::Python,
            goal,
            max,
            note,
        ));
    }
    for format in [Format::Fork, Format::Bundles, Format::Native] {
        let mut note = traffic_note(&clone, format);
        let (goal, max) = if format == Format::Native || format == Format::Bundles {
            let down = clone.bytes(format).1;
            let bound = if format == Format::Native { 1.2 } else { 1.5 };
            let _ = write!(
                note,
                "; down = {:.2}× one bundle of all refs ({}), goal ≤ {bound}×: {}",
                ratio_to_bundle(down),
                size(bundle_bytes),
                met(ratio_to_bundle(down) <= bound)
            );
            let goal = if format == Format::Native {
                "≤ 1/5, down ≤ 1.2× one bundle"
            } else {
                "≤ 1/5, down ≤ 1.5× one bundle"
            };
            (goal, Some(0.2))
        } else {
            ("", None)
        };
        rows.push(row(
            format!("clone, {project_name}: {}", format.name()),
            &clone,
            format,
            Format::Python,
            goal,
            max,
            note,
        ));
    }
    let python_clone_down = clone.bytes(Format::Python).1;
    let ours_of_theirs = cross.bytes(Format::Bundles).1;
    rows.push(Row {
        scenario: format!("clone of what the Python tool pushed, {project_name}: {}", Format::Bundles.name()),
        server,
        ours: cross.stats(Format::Bundles),
        baseline: clone.stats(Format::Python),
        baseline_name: "Python's clone of its own",
        goal: "down ≤ 1/3 of Python's",
        max_ratio: None,
        note: format!(
            "{}; down = {:.3}× what the Python tool's clone of its own push downloads ({}): {}",
            traffic(&cross, Format::Bundles),
            ours_of_theirs as f64 / python_clone_down.max(1) as f64,
            size(python_clone_down),
            met(ours_of_theirs * 3 <= python_clone_down)
        ),
    });
    let theirs_of_ours = cross.bytes(Format::Python).1;
    let (ours_held, theirs_held) = (
        median_u64(held[Format::Bundles as usize].iter().copied()),
        median_u64(held[Format::Python as usize].iter().copied()),
    );
    rows.push(Row {
        scenario: format!("the Python tool's clone of what we pushed, {project_name}"),
        server,
        ours: cross.stats(Format::Python),
        baseline: clone.stats(Format::Python),
        baseline_name: "Python's clone of its own",
        goal: "down and storage within k = 1.05× Python's own",
        max_ratio: None,
        note: format!(
            "{}; down = {:.3}× the Python tool's clone of its own push, storage {:.3}× its own push ({} against {}): {}",
            traffic(&cross, Format::Python),
            theirs_of_ours as f64 / python_clone_down.max(1) as f64,
            ours_held as f64 / theirs_held.max(1) as f64,
            size(ours_held),
            size(theirs_held),
            met(theirs_of_ours as f64 <= python_clone_down as f64 * 1.05 && ours_held as f64 <= theirs_held as f64 * 1.05)
        ),
    });
    const SMALL_BYTES: u64 = 64 * 1024;
    for format in [Format::Fork, Format::Bundles, Format::Native] {
        let mut note = traffic_note(&push, format);
        if format == Format::Native {
            let up = push.bytes(format).0;
            let _ = write!(note, "; goal up ≤ 64 KiB: {}", met(up <= SMALL_BYTES));
        }
        rows.push(row(
            format!("push of a one-line change to main, same project: {}", format.name()),
            &push,
            format,
            Format::Python,
            "",
            None,
            note,
        ));
    }
    rows.push(row(
        format!("push of a one-line change to main, same project: {}", Format::Native.name()),
        &push,
        Format::Native,
        Format::Fork,
        "no slower, ≤ 64 KiB up",
        Some(1.0),
        format!("{}; {}", traffic(&push, Format::Native), traffic(&push, Format::Fork)),
    ));
    for format in [Format::Fork, Format::Bundles, Format::Native] {
        let mut note = traffic_note(&fetch, format);
        let goal = if format == Format::Native {
            let down = fetch.bytes(format).1;
            let _ = write!(note, "; goal down ≤ 64 KiB: {}", met(down <= SMALL_BYTES));
            "≤ 64 KiB down"
        } else {
            ""
        };
        rows.push(row(
            format!("fetch of that change in a clone: {}", format.name()),
            &fetch,
            format,
            Format::Python,
            goal,
            None,
            note,
        ));
    }
    for format in [Format::Fork, Format::Bundles, Format::Native] {
        let note = traffic_note(&list, format);
        rows.push(row(
            format!("git ls-remote, {refs} refs: {}", format.name()),
            &list,
            format,
            Format::Python,
            "",
            None,
            note,
        ));
    }
    rows.push(row(
        format!("git ls-remote, {refs} refs: {}", Format::Native.name()),
        &list,
        Format::Native,
        Format::Bundles,
        "no slower",
        Some(1.0),
        format!("{}; {}", traffic(&list, Format::Native), traffic(&list, Format::Bundles)),
    ));

    let mut summary = format!(
        "Storage formats on a generated {project_name}, {refs} refs, repacked as git gc would, all on one s3s-fs behind a counting proxy that every tool reaches by AWS_ENDPOINT_URL (boto3 honours it too); bytes = request and answer bodies through it, listings, manifests and indexes included; times include the proxy's store-and-forward. Each tool pushes with `git push --mirror` to a new prefix. Mirror push and clone: runs: {} of the Python tool and the fork, {} of ours, no warm-up (our daemon started before each); the one-line push, its fetch and `ls-remote`: a warm-up, then {} runs. Median bytes per run, up/down:",
        slow_runs(),
        runs(),
        runs()
    );
    for format in Format::ALL {
        let pair = |samples: &Samples| {
            let (up, down) = samples.bytes(format);
            format!("{}/{}", size(up), size(down))
        };
        let _ = write!(
            summary,
            " {}: mirror push {}, bucket {}, clone {}, one-line push {}, fetch {}, ls-remote {};",
            format.name(),
            pair(&mirror),
            size(median_u64(held[format as usize].iter().copied())),
            pair(&clone),
            pair(&push),
            pair(&fetch),
            pair(&list)
        );
    }
    let _ = write!(summary, " one bundle of all refs (`git bundle create --all`): {}.", size(bundle_bytes));
    notes.push(summary);
    let kept = std::env::temp_dir().join("git-s3-bench-formats-daemon.log");
    if std::fs::write(&kept, env.daemon_log()).is_ok() {
        eprintln!("bench: formats: the daemon's log is kept in {}", kept.display());
    }
}

/// A first push of one branch whose history holds a few hundred thousand objects (80,000
/// commits of one small file each, in 32 directories: a commit, two trees and a blob each), ours
/// and the Python tool's alternating, each to a new prefix: our push must not be slower for the
/// object ids its pack cache lists.
fn first_push_of_many_objects(bench: &Bench, rows: &mut Vec<Row>) {
    use std::io::Write as _;
    let env = &bench.env;
    let work = env.path("many-objects");
    std::fs::create_dir_all(&work).expect("repository dir");
    env.git_ok(&work, &["init", "-q", "-b", "main"]);
    let mut stream = Vec::new();
    for i in 1..=80_000usize {
        let text = format!("line {i}\n");
        let _ = write!(
            stream,
            "commit refs/heads/main\nmark :{i}\ncommitter Dev <dev@example.com> {} +0000\ndata 8\nchange\n\n",
            1_600_000_000 + i
        );
        if i > 1 {
            let _ = writeln!(stream, "from :{}", i - 1);
        }
        let _ = write!(stream, "M 100644 inline dir-{}/file-{}.txt\ndata {}\n{text}\n", i % 32, i % 97, text.len());
    }
    let mut import = env.command("git");
    import.args(["fast-import", "--quiet"]).current_dir(&work).stdin(Stdio::piped());
    let mut child = import.spawn().expect("spawn git fast-import");
    child.stdin.take().expect("stdin").write_all(stream.as_slice()).expect("feed git fast-import");
    assert!(child.wait().expect("git fast-import").success(), "git fast-import failed");
    env.git_ok(&work, &["repack", "-a", "-d", "-q"]);
    let objects = env
        .git_ok(&work, &["count-objects", "-v"])
        .lines()
        .find_map(|line| line.strip_prefix("in-pack: ").map(str::to_string))
        .unwrap_or_default();
    let (ours, python) = bench.compare(|tool, run| {
        let prefix = format!("many-objects-{}-{run}", if tool == Tool::Ours { "ours" } else { "python" });
        bench.time(tool, &work, &["push", "-q", &env.url(&prefix), "main"])
    });
    rows.push(Row::versus_python(
        &format!("first push of one branch, a history of {objects} objects"),
        bench.server,
        ours,
        python,
        "no slower",
        Some(1.0),
    ));
}

/// Pushes in the `many-pushes` group: `BENCH_PUSHES`, else 1,000.
fn many_push_count() -> usize {
    std::env::var("BENCH_PUSHES").ok().and_then(|n| n.parse().ok()).unwrap_or(1000)
}

/// A remote after many pushes: the fork, ours in the shared layout and ours native, each on its
/// own prefix of one s3s-fs behind the counting proxy, from copies of one project (main only).
/// Each makes the same pushes: a one-line change to main each time; every 50th amended and
/// force-pushed, every 100th with a topic branch pushed, deleted by the next. Then what the
/// bucket holds, against a fresh `git gc` pack of main, and clones (time, bytes down).
fn many_pushes(rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let mut bench = Bench::new(ServerKind::S3sFs);
    let proxy = bench.env.route_through_proxy();
    let env = &bench.env;
    let count = many_push_count();
    let shape =
        ProjectShape { commits: 300, branches: 0, long_branches: 0, tags: 0, branch_tags: 0, bytes_per_commit: 3400 };
    let project = project_repository(env, "many-project", shape);
    env.git_ok(&project, &["repack", "-a", "-d", "-f", "-q"]);
    let root = env.path("");
    let formats = [Format::Fork, Format::Bundles, Format::Native];
    let mut clones = Samples::default();
    let mut held = Vec::new();
    let mut fresh = 0;
    for format in formats {
        let source = env.path(&format!("many-src-{}", format.slug()));
        let copied = Command::new("cp").arg("-a").arg(&project).arg(&source).status().expect("cp");
        assert!(copied.success(), "copying the project");
        if format == Format::Native {
            env.git_ok(&source, &["config", "s3.format", "native"]);
        }
        let prefix = format!("many-{}", format.slug());
        let url = env.url(&prefix);
        // A push that fails is tried once more (the fork fails now and then: "unknown error");
        // such retries are counted in the results.
        let retried = std::cell::Cell::new(0usize);
        let push = |args: &[&str]| {
            let run =
                || bench.format_command(format, "git").current_dir(&source).args(args).output().expect("git push");
            let mut output = run();
            if !output.status.success() {
                retried.set(retried.get() + 1);
                output = run();
            }
            assert!(output.status.success(), "{}: git {}: {}", format.name(), args.join(" "), {
                String::from_utf8_lossy(&output.stderr)
            });
        };
        eprintln!("bench: many pushes: {} pushes with {}", count, format.name());
        push(&["push", "-q", &url, "main"]);
        let started = Instant::now();
        for i in 0..count {
            env.commit(&source, "CHANGELOG", format!("{}change {i}\n", "-".repeat(i % 7)), "one-line change");
            if i % 50 == 49 {
                push(&["push", "-q", &url, "main"]);
                env.git_ok(&source, &["commit", "-q", "--amend", "-m", "amended"]);
                push(&["push", "-q", "--force", &url, "main"]);
            } else if i % 100 == 0 {
                push(&["push", "-q", &url, "main", "main:refs/heads/topic"]);
            } else if i % 100 == 1 {
                push(&["push", "-q", &url, "main", ":refs/heads/topic"]);
            } else {
                push(&["push", "-q", &url, "main"]);
            }
        }
        let pushing = started.elapsed();
        // Background work (compaction, collection, sweeps) ends before the bucket is read.
        bench.measure(&proxy, format, &root, &["ls-remote", &url]);
        let (bytes, keys) = bench.bytes_and_keys_held(&prefix);
        held.push((format, bytes, keys, pushing, retried.get()));
        fresh = {
            let mut pack = env.command("git");
            pack.args(["pack-objects", "--revs", "--stdout", "-q"])
                .current_dir(&source)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            let mut child = pack.spawn().expect("git pack-objects");
            std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"main\n").expect("feed");
            child.wait_with_output().expect("git pack-objects").stdout.len() as u64
        };
        for run in 0..=runs().min(3) {
            let dest = env.path(&format!("many-clone-{}-{run}", format.slug()));
            let sample = bench.measure(&proxy, format, &root, &["clone", "-q", &url, dest.to_str().unwrap()]);
            let _ = std::fs::remove_dir_all(&dest);
            if run > 0 {
                clones.push(format, sample);
            }
        }
    }
    let server = bench.server;
    let describe = |format: Format| {
        let (_, bytes, keys, pushing, retried) = held.iter().find(|(f, ..)| *f == format).copied().expect("measured");
        let retried = if retried > 0 {
            format!(" ({retried} failed once and went through when tried again)")
        } else {
            String::new()
        };
        format!(
            "{}: the bucket holds {} in {keys} objects ({:.1}× a fresh pack of main, {}), {} pushes took {:.0} s{retried}, a clone downloads {}",
            format.name(),
            size(bytes),
            bytes as f64 / fresh.max(1) as f64,
            size(fresh),
            count,
            pushing.as_secs_f64(),
            size(clones.bytes(format).1)
        )
    };
    for baseline in [Format::Fork, Format::Bundles] {
        rows.push(Row {
            scenario: format!("clone after {count} pushes: ours, native"),
            server,
            ours: clones.stats(Format::Native),
            baseline: clones.stats(baseline),
            baseline_name: baseline.name(),
            goal: "",
            max_ratio: None,
            note: format!("{}; {}", describe(Format::Native), describe(baseline)),
        });
    }
    notes.push(format!(
        "After {count} pushes (one-line changes to main of a {}-commit project; every 50th amended and forced, every 100th with a topic branch pushed and then deleted), same s3s-fs behind the counting proxy, background work finished: {}.",
        shape.commits,
        formats.map(describe).join("; ")
    ));
}
