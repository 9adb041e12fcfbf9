//! Where the daemon of the current user listens and keeps its files. Both sides resolve it the
//! same way, so this is part of the contract between them.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Overrides the socket path (tests, several daemons side by side).
pub const SOCKET_ENV: &str = "GIT_REMOTE_S3_SOCKET";
/// Overrides the folder for the daemon's log and state.
pub const STATE_DIR_ENV: &str = "GIT_REMOTE_S3_STATE_DIR";
pub const CACHE_DIR_ENV: &str = "GIT_REMOTE_S3_CACHE_DIR";

const APP_DIR: &str = "git-remote-s3";
const SOCKET_FILE: &str = "daemon.sock";
/// How long a stopping daemon finishes the pushes and fetches in flight before it exits anyway.
pub const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);
/// Unix socket paths longer than this do not fit in `sockaddr_un`.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error(
        "{path} must be a directory of this user that others cannot write to (owner uid {owner}, mode {mode:o}); fix it or set {SOCKET_ENV}"
    )]
    NotPrivate { path: PathBuf, owner: u32, mode: u32 },
    #[error("socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes; set {SOCKET_ENV} to a shorter path")]
    TooLong { path: PathBuf },
    #[error("cannot find a home or state directory for this user; set {STATE_DIR_ENV}")]
    NoStateDir,
}

/// The files of one user's daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub socket: PathBuf,
    /// Holds the daemon's log.
    pub state_dir: PathBuf,
    /// Holds what the daemon caches on disk (packs of composed pushes).
    pub cache_dir: PathBuf,
}

impl Endpoint {
    /// Resolves the paths from an environment lookup (the process's own, or a caller's).
    pub fn resolve(env: impl Fn(&str) -> Option<String>) -> Result<Self, EndpointError> {
        let socket = match env(SOCKET_ENV).filter(|s| !s.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => default_socket_dir(&env)?.join(SOCKET_FILE),
        };
        if socket.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
            return Err(EndpointError::TooLong { path: socket });
        }
        let state_dir = match env(STATE_DIR_ENV).filter(|s| !s.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => default_state_dir()?,
        };
        let cache_dir = match env(CACHE_DIR_ENV).filter(|s| !s.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => default_cache_dir()?,
        };
        Ok(Self { socket, state_dir, cache_dir })
    }

    pub fn from_process_env() -> Result<Self, EndpointError> {
        Self::resolve(|key| std::env::var(key).ok())
    }

    /// The folder holding the socket: created private (0700) if missing, and refused if it is
    /// not ours or is open to others.
    pub fn ensure_socket_dir(&self) -> Result<&Path, EndpointError> {
        let dir = self.socket.parent().unwrap_or(Path::new("."));
        ensure_private_dir(dir)?;
        Ok(dir)
    }

    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join("daemon.log")
    }

    /// Serialises daemon start-ups between racing clients.
    pub fn start_lock_file(&self) -> PathBuf {
        self.socket.with_extension("start-lock")
    }

    /// Held by the running daemon for its whole life: at most one daemon per socket.
    pub fn instance_lock_file(&self) -> PathBuf {
        self.socket.with_extension("lock")
    }

    /// Whether a daemon process for this socket is alive (serving or still draining): it
    /// holds the instance lock for its whole life.
    pub fn daemon_alive(&self) -> bool {
        let Ok(file) = fs::OpenOptions::new().create(true).truncate(false).write(true).open(self.instance_lock_file())
        else {
            return false;
        };
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
    }
}

fn default_socket_dir(env: &impl Fn(&str) -> Option<String>) -> Result<PathBuf, EndpointError> {
    // `directories` reads XDG_RUNTIME_DIR from the process; honour the caller's value first.
    if let Some(runtime) = env("XDG_RUNTIME_DIR").filter(|s| s.starts_with('/')) {
        return Ok(Path::new(&runtime).join(APP_DIR));
    }
    if let Some(runtime) = directories::BaseDirs::new().and_then(|b| b.runtime_dir().map(Path::to_path_buf)) {
        return Ok(runtime.join(APP_DIR));
    }
    // No runtime dir (root without a login session, macOS): a per-user folder in the temp dir,
    // checked for ownership and mode before use.
    let uid = rustix::process::getuid().as_raw();
    Ok(std::env::temp_dir().join(format!("{APP_DIR}-{uid}")))
}

fn default_state_dir() -> Result<PathBuf, EndpointError> {
    let dirs = directories::ProjectDirs::from("", "", APP_DIR).ok_or(EndpointError::NoStateDir)?;
    Ok(dirs.state_dir().map(Path::to_path_buf).unwrap_or_else(|| dirs.data_local_dir().to_path_buf()))
}

fn default_cache_dir() -> Result<PathBuf, EndpointError> {
    let dirs = directories::ProjectDirs::from("", "", APP_DIR).ok_or(EndpointError::NoStateDir)?;
    Ok(dirs.cache_dir().to_path_buf())
}

/// Creates `dir` with mode 0700 when missing; refuses one owned by another user or writable by
/// group or others, since whoever can write it could put a fake daemon's socket there.
pub fn ensure_private_dir(dir: &Path) -> Result<(), EndpointError> {
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(source) => {
            return Err(EndpointError::Create { path: dir.to_path_buf(), source });
        }
    }
    let meta = fs::symlink_metadata(dir).map_err(|source| EndpointError::Create { path: dir.to_path_buf(), source })?;
    let uid = rustix::process::getuid().as_raw();
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() || meta.uid() != uid || mode & 0o022 != 0 {
        return Err(EndpointError::NotPrivate { path: dir.to_path_buf(), owner: meta.uid(), mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
    }

    #[test]
    fn socket_override_wins() {
        let endpoint = Endpoint::resolve(env_of(&[(SOCKET_ENV, "/tmp/x/d.sock"), (STATE_DIR_ENV, "/tmp/s")])).unwrap();
        assert_eq!(endpoint.socket, PathBuf::from("/tmp/x/d.sock"));
        assert_eq!(endpoint.log_file(), PathBuf::from("/tmp/s/daemon.log"));
        assert_eq!(endpoint.start_lock_file(), PathBuf::from("/tmp/x/d.start-lock"));
    }

    #[test]
    fn runtime_dir_of_the_caller_is_used() {
        let endpoint =
            Endpoint::resolve(env_of(&[("XDG_RUNTIME_DIR", "/run/user/1000"), (STATE_DIR_ENV, "/s")])).unwrap();
        assert_eq!(endpoint.socket, PathBuf::from("/run/user/1000/git-remote-s3/daemon.sock"));
    }

    #[test]
    fn overlong_socket_path_is_refused() {
        let long: &'static str = Box::leak(format!("/tmp/{}/d.sock", "x".repeat(120)).into_boxed_str());
        let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([(SOCKET_ENV, long)]));
        assert!(matches!(Endpoint::resolve(env_of(pairs)), Err(EndpointError::TooLong { .. })));
    }

    #[test]
    fn shared_directory_is_refused() {
        let dir = tempfile_dir();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(ensure_private_dir(&dir), Err(EndpointError::NotPrivate { .. })));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(ensure_private_dir(&dir).is_ok());
        fs::remove_dir(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("git-s3-endpoint-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
