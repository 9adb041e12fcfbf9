//! The storage format shared with awslabs/git-remote-s3: one self-contained bundle per ref at
//! `<ref>/<oid>.bundle`, a `HEAD` naming the default branch, per-ref locks and protection marks.
//! Pushes compose a ref's new bundle from the bytes of an old one where that pays (see
//! `compose`), so a push costs the change rather than the history.

mod check;
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
use crate::layout::{Layout, check_refname};
use crate::lock::{LockError, RefLock};
use crate::object_format::ObjectFormat;
use crate::scratch::Scratch;

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
    #[error(transparent)]
    ObjectFormat(#[from] FormatMismatch),
}

/// A repository and a remote whose object ids differ in kind: neither can take the other's.
#[derive(Debug, thiserror::Error)]
#[error(
    "this repository uses {local} object ids but the remote holds {remote} ones; clone it afresh ('git clone' picks the remote's format) or push to a new prefix"
)]
pub struct FormatMismatch {
    pub local: ObjectFormat,
    pub remote: ObjectFormat,
}

/// One repository in a bucket, reached on behalf of one caller.
pub struct BundleRepo {
    pub bucket: Bucket,
    pub layout: Layout,
    pub config: RemoteConfig,
    pub git: Git,
    pub composer: Arc<Composer>,
    /// Where temporary repositories go.
    pub scratch: Arc<Scratch>,
}

impl BundleRepo {
    pub async fn list(&self, with_head: bool) -> Result<Listing, StoreError> {
        let refs_prefix = self.layout.refs_prefix();
        let (objects, head) = tokio::join!(self.bucket.list(&refs_prefix), async {
            if with_head { self.read_head().await } else { Ok(Head::Missing) }
        });
        let mut listing = parse_listing(&self.layout, objects?);
        match head? {
            Head::Missing => {}
            Head::Ref(name) => listing.head = Some(name),
            Head::Unusable(why) => listing.bad_head = Some(why),
        }
        Ok(listing)
    }

    /// What `P/HEAD` names. Its size and content are whatever a writer of the bucket made them.
    pub(crate) async fn read_head(&self) -> Result<Head, S3Error> {
        let bytes = match self.bucket.get_small(&self.layout.head(), MAX_HEAD_BYTES).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(Head::Missing),
            Err(S3Error::TooLarge { .. }) => {
                return Ok(Head::Unusable(format!("holds more than {MAX_HEAD_BYTES} bytes")));
            }
            Err(e) => return Err(e),
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return Ok(Head::Unusable("is not text".into()));
        };
        let name = text.trim();
        if name.is_empty() {
            return Ok(Head::Missing);
        }
        Ok(match check_refname(name) {
            Ok(()) => Head::Ref(name.to_string()),
            Err(_) => Head::Unusable(format!("names '{name}', which is not a ref name git can use")),
        })
    }

    /// Refuses a remote whose objects are not in the caller's repository's format.
    pub(crate) async fn check_object_format(&self, remote: Option<ObjectFormat>) -> Result<(), StoreError> {
        let Some(remote) = remote else { return Ok(()) };
        let local = self.git.object_format().await?;
        if local != remote {
            return Err(FormatMismatch { local, remote }.into());
        }
        Ok(())
    }

    pub(crate) async fn read_ref(&self, refname: &str) -> Result<RefState, S3Error> {
        let objects = self.bucket.list(&self.layout.ref_dir(refname)).await?;
        Ok(parse_listing(&self.layout, objects).refs.remove(refname).unwrap_or_default())
    }
}

/// A ref name is at most an S3 key long (1,024 bytes); this leaves room for stray whitespace.
const MAX_HEAD_BYTES: usize = 4096;

/// What `P/HEAD` holds.
pub(crate) enum Head {
    Missing,
    Ref(String),
    /// There, but naming nothing git could use; why.
    Unusable(String),
}

pub(crate) async fn release(lock: RefLock) {
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not release a lock; it goes stale after its TTL");
    }
}
