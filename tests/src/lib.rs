//! Test support: a user's world in a box. `TestEnv` starts a local S3 server (moto or s3s-fs)
//! on a free loopback port, gives the test its own bucket, HOME and daemon socket, runs the real
//! `git` with the freshly built shims first on PATH, and stops everything it started when dropped,
//! also when the test fails.

pub mod fault_proxy;
pub mod history;
pub mod project;
pub mod s3_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use fault_proxy::{Fault, FaultProxy, Rule, Traffic};
pub use s3_server::{S3Server, ServerKind};

/// Where the workspace's binaries are built.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let workspace =
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf();
        // `cargo test` builds only this crate's dependencies, not the other members' binaries.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // Benchmarks (built without debug assertions) measure release binaries.
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "git-s3-shim", "-p", "git-s3d", "--bins"]).current_dir(&workspace);
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace.join("target"));
        target.join(profile)
    })
}

/// The project's `.tools` folder, where scripts/install-test-deps.sh puts the servers.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools")
}

/// The TMPDIR for processes of the test whose scratch space is `root`.
pub fn temp_dir_in(root: &Path) -> PathBuf {
    root.join("tmpdir")
}

/// Polls `check` until it yields a value or `limit` passes.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct TestEnv {
    pub server: S3Server,
    pub bucket: String,
    root: tempfile::TempDir,
    /// The user's runtime dir; short, so the socket path fits in sockaddr_un.
    socket_dir: tempfile::TempDir,
    /// Variables added (`Some`) or removed (`None`) for every command.
    extra_env: Vec<(String, Option<String>)>,
}

impl TestEnv {
    /// A world with moto, the AWS-faithful server.
    pub fn new() -> Self {
        Self::with_server(ServerKind::Moto)
    }

    pub fn with_server(kind: ServerKind) -> Self {
        let root = tempfile::Builder::new().prefix("git-s3-test-").tempdir().expect("temp dir");
        std::fs::create_dir_all(temp_dir_in(root.path())).expect("the test's temp dir");
        let server = S3Server::start(kind, root.path());
        let bucket = "test-bucket".to_string();
        server.create_bucket(&bucket);
        let socket_dir = tempfile::Builder::new().prefix("gs3").tempdir_in("/tmp").expect("socket dir");
        let env = Self { server, bucket, root, socket_dir, extra_env: Vec::new() };
        std::fs::create_dir_all(env.home()).expect("home");
        std::fs::create_dir_all(env.state_dir()).expect("state dir");
        let mut gitconfig = String::from(
            "[user]\n\tname = Test User\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n[protocol \"s3\"]\n\tallow = always\n",
        );
        if kind == ServerKind::S3sFs {
            gitconfig.push_str("[s3]\n\tchecksums = when-required\n");
        }
        std::fs::write(env.home().join(".gitconfig"), gitconfig).expect("gitconfig");
        env
    }

    /// Turns on git-lfs for this user, as `git lfs install` does.
    pub fn enable_lfs(&self) {
        self.git_ok(&self.path(""), &["lfs", "install", "--skip-repo"]);
    }

    /// Adds a variable to every command this environment runs.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_string(), Some(value.to_string())));
    }

    /// Sends the daemon's S3 traffic through a fault-injecting proxy in front of the server.
    pub fn route_through_proxy(&mut self) -> FaultProxy {
        let proxy = FaultProxy::start(&self.server.endpoint);
        self.set_env("AWS_ENDPOINT_URL_S3", &proxy.endpoint);
        self.set_env("AWS_ENDPOINT_URL", &proxy.endpoint);
        proxy
    }

    /// Removes a variable this environment would otherwise set.
    pub fn unset_env(&mut self, key: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_string(), None));
    }

    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// Where the daemon puts its socket by default, under the user's runtime dir.
    pub fn socket(&self) -> PathBuf {
        self.socket_dir.path().join("git-remote-s3/daemon.sock")
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("daemon.log")).unwrap_or_default()
    }

    /// A path in the test's scratch space.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// A command with a clean, private environment: only what a user of this world has.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
        command
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.home().join(".config"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LANG", "C")
            // git, the shims, the daemon they start and the Python tool all make temporary
            // files; the system's temp dir outlives the test.
            .env("TMPDIR", temp_dir_in(self.root.path()))
            .env("XDG_RUNTIME_DIR", self.socket_dir.path())
            .env("GIT_REMOTE_S3_STATE_DIR", self.state_dir())
            // Everything at debug (the AWS SDK too) but the HTTP/2 frames.
            .env("GIT_REMOTE_S3_LOG", "debug,h2=info,tower=info,hyper_util=info")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_S3", &self.server.endpoint)
            .env("AWS_ENDPOINT_URL", &self.server.endpoint)
            .env("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY)
            .stdin(Stdio::null());
        for (key, value) in &self.extra_env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command
    }

    /// Like `command`, but the Python git-remote-s3's programs (`git-remote-s3`, `git-lfs-s3`,
    /// `git-s3`) are found before ours, as for a user who installed that tool.
    pub fn python_tool_command(&self, program: &str) -> Command {
        self.command_with_venv_first("python-git-remote-s3", program)
    }

    /// Like `python_tool_command`, for the fork fduplex-git-remote-s3 0.6.1 (packs and a
    /// `gitwal.json` manifest), whose package installs the same program names.
    pub fn fduplex_tool_command(&self, program: &str) -> Command {
        self.command_with_venv_first("fduplex-git-remote-s3", program)
    }

    /// `command` with the programs of the venv `.tools/<venv>` first on PATH.
    fn command_with_venv_first(&self, venv: &str, program: &str) -> Command {
        let venv_bin = tools_dir().join(venv).join("bin");
        let path =
            format!("{}:{}:{}", venv_bin.display(), bin_dir().display(), std::env::var("PATH").unwrap_or_default());
        let mut command = self.command(program);
        command.env("PATH", path);
        command
    }

    pub fn run(&self, mut command: Command) -> Output {
        command.output().expect("spawn")
    }

    pub fn git(&self, dir: &Path, args: &[&str]) -> Output {
        let mut command = self.command("git");
        command.current_dir(dir).args(args);
        self.run(command)
    }

    /// Runs git and returns its stdout; fails the test with git's stderr otherwise.
    pub fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        let output = self.git(dir, args);
        assert!(
            output.status.success(),
            "git {} failed:\n{}\n--- daemon log ---\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            tail(&self.daemon_log(), 30)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs git expecting failure; returns its stderr.
    pub fn git_fails(&self, dir: &Path, args: &[&str]) -> String {
        let output = self.git(dir, args);
        assert!(
            !output.status.success(),
            "git {} should have failed but printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// git, finding the Python tool's git-remote-s3 before ours.
    pub fn python_git(&self, dir: &Path, args: &[&str]) -> Output {
        let mut command = self.python_tool_command("git");
        command.current_dir(dir).args(args);
        self.run(command)
    }

    /// Like `git_ok`, with the Python tool's git-remote-s3.
    pub fn python_git_ok(&self, dir: &Path, args: &[&str]) -> String {
        let output = self.python_git(dir, args);
        assert!(
            output.status.success(),
            "python git-remote-s3: git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Bytes the daemon's pushes have sent to S3 so far (0 when it is not running).
    pub fn pushed_bytes(&self) -> u64 {
        self.daemon_status().and_then(|s| s["transferred"]["pushed_bytes"].as_u64()).unwrap_or(0)
    }

    /// Bytes the daemon's fetches have received from S3 so far (0 when it is not running).
    pub fn fetched_bytes(&self) -> u64 {
        self.daemon_status().and_then(|s| s["transferred"]["fetched_bytes"].as_u64()).unwrap_or(0)
    }

    /// `git s3 …` with this world's environment.
    pub fn git_s3(&self, args: &[&str]) -> Output {
        let mut command = self.command(bin_dir().join("git-s3"));
        command.args(args).current_dir(self.root.path());
        self.run(command)
    }

    /// `git s3 …` run in `dir`.
    pub fn git_s3_in(&self, dir: &Path, args: &[&str]) -> Output {
        let mut command = self.command(bin_dir().join("git-s3"));
        command.args(args).current_dir(dir);
        self.run(command)
    }

    /// `git s3 …` run in `dir`; returns its stdout, failing the test on an error.
    pub fn git_s3_ok(&self, dir: &Path, args: &[&str]) -> String {
        let output = self.git_s3_in(dir, args);
        assert!(
            output.status.success(),
            "git s3 {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A clone that has pointers, not content (as CI jobs make them before pulling in bulk),
    /// made with more `git clone` options (e.g. `--bare`).
    pub fn clone_without_lfs_content(&self, url: &str, name: &str, options: &[&str]) -> PathBuf {
        let clone = self.path(name);
        let mut command = self.command("git");
        command
            .env("GIT_LFS_SKIP_SMUDGE", "1")
            .args(["clone", "-q"])
            .args(options)
            .arg(url)
            .arg(&clone)
            .current_dir(self.path(""));
        let output = self.run(command);
        assert!(output.status.success(), "clone: {}", String::from_utf8_lossy(&output.stderr));
        clone
    }

    /// The daemon's `status --json`, or `None` when it is not running.
    pub fn daemon_status(&self) -> Option<serde_json::Value> {
        let output = self.git_s3(&["daemon", "status", "--json"]);
        if output.status.code() == Some(3) {
            return None;
        }
        assert!(output.status.success(), "git s3 daemon status failed: {}", String::from_utf8_lossy(&output.stderr));
        Some(serde_json::from_slice(&output.stdout).expect("status --json is JSON"))
    }

    /// A repository tracking `*.bin` with git-lfs, holding `files`, its remote `origin` set to
    /// `url` with our agent.
    pub fn lfs_repo(&self, name: &str, url: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
        self.enable_lfs();
        let repo = self.new_repo(name);
        self.git_ok(&repo, &["lfs", "track", "*.bin"]);
        for (file, content) in files {
            std::fs::write(repo.join(file), content).expect("write an LFS file");
        }
        self.git_ok(&repo, &["add", "."]);
        self.git_ok(&repo, &["commit", "-q", "-m", "large files"]);
        self.git_ok(&repo, &["remote", "add", "origin", url]);
        self.lfs_agent(&repo, &["install", "--remote", "origin"]);
        repo
    }

    /// Runs our `git-lfs-s3` in `dir`; returns its stdout, failing the test on an error.
    pub fn lfs_agent(&self, dir: &Path, args: &[&str]) -> String {
        let mut command = self.command(bin_dir().join("git-lfs-s3"));
        command.args(args).current_dir(dir);
        let output = self.run(command);
        assert!(output.status.success(), "git-lfs-s3 {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A new repository with one commit of `file`.
    pub fn new_repo(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).expect("repo dir");
        self.git_ok(&dir, &["init", "-q"]);
        self.commit(&dir, "README", format!("{name}\n"), "first commit");
        dir
    }

    /// Writes `file` and commits it; returns the new commit id.
    pub fn commit(&self, repo: &Path, file: &str, content: impl AsRef<[u8]>, message: &str) -> String {
        let path = repo.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("dirs");
        }
        std::fs::write(&path, content).expect("write file");
        self.git_ok(repo, &["add", file]);
        self.git_ok(repo, &["commit", "-q", "-m", message]);
        self.rev_parse(repo, "HEAD")
    }

    pub fn rev_parse(&self, repo: &Path, rev: &str) -> String {
        self.git_ok(repo, &["rev-parse", rev]).trim().to_string()
    }

    /// `git clone -q url` into the scratch folder `name`; returns the clone's path.
    pub fn clone_repo(&self, url: &str, name: &str) -> PathBuf {
        let clone = self.path(name);
        self.git_ok(&self.path(""), &["clone", "-q", url, &clone.to_string_lossy()]);
        clone
    }

    /// Our `git-remote-s3` for `url`, run in `dir` as git would, every stream piped.
    pub fn spawn_remote_helper(&self, dir: &Path, url: &str) -> std::process::Child {
        let mut helper = self.command(bin_dir().join("git-remote-s3"));
        helper
            .args(["origin", url])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        helper.spawn().expect("spawn git-remote-s3")
    }

    /// Keys of the bundles `refname` has under `prefix`.
    pub fn bundle_keys(&self, prefix: &str, refname: &str) -> Vec<String> {
        self.keys(&format!("{prefix}/{refname}/")).into_iter().filter(|k| k.ends_with(".bundle")).collect()
    }

    /// `(oid, ref)` pairs of `git ls-remote`.
    pub fn ls_remote(&self, dir: &Path, remote: &str) -> Vec<(String, String)> {
        self.git_ok(dir, &["ls-remote", remote])
            .lines()
            .filter_map(|l| l.split_once('\t').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect()
    }

    /// Every key in the bucket under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.server.keys(&self.bucket, prefix)
    }

    fn stop_daemon(&self) {
        let Some(status) = (if self.socket().exists() { self.daemon_status() } else { None }) else {
            return;
        };
        let pid = status["pid"].as_i64().unwrap_or(0) as i32;
        let _ = self.git_s3(&["daemon", "stop"]);
        let Some(pid) = rustix::process::Pid::from_raw(pid) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while rustix::process::test_kill_process(pid).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

/// Waits for a child that was spawned with piped output; kills it and fails the test if it
/// has not finished within `limit` (nothing a test starts may hang CI).
pub fn finish_within(child: std::process::Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for a child"),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            panic!("{what} did not finish within {limit:?}");
        }
    }
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in proc status")
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SHA-256 of `bytes` in hex: a git-lfs object id.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` bytes that do not compress, the same for the same seed.
pub fn incompressible_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}
