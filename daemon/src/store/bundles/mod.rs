//! The storage format shared with awslabs/git-remote-s3: one self-contained bundle per ref at
//! `<ref>/<oid>.bundle`, a `HEAD` naming the default branch, per-ref locks and protection marks.
//! Pushes compose a ref's new bundle from the bytes of an old one where that pays (see
//! `compose`), so a push costs the change rather than the history.

mod compose;
mod fetch;
pub mod header;
mod listing;
mod pack;
mod pack_cache;
mod push;
mod tail;

use std::sync::Arc;

use crate::bucket::{Bucket, S3Error};
use crate::config::RemoteConfig;
use crate::git::{Git, GitError};
use crate::layout::Layout;
use crate::lock::{LockError, RefLock};

pub use compose::Composer;
pub use listing::{BundleObject, Listing, RefState, choose_head, default_branch, parse_listing};
pub use pack_cache::{DEFAULT_PACK_CACHE_BYTES, PackCache};
pub use push::{PushBatch, PushCommand, RefOutcome};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(
        "the bundle for {refname} ({key}) is missing from the bucket; the remote changed during the fetch, fetch again"
    )]
    MissingBundle { refname: String, key: String },
    #[error("the bundle for {refname} ({key}) is corrupt: {why}; run 'git s3 doctor' or push that ref again")]
    CorruptBundle { refname: String, key: String, why: String },
    #[error("downloading {key} failed: {why}")]
    Download { key: String, why: String },
    #[error("the fetch did not bring {oid} ({refname})")]
    NotFetched { refname: String, oid: String },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot create a temporary repository: {0}")]
    TempDir(#[source] std::io::Error),
}

/// One repository in a bucket, reached on behalf of one caller.
pub struct BundleRepo {
    pub bucket: Bucket,
    pub layout: Layout,
    pub config: RemoteConfig,
    pub git: Git,
    pub composer: Arc<Composer>,
}

impl BundleRepo {
    pub async fn list(&self, with_head: bool) -> Result<Listing, StoreError> {
        let head_key = self.layout.head();
        let refs_prefix = self.layout.refs_prefix();
        let (objects, head) = tokio::join!(self.bucket.list(&refs_prefix), async {
            if with_head { self.bucket.get_bytes(&head_key).await } else { Ok(None) }
        });
        let refs = parse_listing(&self.layout, objects?);
        let head = head?.map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string()).filter(|h| !h.is_empty());
        Ok(Listing { refs, head })
    }

    pub(crate) async fn read_ref(&self, refname: &str) -> Result<RefState, S3Error> {
        let objects = self.bucket.list(&self.layout.ref_dir(refname)).await?;
        Ok(parse_listing(&self.layout, objects).remove(refname).unwrap_or_default())
    }
}

pub(crate) async fn release(lock: RefLock) {
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not release a lock; it goes stale after its TTL");
    }
}
