//! Resolves what a request names (a remote's name, or a URL) into where it lives: the bucket and
//! prefix, its settings, and the caller's git. `store::open` then reads the repository there;
//! `open_lfs` finds where git-lfs's objects go.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bucket::Bucket;
use crate::clients::ClientCache;
use crate::config::{self, ConfigError, RemoteConfig};
use crate::git::{Git, GitError};
use crate::layout::Layout;
use crate::lfs::{LfsError, LfsStore};
use crate::scheduler::Scheduler;
use git_s3_proto::url::parse_lfs_alias;

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

/// git config key naming the S3 home of a repository's LFS objects when its code lives
/// elsewhere (`git-lfs-s3 install --url`).
pub const LFS_URL_KEY: &str = "s3.lfsurl";

#[derive(Debug, thiserror::Error)]
pub enum OpenLfsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot tell where LFS objects of remote '{remote}' live: {source}; use 'git-lfs-s3 install --url s3://bucket/prefix'"
    )]
    UnknownRemote { remote: String, source: GitError },
    #[error(transparent)]
    Lfs(#[from] LfsError),
}

/// The S3 location git-lfs was pointed at with an alias URL, found where git-lfs looks for its
/// endpoint: `remote.<remote>.lfsurl` and `lfs.url` in git config, then in the repository's
/// `.lfsconfig` (the work tree's file, the index's, HEAD's: a clone's first checkout has only
/// HEAD's). git-lfs tells an agent the remote's name, not the endpoint it chose.
async fn lfs_alias_in_config(git: &Git, remote: &str) -> Option<String> {
    let keys = [format!("remote.{remote}.lfsurl"), "lfs.url".to_string()];
    let top = git.run(&["rev-parse", "--show-toplevel"]).await.ok();
    let lfsconfig = top.map(|top| format!("{top}/.lfsconfig"));
    let mut sources: Vec<Vec<&str>> = vec![vec![]];
    if let Some(file) = &lfsconfig {
        sources.push(vec!["--file", file]);
    }
    sources.push(vec!["--blob", ":.lfsconfig"]);
    sources.push(vec!["--blob", "HEAD:.lfsconfig"]);
    for source in &sources {
        for key in &keys {
            let args: Vec<&str> = ["config"].into_iter().chain(source.iter().copied()).chain(["--get", key]).collect();
            if let Ok(value) = git.run(&args).await
                && let Some(location) = parse_lfs_alias(&value)
            {
                return Some(location.to_string());
            }
        }
    }
    None
}

/// The LFS store for what git-lfs calls `remote` (a remote's name or a URL). An `s3.lfsurl` in
/// git config wins: it is how a repository whose code lives elsewhere keeps LFS objects in S3.
pub async fn open_lfs(
    clients: &Arc<ClientCache>,
    scheduler: Arc<Scheduler>,
    caller: &CallerContext,
    remote: &str,
) -> Result<(LfsStore, RemoteConfig), OpenLfsError> {
    let git = Git::new(caller.cwd.clone(), caller.env.clone());
    let configured = git.run(&["config", "--get", LFS_URL_KEY]).await.ok().filter(|u| !u.is_empty());
    let is_s3 = |url: &str| url.starts_with("s3://") || url.starts_with("s3+zip://");
    let url = match configured {
        Some(url) => url,
        None if is_s3(remote) => remote.to_string(),
        None => match git.run(&["remote", "get-url", "--", remote]).await {
            Ok(url) if is_s3(&url) => url,
            // Code elsewhere, LFS objects in S3 (an alias URL in git config or `.lfsconfig`).
            other => match lfs_alias_in_config(&git, remote).await {
                Some(url) => url,
                None => other.map_err(|source| OpenLfsError::UnknownRemote { remote: remote.to_string(), source })?,
            },
        },
    };
    let Remote { bucket, layout, config, git } = Remote::at(clients, &scheduler, caller, git, remote, &url).await?;
    let store = LfsStore::open(bucket, layout, scheduler, &git).await?;
    Ok((store, config))
}
