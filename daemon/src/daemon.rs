//! The daemon's life: one instance per socket, a private socket, serving until stopped, idle
//! for too long, or signalled, and then finishing the work in flight.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use git_s3_proto::daemon_server::DaemonServer;
use git_s3_proto::endpoint::{DRAIN_LIMIT, Endpoint, EndpointError};
use rustix::fs::{FlockOperation, flock};
use tokio::net::UnixListener;

use crate::listener;
use crate::scheduler::Scheduler;
use crate::scratch::Scratch;
use crate::server::Service;
use crate::state::DaemonState;
use crate::store::{PackCache, Resources};

/// The pack cache and the scratch space under `dir`; when that cannot be written (a HOME of
/// another user, a read-only one), private ones under the temp dir: a cache is worth having, not
/// worth refusing to run.
fn open_disk_space(dir: &Path, socket: &Path, max_bytes: u64) -> Result<(PackCache, Scratch), DaemonError> {
    let open = |dir: &Path| -> Result<(PackCache, Scratch), (PathBuf, std::io::Error)> {
        let packs = PackCache::open(dir.join("packs"), max_bytes).map_err(|e| (dir.join("packs"), e))?;
        let scratch = Scratch::open(dir, socket).map_err(|e| (dir.join("scratch"), e))?;
        Ok((packs, scratch))
    };
    match open(dir) {
        Ok(opened) => Ok(opened),
        Err((path, e)) => {
            let uid = rustix::process::getuid().as_raw();
            let private = std::env::temp_dir().join(format!("git-remote-s3-{uid}-cache"));
            // Ours alone, or another user could read or plant packs.
            git_s3_proto::endpoint::ensure_private_dir(&private)?;
            tracing::warn!(dir = %path.display(), error = %e, fallback = %private.display(), "cannot use the cache directory; using a temporary one");
            open(&private).map_err(|(path, source)| DaemonError::Io { what: "open the cache in", path, source })
        }
    }
}

/// Attempts at the instance lock, 20 ms apart.
const INSTANCE_LOCK_TRIES: u32 = 10;
/// How often the idle watcher looks.
const IDLE_CHECK_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("another git-s3d already serves {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

pub struct DaemonOptions {
    pub endpoint: Endpoint,
    /// `None`: never exit on idleness (a service-managed daemon).
    pub idle_timeout: Option<Duration>,
    /// What the daemon reports as its version in the handshake.
    pub version: String,
    /// Caps shared by every transfer.
    pub max_requests: usize,
    pub max_inflight_bytes: u64,
    /// Run by a service manager (systemd, launchd): never exit when idle.
    pub managed: bool,
    /// Holds the packs composed pushes build on and the daemon's scratch space.
    pub cache_dir: PathBuf,
    /// How many bytes of packs the cache keeps at most.
    pub pack_cache_bytes: u64,
    /// The listening socket systemd passed (see `inherited_listener`).
    pub inherited: Option<std::os::unix::net::UnixListener>,
}

pub async fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    let endpoint = options.endpoint;
    endpoint.ensure_socket_dir()?;
    // Held until the process has exited (the kernel releases it then), so whoever waits for the
    // daemon to be gone waits for the process, not for the end of this function.
    std::mem::forget(lock_instance(&endpoint)?);
    // systemd socket activation hands us the listening socket; otherwise we bind our own.
    let activated = options.inherited.is_some();
    let listener = match options.inherited {
        Some(listener) => adopt(listener)?,
        None => bind_private(&endpoint.socket)?,
    };
    let managed = options.managed || activated;
    let idle_timeout = if managed { None } else { options.idle_timeout };
    let scheduler = Scheduler::new(options.max_requests, options.max_inflight_bytes);
    let (packs, scratch) = open_disk_space(&options.cache_dir, &endpoint.socket, options.pack_cache_bytes)?;
    let state = Arc::new(DaemonState::new(
        endpoint.socket.clone(),
        options.version,
        idle_timeout,
        scheduler,
        Resources::new(packs, scratch),
        managed,
    ));
    tracing::info!(socket = %endpoint.socket.display(), pid = std::process::id(), idle_timeout = ?idle_timeout, activated, "git-s3d ready");

    tokio::spawn(watch_idle(state.clone()));
    tokio::spawn(watch_signals(state.clone()));

    let incoming = listener::incoming(listener, state.clone());
    let shutdown = state.shutdown.clone();
    let served = tonic::transport::Server::builder()
        .add_service(DaemonServer::new(Service::new(state.clone())))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;

    state.tasks.close();
    if tokio::time::timeout(DRAIN_LIMIT, state.tasks.wait()).await.is_err() {
        tracing::warn!("work still in flight after {DRAIN_LIMIT:?}; exiting anyway");
    }
    if !activated {
        // An activated socket belongs to the service manager, which keeps listening on it.
        let _ = fs::remove_file(&endpoint.socket);
    }
    tracing::info!("git-s3d stopped");
    served.map_err(DaemonError::from)
}

/// Holds an exclusive lock on a file beside the socket for the daemon's lifetime, so a second
/// daemon for the same socket refuses to start instead of stealing it.
fn lock_instance(endpoint: &Endpoint) -> Result<File, DaemonError> {
    let path = endpoint.instance_lock_file();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Io { what: "open", path: path.clone(), source })?;
    // Clients probe the lock for a moment (`Endpoint::daemon_alive`); a few tries ride that out.
    for _ in 0..INSTANCE_LOCK_TRIES {
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            return Ok(file);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(DaemonError::AlreadyRunning(endpoint.socket.clone()))
}

/// The listening socket passed by systemd (`LISTEN_FDS`), if any. Reads and clears the
/// environment, so call it before any other thread starts.
pub fn inherited_listener() -> std::io::Result<Option<std::os::unix::net::UnixListener>> {
    listenfd::ListenFd::from_env().take_unix_listener(0)
}

fn adopt(listener: std::os::unix::net::UnixListener) -> Result<UnixListener, DaemonError> {
    let io = |source| DaemonError::Io { what: "adopt", path: PathBuf::from("the socket from LISTEN_FDS"), source };
    listener.set_nonblocking(true).map_err(io)?;
    UnixListener::from_std(listener).map_err(io)
}

/// Binds the socket with mode 0600 from the first moment (umask), replacing a stale socket file
/// left by a daemon that died: we hold the instance lock, so no live daemon owns it.
fn bind_private(socket: &PathBuf) -> Result<UnixListener, DaemonError> {
    match fs::remove_file(socket) {
        Ok(()) => tracing::info!(socket = %socket.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DaemonError::Io { what: "remove stale socket", path: socket.clone(), source });
        }
    }
    let old_umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(socket);
    rustix::process::umask(old_umask);
    let listener = bound.map_err(|source| DaemonError::Io { what: "bind", path: socket.clone(), source })?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600)).map_err(|source| DaemonError::Io {
        what: "restrict",
        path: socket.clone(),
        source,
    })?;
    Ok(listener)
}

async fn watch_idle(state: Arc<DaemonState>) {
    loop {
        tokio::time::sleep(IDLE_CHECK_PERIOD).await;
        if state.idle_for_too_long() {
            tracing::info!("idle for {:?}; exiting", state.idle_timeout.unwrap_or_default());
            state.shutdown.cancel();
            return;
        }
    }
}

async fn watch_signals(state: Arc<DaemonState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot watch for signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    state.shutdown.cancel();
}
