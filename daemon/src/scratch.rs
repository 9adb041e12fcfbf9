//! Room for the daemon's temporary repositories (the bundle of a whole-bundle push, doctor's
//! thorough checks). It lives under the daemon's own cache directory, one folder per daemon
//! (per socket), and is emptied when a daemon starts: what a killed predecessor left goes then.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// The scratch folder of the daemon serving `socket` on this host, under `cache_dir`,
    /// emptied. Only the daemon holding that socket's instance lock may call this. (The host is
    /// part of the name: a home on a network file system is shared by every machine.)
    pub fn open(cache_dir: &Path, socket: &Path) -> io::Result<Self> {
        let mut hasher = Sha256::new();
        hasher.update(rustix::system::uname().nodename().to_bytes());
        hasher.update([0]);
        hasher.update(socket.as_os_str().as_encoded_bytes());
        let id = hex::encode(&hasher.finalize()[..8]);
        let dir = cache_dir.join("scratch").join(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), "cleared what an earlier daemon left in its scratch space"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh folder, removed when dropped.
    pub fn tempdir(&self, prefix: &str) -> io::Result<tempfile::TempDir> {
        tempfile::Builder::new().prefix(prefix).tempdir_in(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_daemon_clears_what_the_last_one_left() {
        let cache = tempfile::tempdir().unwrap();
        let socket = Path::new("/run/user/1/git-remote-s3/daemon.sock");
        let first = Scratch::open(cache.path(), socket).unwrap();
        let left = first.tempdir("push-").unwrap().keep();
        assert!(left.exists());
        let other = Scratch::open(cache.path(), Path::new("/tmp/other.sock")).unwrap();
        let second = Scratch::open(cache.path(), socket).unwrap();
        assert_eq!(second.dir(), first.dir());
        assert!(!left.exists());
        assert_ne!(other.dir(), second.dir(), "another daemon's scratch space is its own");
    }
}
