//! The seam between the protocol side (server, requests, listing cache) and the storage formats.
//! Handlers open a `Repository` for a caller's remote and speak only this module's vocabulary: a
//! push batch, per-ref outcomes and refusals in git's words, ref listings, `git s3` verbs. Each
//! format is a folder here that owns its key layout, locks and management verbs; `open` picks
//! the one for a remote.

pub mod bundles;
mod download;
mod manage;
mod migrate;
pub mod native;
mod push;
mod refs;
mod zip;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::bucket::S3Error;
use crate::config::NewRemoteFormat;
use crate::git::{Git, GitError};
use crate::object_format::ObjectFormat;
use crate::progress::Events;
use crate::remote::Remote;
use crate::scratch::Scratch;

pub use bundles::{DEFAULT_PACK_CACHE_BYTES, PackCache};
pub use manage::{DEFAULT_UPLOAD_IDLE, DoctorOptions, Finding, ManageError, age_s, branch_ref};
pub use migrate::{MigrateError, Migration, migrate};
pub(crate) use push::judge;
pub use push::{PushBatch, PushCommand, Pushed, RefOutcome, Refusal};
pub use refs::{Inventory, RefSummary, RemoteRefs, StoredValue, choose_head};

/// How a remote lays out its refs and objects in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The layout shared with awslabs/git-remote-s3: a bundle per ref (shared/s3-layout.md).
    Bundles,
    /// Packs and one manifest (`native/LAYOUT.md`): history stored once, atomic pushes.
    Native,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Bundles => "bundles",
            Format::Native => "native",
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

    /// Makes HEAD name `refname` (a ref the remote has).
    async fn set_head(&self, refname: &str) -> Result<(), ManageError>;

    /// Deletes a branch (`force`: a protected one too); returns its full name and where HEAD
    /// moved, if it named the branch.
    async fn delete_branch(&self, branch: &str, force: bool) -> Result<(String, Option<String>), ManageError>;

    /// Finds what is wrong with the remote and, unless `dry_run`, repairs what the options allow.
    async fn doctor(&self, options: &DoctorOptions) -> Result<Vec<Finding>, StoreError>;

    /// The remote's grace period (how long what no manifest names is kept before it is
    /// deleted), set to `seconds` when given; returns it and whether anything changed.
    async fn gc_grace(&self, seconds: Option<u64>) -> Result<(u64, bool), ManageError>;
}

/// What every remote's storage may use, kept by the daemon for its whole life.
pub struct Resources {
    /// Packs composed pushes build on.
    pub composer: Arc<bundles::Composer>,
    /// Where temporary repositories go.
    pub scratch: Arc<Scratch>,
    /// What native remotes' immutable objects said.
    native: Arc<native::Caches>,
    /// The format each remote was last found in.
    formats: Arc<Mutex<HashMap<String, Known>>>,
}

/// A remote's format as last found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Bundles,
    Native { bundles_beside: bool },
}

impl Resources {
    pub fn new(packs: PackCache, scratch: Scratch) -> Self {
        Self {
            composer: Arc::new(bundles::Composer::new(packs)),
            scratch: Arc::new(scratch),
            native: Arc::default(),
            formats: Arc::default(),
        }
    }

    pub fn pack_cache(&self) -> &PackCache {
        &self.composer.packs
    }

    /// What this daemon's latest maintenance of each native remote did.
    pub fn maintenance(&self) -> Vec<native::MaintenanceRecord> {
        self.native.maintenance()
    }
}

/// How a repository, opened in the format its remote was last found in, says that the remote
/// holds something else now: the next command looks at the prefix again.
#[derive(Clone)]
pub struct FormatWatch {
    formats: Arc<Mutex<HashMap<String, Known>>>,
    remote: String,
}

impl FormatWatch {
    pub fn look_again(&self) {
        if let Ok(mut formats) = self.formats.lock() {
            formats.remove(&self.remote);
        }
    }
}

/// The repository a remote's prefix holds, in the format it holds: a prefix with a native
/// manifest is native (bundles beside it are a warning), one with bundles is in the shared
/// layout, and an empty one is whatever `s3.format` asks a first push to create. The one place
/// a format is chosen.
///
/// What a prefix holds is learnt once per daemon (a HEAD of the native root and one short
/// listing) and remembered, so that the shared layout's hot paths cost no request more: its
/// listing of `P/refs/` sees a native root appear (the root lives there) and makes the next
/// command look again; a native remote whose root went away is looked at again too.
pub async fn open(resources: &Resources, remote: Remote) -> Result<Box<dyn Repository>, StoreError> {
    let watch = FormatWatch {
        formats: resources.formats.clone(),
        remote: format!("{:?} {} {}", remote.config.s3.endpoint, remote.bucket.name(), remote.layout),
    };
    let remembered = watch.formats.lock().ok().and_then(|formats| formats.get(&watch.remote).copied());
    let known = match remembered {
        Some(known) => Some(known),
        None => {
            let known = look_at(&remote).await?;
            if let (Some(known), Ok(mut formats)) = (known, watch.formats.lock()) {
                formats.insert(watch.remote.clone(), known);
            }
            known
        }
    };
    let known = known.unwrap_or(match remote.config.format {
        NewRemoteFormat::Native => Known::Native { bundles_beside: false },
        NewRemoteFormat::Bundles => Known::Bundles,
    });
    Ok(open_known(resources, remote, known, watch))
}

fn open_known(resources: &Resources, remote: Remote, known: Known, watch: FormatWatch) -> Box<dyn Repository> {
    match known {
        Known::Native { bundles_beside } => Box::new(native::NativeRepo::new(
            remote,
            resources.scratch.clone(),
            resources.native.clone(),
            bundles_beside,
            watch,
        )),
        Known::Bundles => {
            Box::new(bundles::BundleRepo::new(remote, resources.composer.clone(), resources.scratch.clone(), watch))
        }
    }
}

/// What the prefix holds; `None` when it is empty (asked again next time: that costs little).
async fn look_at(remote: &Remote) -> Result<Option<Known>, StoreError> {
    let refs = remote.layout.key("refs/");
    let root_key = native::root_key(&remote.layout);
    let (root, any_refs) = tokio::join!(remote.bucket.head(&root_key), remote.bucket.has_any(&refs));
    // A listing's error says more than a HEAD's (which has no body to carry S3's error code).
    let any_refs = any_refs?;
    Ok(match (root?.is_some(), any_refs) {
        (true, _) => {
            // A native remote keeps nothing else under `P/refs/`: this listing is short.
            let listed = remote.bucket.list(&refs).await?;
            let bundles_beside = listed.iter().any(|o| bundles::is_bundle_key(&remote.layout, &o.key));
            Some(Known::Native { bundles_beside })
        }
        (false, true) => Some(Known::Bundles),
        (false, false) => None,
    })
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
    #[error(transparent)]
    Native(#[from] native::NativeError),
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
