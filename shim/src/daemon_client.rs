//! Reaches the daemon: connects to its socket, starts it when nobody answers, and restarts it
//! when it is of another version. Written once, used by every client binary.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use git_s3_proto::daemon_client::DaemonClient;
use git_s3_proto::endpoint::{DRAIN_LIMIT, Endpoint, EndpointError};
use git_s3_proto::{BUILD_VERSION, PROTOCOL_VERSION, StatusReply, StatusRequest, StopRequest};
use rustix::fs::{FlockOperation, flock};
use tonic::transport::Channel;

/// Where to find the daemon binary when it is not beside this one.
pub const DAEMON_BIN_ENV: &str = "GIT_REMOTE_S3_DAEMON";
const DAEMON_BIN: &str = "git-s3d";
/// How long a started (or stopping) daemon may take before we give up with an error.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_PERIOD: Duration = Duration::from_millis(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of what a daemon wrote before exiting at start is read back, and how many of its
/// last lines are told: its reason comes last.
const START_OUTPUT_MAX_BYTES: u64 = 64 * 1024;
const START_OUTPUT_LINES: usize = 3;

pub type Client = DaemonClient<Channel>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("git-s3d is not running (socket {0})")]
    NotRunning(PathBuf),
    #[error("cannot start git-s3d ({path}): {source}; install it beside this program or set {DAEMON_BIN_ENV}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("git-s3d did not become ready within {}s; see its log at {log}", START_TIMEOUT.as_secs())]
    StartTimeout { log: PathBuf },
    #[error("git-s3d exited as it started ({status}): {}; see its log at {}", said_or_nothing(.said), .log.display())]
    ExitedAtStart { status: ExitStatus, said: String, log: PathBuf },
    #[error(
        "git-s3d at {socket} is version {found} and did not stop for the upgrade to {BUILD_VERSION}; stop it with 'git s3 daemon stop'"
    )]
    StaleDaemon { socket: PathBuf, found: String },
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the stopping git-s3d did not exit within {}s; see its log at {log}", (DRAIN_LIMIT + START_TIMEOUT).as_secs())]
    StillDraining { log: PathBuf },
    #[error("git-s3d refused the connection: {0}")]
    Refused(String),
}

/// Connects to the running daemon, starting or upgrading it as needed.
pub async fn connect_or_start(endpoint: &Endpoint) -> Result<Client, ConnectError> {
    if let Some(client) = connect_current(endpoint).await? {
        return Ok(client);
    }
    endpoint.ensure_socket_dir()?;
    // One starter at a time; whoever waited finds the daemon the first one started.
    let _start_lock = lock_file(&endpoint.start_lock_file()).await?;
    if let Some(client) = connect_current(endpoint).await? {
        return Ok(client);
    }
    wait_until_gone(endpoint).await?;
    let mut started = spawn_daemon(endpoint)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(client) = connect_current(endpoint).await? {
            return Ok(client);
        }
        if let Some(failure) = started.exit_failure() {
            return Err(failure);
        }
        if Instant::now() > deadline {
            return Err(ConnectError::StartTimeout { log: endpoint.log_file() });
        }
        tokio::time::sleep(POLL_PERIOD).await;
    }
}

/// Connects without starting anything (for `status` and `stop`).
pub async fn connect_existing(endpoint: &Endpoint) -> Result<Client, ConnectError> {
    connect(&endpoint.socket).await.ok_or_else(|| ConnectError::NotRunning(endpoint.socket.clone()))
}

/// A client of a daemon of our own version, `None` when none answers. A daemon of another
/// version is asked to stop, and we wait for it to go.
async fn connect_current(endpoint: &Endpoint) -> Result<Option<Client>, ConnectError> {
    let Some(mut client) = connect(&endpoint.socket).await else {
        return Ok(None);
    };
    let status = match client.status(StatusRequest {}).await {
        Ok(reply) => reply.into_inner(),
        // Nobody answered: a daemon killed a moment ago can still hold its socket while its
        // threads exit, so the connection is taken and then dropped (a transport error).
        Err(status) if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => return Ok(None),
        Err(status) => return Err(ConnectError::Refused(status.message().to_string())),
    };
    if is_current(&status) {
        return Ok(Some(client));
    }
    let _ = client.stop(StopRequest {}).await;
    drop(client);
    let deadline = Instant::now() + START_TIMEOUT;
    while connect(&endpoint.socket).await.is_some() {
        if Instant::now() > deadline {
            return Err(ConnectError::StaleDaemon { socket: endpoint.socket.clone(), found: status.version });
        }
        tokio::time::sleep(POLL_PERIOD).await;
    }
    Ok(None)
}

/// Waits while a daemon that no longer answers is still finishing its work (a stop drains
/// pushes and fetches in flight): a new one could not start before it exits.
pub async fn wait_until_gone(endpoint: &Endpoint) -> Result<(), ConnectError> {
    let started = Instant::now();
    let mut told = false;
    while endpoint.daemon_alive() {
        if started.elapsed() > DRAIN_LIMIT + START_TIMEOUT {
            return Err(ConnectError::StillDraining { log: endpoint.log_file() });
        }
        if !told && started.elapsed() > Duration::from_secs(1) {
            eprintln!("git-s3d: waiting for the stopping daemon to finish the work in flight");
            told = true;
        }
        tokio::time::sleep(POLL_PERIOD).await;
    }
    Ok(())
}

fn is_current(status: &StatusReply) -> bool {
    status.version == BUILD_VERSION && status.protocol == PROTOCOL_VERSION
}

async fn connect(socket: &Path) -> Option<Client> {
    if !socket.exists() {
        return None;
    }
    let endpoint = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
        .ok()?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint.connect().await.ok()?;
    Some(DaemonClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

/// A daemon this client spawned, watched until it answers: one that exits first is reported at
/// once, in its own words, instead of after the start deadline.
struct StartedDaemon {
    child: Child,
    log: PathBuf,
    /// Where this start's output begins in the log, which earlier daemons appended to.
    log_offset: u64,
}

impl StartedDaemon {
    /// The error to report when the daemon has exited unsuccessfully. One that exits with
    /// success found another daemon already serving the socket, which the caller will reach.
    fn exit_failure(&mut self) -> Option<ConnectError> {
        let status = self.child.try_wait().ok().flatten().filter(|status| !status.success())?;
        Some(ConnectError::ExitedAtStart { status, said: self.last_words(), log: self.log.clone() })
    }

    /// The last lines the daemon wrote to its log since it was spawned.
    fn last_words(&self) -> String {
        let output = read_after(&self.log, self.log_offset).unwrap_or_default();
        let lines: Vec<&str> = output.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
        lines[lines.len().saturating_sub(START_OUTPUT_LINES)..].join("; ")
    }
}

/// What `path` holds after `offset`: its last `START_OUTPUT_MAX_BYTES` at most.
fn read_after(path: &Path, offset: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let end = file.metadata()?.len();
    file.seek(SeekFrom::Start(offset.max(end.saturating_sub(START_OUTPUT_MAX_BYTES))))?;
    let mut bytes = Vec::new();
    file.take(START_OUTPUT_MAX_BYTES).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn said_or_nothing(said: &str) -> &str {
    if said.is_empty() { "it wrote nothing" } else { said }
}

/// Starts the daemon detached, its output going to its log file. Its environment is ours minus
/// AWS settings: those travel with each request, never kept by the daemon for everyone.
fn spawn_daemon(endpoint: &Endpoint) -> Result<StartedDaemon, ConnectError> {
    let program = daemon_program();
    git_s3_proto::endpoint::ensure_private_dir(&endpoint.state_dir)?;
    let log_path = endpoint.log_file();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| ConnectError::Io { path: log_path.clone(), source })?;
    let log_offset = log.metadata().map_err(|source| ConnectError::Io { path: log_path.clone(), source })?.len();
    let log_err = log.try_clone().map_err(|source| ConnectError::Io { path: log_path.clone(), source })?;
    let mut command = Command::new(&program);
    command
        .arg("--detach")
        .arg("--socket")
        .arg(&endpoint.socket)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .env(git_s3_proto::endpoint::STATE_DIR_ENV, &endpoint.state_dir)
        .env(git_s3_proto::endpoint::CACHE_DIR_ENV, &endpoint.cache_dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    let child = command.spawn().map_err(|source| ConnectError::Spawn { path: program, source })?;
    Ok(StartedDaemon { child, log: log_path, log_offset })
}

fn daemon_program() -> PathBuf {
    if let Some(path) = std::env::var_os(DAEMON_BIN_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(DAEMON_BIN)))
        .filter(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(DAEMON_BIN))
}

/// Waits (bounded) for an exclusive lock on `path`; released when the file is dropped.
async fn lock_file(path: &Path) -> Result<File, ConnectError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| ConnectError::Io { path: path.to_path_buf(), source })?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && Instant::now() < deadline => {
                tokio::time::sleep(POLL_PERIOD).await;
            }
            Err(e) => {
                return Err(ConnectError::Io { path: path.to_path_buf(), source: e.into() });
            }
        }
    }
}
