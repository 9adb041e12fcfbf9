//! Resolves what a request names (a remote's name, or a URL) into where it lives: the bucket and
//! prefix, its settings, and the caller's git. `store::open` then reads the repository there;
//! `open_lfs` finds where git-lfs's objects go.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bucket::Bucket;
use crate::clients::ClientCache;
use crate::config::{self, ConfigError, RemoteConfig};
use crate::git::Git;
use crate::layout::Layout;
use crate::lfs::{LfsError, LfsStore};
use crate::lfs_endpoint::{self, Operation, is_s3_url};
use crate::scheduler::Scheduler;

pub use crate::lfs::TRANSFER_ERROR_CODE;

/// The caller on whose behalf the daemon acts.
pub struct CallerContext {
    pub cwd: PathBuf,
    pub env: Arc<HashMap<String, String>>,
}

/// A remote as one caller reaches it: its bucket and prefix, settings, and the caller's git.
#[derive(Clone)]
pub struct Remote {
    pub bucket: Bucket,
    pub layout: Layout,
    pub config: RemoteConfig,
    pub git: Git,
}

impl Remote {
    /// The remote `remote_name` names in the caller's repository, or `url` when given.
    pub async fn open(
        clients: &Arc<ClientCache>,
        scheduler: &Arc<Scheduler>,
        caller: &CallerContext,
        remote_name: &str,
        url: &str,
    ) -> Result<Remote, ConfigError> {
        let git = Git::new(caller.cwd.clone(), caller.env.clone());
        let url = match url {
            "" => git
                .run(&["remote", "get-url", "--", remote_name])
                .await
                .map_err(|_| ConfigError::UnknownRemote(remote_name.to_string()))?,
            url => url.to_string(),
        };
        Remote::at(clients, scheduler, caller, git, remote_name, &url).await
    }

    async fn at(
        clients: &Arc<ClientCache>,
        scheduler: &Arc<Scheduler>,
        caller: &CallerContext,
        git: Git,
        remote_name: &str,
        url: &str,
    ) -> Result<Remote, ConfigError> {
        let config = config::resolve(remote_name, url, &caller.env, &git).await?;
        let bucket = Bucket::open(clients, scheduler, &config).await;
        let layout = Layout::new(&config.url.prefix);
        Ok(Remote { bucket, layout, config, git })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenLfsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot tell where LFS objects of remote '{remote}' live: it is neither a remote of this repository nor a URL; use 'git-lfs-s3 install --url s3://bucket/prefix'"
    )]
    UnknownRemote { remote: String },
    #[error(
        "git-lfs sends the LFS objects of '{remote}' to {url} ({from}), which is not in S3; to keep them in S3 use 'git-lfs-s3 install --url s3://bucket/prefix'"
    )]
    NotInS3 { remote: String, url: String, from: String },
    #[error(transparent)]
    Lfs(#[from] LfsError),
}

/// Who named the remote of an LFS transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// git-lfs, to its agent: git-lfs's endpoint rules say where the objects go.
    GitLfs,
    /// The user, as the argument of `git s3 lfs pull|push`: an `s3://` URL there is meant as
    /// it is and beats any setting; a remote's name goes through git-lfs's rules.
    Argument,
}

/// The LFS store for `remote` (a remote's name or a URL) and `operation`, where git-lfs's
/// endpoint rules put it (see `lfs_endpoint`).
pub async fn open_lfs(
    clients: &Arc<ClientCache>,
    scheduler: &Arc<Scheduler>,
    caller: &CallerContext,
    remote: &str,
    operation: Operation,
    naming: Naming,
) -> Result<(LfsStore, RemoteConfig), OpenLfsError> {
    let git = Git::new(caller.cwd.clone(), caller.env.clone());
    let url = if naming == Naming::Argument && is_s3_url(remote) {
        remote.to_string()
    } else {
        let endpoint = lfs_endpoint::find(&git, remote, operation)
            .await
            .ok_or_else(|| OpenLfsError::UnknownRemote { remote: remote.to_string() })?;
        endpoint.s3_location().ok_or_else(|| OpenLfsError::NotInS3 {
            remote: remote.to_string(),
            url: endpoint.url.clone(),
            from: endpoint.from.clone(),
        })?
    };
    let Remote { bucket, layout, config, git } = Remote::at(clients, scheduler, caller, git, remote, &url).await?;
    let store = LfsStore::open(bucket, layout, &git).await?;
    Ok((store, config))
}
