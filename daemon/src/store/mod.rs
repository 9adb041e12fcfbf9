//! The seam between the protocol side (server, requests, listing cache) and the storage formats.
//! Handlers open a `Repository` for a caller's remote and speak only this module's vocabulary: a
//! push batch, per-ref outcomes and refusals in git's words, ref listings, `git s3` verbs. Each
//! format is a folder here that owns its key layout, locks and management verbs; `open` picks
//! the one for a remote.

pub mod bundles;
mod manage;
mod push;
mod refs;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bucket::S3Error;
use crate::git::{Git, GitError};
use crate::object_format::ObjectFormat;
use crate::progress::Events;
use crate::remote::Remote;
use crate::scratch::Scratch;

pub use bundles::{DEFAULT_PACK_CACHE_BYTES, PackCache};
pub use manage::{DEFAULT_UPLOAD_IDLE, DoctorOptions, Finding, ManageError, age_s, branch_ref};
pub use push::{PushBatch, PushCommand, Pushed, RefOutcome, Refusal};
pub use refs::{Inventory, RefSummary, RemoteRefs, StoredValue};

/// How a remote lays out its refs and objects in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The layout shared with awslabs/git-remote-s3: a bundle per ref (shared/s3-layout.md).
    Bundles,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Bundles => "bundles",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A remote's repository, in whatever format its prefix holds, reached for one caller.
#[async_trait::async_trait]
pub trait Repository: Send + Sync {
    fn format(&self) -> Format;

    /// The refs `list` (with HEAD) or `list for-push` (without) tells git.
    async fn list(&self, with_head: bool) -> Result<RemoteRefs, StoreError>;

    /// Brings the objects of `wanted` (`(refname, oid)`) into the caller's repository. Returns
    /// the `.keep` files that protect the new packs until git has updated its refs.
    async fn fetch(&self, wanted: Vec<(String, String)>, events: &Events) -> Result<Vec<PathBuf>, StoreError>;

    /// Pushes a batch: one outcome per command, in the batch's order.
    async fn push(&self, batch: PushBatch, events: &Events) -> Vec<RefOutcome>;

    /// What `git s3 ls` shows.
    async fn inventory(&self) -> Result<Inventory, StoreError>;

    /// Protects or unprotects a branch; returns its full name and whether anything changed.
    async fn set_protection(&self, branch: &str, protect: bool) -> Result<(String, bool), ManageError>;

    /// Deletes a branch (`force`: a protected one too); returns its full name and where HEAD
    /// moved, if it named the branch.
    async fn delete_branch(&self, branch: &str, force: bool) -> Result<(String, Option<String>), ManageError>;

    /// Finds what is wrong with the remote and, unless `dry_run`, repairs what the options allow.
    async fn doctor(&self, options: &DoctorOptions) -> Result<Vec<Finding>, StoreError>;
}

/// What every remote's storage may use, kept by the daemon for its whole life.
pub struct Resources {
    /// Packs composed pushes build on.
    pub composer: Arc<bundles::Composer>,
    /// Where temporary repositories go.
    pub scratch: Arc<Scratch>,
}

impl Resources {
    pub fn new(packs: PackCache, scratch: Scratch) -> Self {
        Self { composer: Arc::new(bundles::Composer::new(packs)), scratch: Arc::new(scratch) }
    }

    pub fn pack_cache(&self) -> &PackCache {
        &self.composer.packs
    }
}

/// The repository a remote's prefix holds. Every remote is in the shared layout so far; another
/// format is chosen here, by what the prefix holds, and nowhere else.
pub async fn open(resources: &Resources, remote: Remote) -> Result<Box<dyn Repository>, StoreError> {
    Ok(Box::new(bundles::BundleRepo::new(remote, resources.composer.clone(), resources.scratch.clone())))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("downloading {key} failed: {why}")]
    Download { key: String, why: String },
    #[error("the fetch did not bring {oid} ({refname})")]
    NotFetched { refname: String, oid: String },
    #[error("cannot create a temporary repository: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("cannot {what} the fetched objects' own directory in the repository: {source}")]
    Quarantine { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    ObjectFormat(#[from] FormatMismatch),
    #[error(transparent)]
    Bundles(#[from] bundles::BundleError),
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

/// Refuses a remote whose objects are not in the caller's repository's format.
pub(crate) async fn check_object_format(git: &Git, remote: Option<ObjectFormat>) -> Result<(), StoreError> {
    let Some(remote) = remote else { return Ok(()) };
    let local = git.object_format().await?;
    if local != remote {
        return Err(FormatMismatch { local, remote }.into());
    }
    Ok(())
}
