//! The storage format shared with awslabs/git-remote-s3: one self-contained bundle per ref at
//! `<ref>/<oid>.bundle`, a `HEAD` naming the default branch, per-ref locks and protection marks.
//! Pushes compose a ref's new bundle from the bytes of an old one where that pays (see
//! `compose`), so a push costs the change rather than the history.

mod check;
mod compose;
mod fetch;
pub mod header;
mod keys;
mod listing;
mod lock;
mod manage;
mod pack;
mod pack_cache;
mod push;
mod segmented;
mod tag_object;
mod tail;

use std::path::PathBuf;
use std::sync::Arc;

use super::{
    DoctorOptions, Finding, Format, FormatWatch, Inventory, ManageError, PushBatch, RefOutcome, RemoteRefs, Repository,
    StoreError,
};
use crate::bucket::{Bucket, S3Error};
use crate::config::RemoteConfig;
use crate::git::Git;
use crate::layout::{Layout, check_refname};
use crate::progress::Events;
use crate::remote::Remote;
use crate::scratch::Scratch;
use keys::BundleKeys;
use listing::{Listing, RefState, parse_listing};
use lock::{LockError, RefLock};

pub use compose::Composer;
pub use pack_cache::{DEFAULT_PACK_CACHE_BYTES, PackCache};

/// What can go wrong that only this format has.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "the bundle for {refname} ({key}) is missing from the bucket; the remote changed during the fetch, fetch again"
    )]
    Missing { refname: String, key: String },
    #[error("the bundle for {refname} ({key}) is corrupt: {why}; run 'git s3 doctor' or push that ref again")]
    Corrupt { refname: String, key: String, why: String },
    #[error(transparent)]
    Lock(#[from] LockError),
}

impl From<LockError> for StoreError {
    fn from(e: LockError) -> Self {
        BundleError::Lock(e).into()
    }
}

impl From<LockError> for ManageError {
    fn from(e: LockError) -> Self {
        StoreError::from(e).into()
    }
}

/// Whether `key` is a ref's bundle in this layout.
pub fn is_bundle_key(layout: &Layout, key: &str) -> bool {
    matches!(layout.classify(key), keys::RefKey::Bundle { .. })
}

/// Removes what a migration moved out of this layout: the bundles of exactly `values`
/// (`(refname, oid)`: a bundle a push wrote since stays), those refs' protection marks, and
/// `P/HEAD`. Returns the bundles left behind, with their refs.
pub async fn remove_migrated(
    bucket: &Bucket,
    layout: &Layout,
    values: &[(String, String)],
) -> Result<Vec<(String, String)>, S3Error> {
    let moved: std::collections::HashSet<(&str, &str)> = values.iter().map(|(r, o)| (r.as_str(), o.as_str())).collect();
    let mut left = Vec::new();
    for object in bucket.list(&layout.refs_prefix()).await? {
        match layout.classify(&object.key) {
            keys::RefKey::Bundle { refname, oid } if moved.contains(&(refname.as_str(), oid.as_str())) => {
                bucket.delete(&object.key).await?;
            }
            keys::RefKey::Bundle { refname, oid } => left.push((refname, oid)),
            keys::RefKey::Protected { refname } if values.iter().any(|(r, _)| *r == refname) => {
                bucket.delete(&object.key).await?;
            }
            _ => {}
        }
    }
    bucket.delete(&layout.head()).await?;
    Ok(left)
}

/// One repository in a bucket, reached on behalf of one caller.
#[derive(Clone)]
pub struct BundleRepo {
    pub bucket: Bucket,
    pub layout: Layout,
    pub config: RemoteConfig,
    pub git: Git,
    pub composer: Arc<Composer>,
    /// Where temporary repositories go.
    pub scratch: Arc<Scratch>,
    /// Told when the prefix turns out to hold a native manifest.
    pub watch: FormatWatch,
}

#[async_trait::async_trait]
impl Repository for BundleRepo {
    fn format(&self) -> Format {
        Format::Bundles
    }

    async fn list(&self, with_head: bool) -> Result<RemoteRefs, StoreError> {
        Ok(self.listing(with_head).await?.remote_refs())
    }

    async fn fetch(&self, wanted: Vec<(String, String)>, events: &Events) -> Result<Vec<PathBuf>, StoreError> {
        self.fetch_wanted(wanted, events).await
    }

    async fn push(&self, batch: PushBatch, events: &Events) -> Vec<RefOutcome> {
        self.push_batch(batch, events).await
    }

    async fn inventory(&self) -> Result<Inventory, StoreError> {
        Ok(self.listing(true).await?.inventory())
    }

    async fn set_protection(&self, branch: &str, protect: bool) -> Result<(String, bool), ManageError> {
        self.mark_protected(branch, protect).await
    }

    async fn set_head(&self, refname: &str) -> Result<(), ManageError> {
        if self.read_ref(refname).await?.current().is_none() {
            return Err(ManageError::NoSuchRef(refname.to_string()));
        }
        let head = refname.as_bytes().to_vec();
        self.bucket.put_bytes(&self.layout.head(), head, crate::bucket::PutOptions::default()).await?;
        Ok(())
    }

    async fn delete_branch(&self, branch: &str, force: bool) -> Result<(String, Option<String>), ManageError> {
        self.delete_ref(branch, force).await
    }

    async fn doctor(&self, options: &DoctorOptions) -> Result<Vec<Finding>, StoreError> {
        self.diagnose(options).await
    }

    async fn gc_grace(&self, _seconds: Option<u64>) -> Result<(u64, bool), ManageError> {
        Err(ManageError::NativeOnly { what: "a grace period" })
    }
}

impl BundleRepo {
    pub fn new(remote: Remote, composer: Arc<Composer>, scratch: Arc<Scratch>, watch: FormatWatch) -> Self {
        let Remote { bucket, layout, config, git } = remote;
        Self { bucket, layout, config, git, composer, scratch, watch }
    }

    /// Every ref folder the bucket holds, and HEAD when `with_head` asks for it.
    async fn listing(&self, with_head: bool) -> Result<Listing, StoreError> {
        let refs_prefix = self.layout.refs_prefix();
        let (objects, head) = tokio::join!(self.bucket.list(&refs_prefix), async {
            if with_head { self.read_head().await } else { Ok(Head::Missing) }
        });
        let mut listing = parse_listing(&self.layout, objects?);
        if listing.native_beside {
            self.watch.look_again();
        }
        match head? {
            Head::Missing => {}
            Head::Ref(name) => listing.head = Some(name),
            Head::Unusable(why) => listing.bad_head = Some(why),
        }
        Ok(listing)
    }

    /// What `P/HEAD` names. Its size and content are whatever a writer of the bucket made them.
    async fn read_head(&self) -> Result<Head, S3Error> {
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

    async fn read_ref(&self, refname: &str) -> Result<RefState, S3Error> {
        let objects = self.bucket.list(&self.layout.ref_dir(refname)).await?;
        Ok(parse_listing(&self.layout, objects).refs.remove(refname).unwrap_or_default())
    }
}

/// A ref name is at most an S3 key long (1,024 bytes); this leaves room for stray whitespace.
const MAX_HEAD_BYTES: usize = 4096;

/// What `P/HEAD` holds.
enum Head {
    Missing,
    Ref(String),
    /// There, but naming nothing git could use; why.
    Unusable(String),
}

async fn release(lock: RefLock) {
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not release a lock; it goes stale after its TTL");
    }
}

/// The shared layout's locks on a set of refs, held by a migration: the Python tool's pushes of
/// those refs (and ours in this layout) are refused until they are released. Renewed while held.
#[derive(Default)]
pub struct RefLocks(std::collections::HashMap<String, RefLock>);

/// Locks taken at once.
const LOCKS_IN_FLIGHT: usize = 16;

impl RefLocks {
    /// Takes the lock of every ref in `refs` not held yet; a busy one is an error (those taken
    /// stay held until `release`).
    pub async fn take(
        &mut self,
        bucket: &Bucket,
        layout: &Layout,
        ttl: std::time::Duration,
        refs: &[String],
    ) -> Result<(), StoreError> {
        use futures::StreamExt;
        let wanted: Vec<String> = refs.iter().filter(|r| !self.0.contains_key(*r)).cloned().collect();
        let taken: Vec<(String, Result<RefLock, LockError>)> = futures::stream::iter(wanted)
            .map(|refname| async move {
                let lock = RefLock::acquire(bucket, &layout.lock(&refname), &refname, ttl).await;
                (refname, lock)
            })
            .buffer_unordered(LOCKS_IN_FLIGHT)
            .collect()
            .await;
        let mut busy = None;
        for (refname, lock) in taken {
            match lock {
                Ok(lock) => {
                    self.0.insert(refname, lock);
                }
                Err(e) => busy = busy.or(Some(e)),
            }
        }
        busy.map_or(Ok(()), |e| Err(e.into()))
    }

    pub fn holds(&self, refname: &str) -> bool {
        self.0.contains_key(refname)
    }

    pub async fn release(self) {
        use futures::StreamExt;
        futures::stream::iter(self.0.into_values()).for_each_concurrent(LOCKS_IN_FLIGHT, release).await;
    }
}
