//! The seam between the protocol side and the storage format. Handlers open a repository for
//! a caller and a remote, and use only `list`, `fetch` and `push`; how refs and objects are laid
//! out in the bucket is the format's business. Today that is the Python tool's bundle layout;
//! an incremental or native format is a new variant here, chosen per remote.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bucket::Bucket;
use crate::bundles::BundleRepo;
use crate::clients::ClientCache;
use crate::config::{self, ConfigError};
use crate::git::Git;
use crate::layout::Layout;

pub use crate::bundles::{Listing, PushBatch, PushCommand, RefOutcome, StoreError};

/// The caller on whose behalf the daemon acts.
pub struct CallerContext {
    pub cwd: PathBuf,
    pub env: Arc<HashMap<String, String>>,
}

pub type Repository = BundleRepo;

pub async fn open(
    clients: &ClientCache,
    caller: &CallerContext,
    remote_name: &str,
    url: &str,
) -> Result<Repository, ConfigError> {
    let git = Git::new(caller.cwd.clone(), caller.env.clone());
    let config = config::resolve(remote_name, url, &caller.env, &git).await?;
    let client = clients.get(&config.s3).await;
    let bucket = Bucket::new(client, &config.url.bucket, config.s3.endpoint.as_deref());
    let layout = Layout::new(&config.url.prefix);
    Ok(BundleRepo {
        bucket,
        layout,
        config,
        git,
    })
}
