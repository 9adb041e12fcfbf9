//! The native format: history stored once, in packs (each with git's `.idx` beside it), and a
//! manifest — a small root naming content-addressed shards of the ref table and the packs —
//! committed by one conditional write. Every push is atomic in it; a change costs its own
//! objects. LAYOUT.md beside this file is the exact specification.

mod commit;
mod compact;
mod fetch;
mod manage;
mod manifest;
mod push;
mod send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use super::{
    DoctorOptions, Finding, Format, FormatWatch, Inventory, ManageError, PushBatch, RefOutcome, RemoteRefs, Repository,
    StoreError,
};
use crate::bucket::Bucket;
use crate::config::RemoteConfig;
use crate::git::Git;
use crate::layout::Layout;
use crate::object_format::ObjectFormat;
use crate::progress::Events;
use crate::remote::Remote;
use crate::scratch::Scratch;
use manifest::{RefTable, Root};

/// Where the root lives: under `P/refs/`, which the shared layout lists anyway, so that a
/// listing of a bundle remote notices a native manifest without a request of its own. No ref
/// folder can have this name (a ref has at least three segments).
pub fn root_key(layout: &Layout) -> String {
    layout.key("refs/native.json")
}

/// Removes a native repository that a migration moved out: the root first (from then on
/// readers find the other format), then its shards and packs.
pub async fn remove_migrated(bucket: &Bucket, layout: &Layout) -> Result<(), crate::bucket::S3Error> {
    bucket.delete(&root_key(layout)).await?;
    for object in bucket.list(&layout.key("native/")).await? {
        bucket.delete(&object.key).await?;
    }
    Ok(())
}

fn shard_key(layout: &Layout, name: &str) -> String {
    layout.key(&format!("native/refs/{name}"))
}

fn shards_prefix(layout: &Layout) -> String {
    layout.key("native/refs/")
}

fn packs_prefix(layout: &Layout) -> String {
    layout.key("native/packs/")
}

/// `P/native/packs/pack-<name>.<extension>`: `pack`, `idx` or `tips`.
fn pack_key(layout: &Layout, name: &str, extension: &str) -> String {
    format!("{}pack-{name}.{extension}", packs_prefix(layout))
}

/// The root is small: a few KiB for 10,000 refs. Anything far larger is not ours.
const MAX_ROOT_BYTES: usize = 16 * 1024 * 1024;
/// A shard holds about 128 refs of at most a few hundred bytes each.
const MAX_SHARD_BYTES: usize = 4 * 1024 * 1024;
/// Shards read at once.
const SHARDS_IN_FLIGHT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("the native manifest's {key} cannot be used: {why}; run 'git s3 doctor'")]
    Corrupt { key: String, why: String },
    #[error("the native manifest names {key}, which is missing from the bucket; run 'git s3 doctor'")]
    Missing { key: String },
    #[error("{key} does not hold the pack its name says ({why}); run 'git s3 doctor'")]
    BadPack { key: String, why: String },
    #[error("cannot read the pack this push built: {0}")]
    LocalPack(#[source] std::io::Error),
    #[error("other pushes kept changing the remote while this one tried to commit; try again")]
    Contended,
}

/// The refs of one shard, `(refname, oid)`, as read once.
type ShardRefs = Arc<Vec<(String, String)>>;

/// What the daemon remembers of native remotes for its whole life: immutable objects only, so
/// nothing here can go stale.
#[derive(Default)]
pub struct Caches {
    shards: Mutex<HashMap<String, ShardRefs>>,
    tips: Mutex<HashMap<String, Arc<Vec<String>>>>,
    /// Remotes this daemon is compacting or collecting now (one run at a time each), and
    /// whether another push asked for a run meanwhile.
    maintained: Mutex<HashMap<String, bool>>,
    /// The latest maintenance of each remote, for `git s3 daemon status`.
    records: Mutex<HashMap<String, MaintenanceRecord>>,
}

/// What the latest maintenance of a remote did.
#[derive(Debug, Clone)]
pub struct MaintenanceRecord {
    pub remote: String,
    pub packs: usize,
    pub bytes: u64,
    pub did: String,
    /// When the run ended; `None` while it runs.
    pub ended: Option<std::time::Instant>,
}

/// Entries kept of each kind before the cache starts afresh.
const CACHED_ENTRIES: usize = 65_536;

impl Caches {
    fn shard(&self, name: &str) -> Option<ShardRefs> {
        self.shards.lock().ok()?.get(name).cloned()
    }

    fn keep_shard(&self, name: &str, refs: ShardRefs) {
        if let Ok(mut shards) = self.shards.lock() {
            if shards.len() >= CACHED_ENTRIES {
                shards.clear();
            }
            shards.insert(name.to_string(), refs);
        }
    }

    /// Marks `remote` as being maintained; `false` when it is already (the run in progress
    /// then goes round once more).
    fn begin_maintenance(&self, remote: &str) -> bool {
        let Ok(mut runs) = self.maintained.lock() else { return false };
        match runs.get_mut(remote) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                runs.insert(remote.to_string(), false);
                true
            }
        }
    }

    /// Ends a run of maintenance, unless another push asked for one meanwhile: then `true`,
    /// and the run goes round again.
    fn maintenance_again(&self, remote: &str) -> bool {
        let Ok(mut runs) = self.maintained.lock() else { return false };
        if runs.get(remote).copied().unwrap_or(false) {
            runs.insert(remote.to_string(), false);
            return true;
        }
        runs.remove(remote);
        false
    }

    fn record(&self, record: MaintenanceRecord) {
        if let Ok(mut records) = self.records.lock() {
            records.insert(record.remote.clone(), record);
        }
    }

    /// The latest maintenance of every remote, by remote.
    pub fn maintenance(&self) -> Vec<MaintenanceRecord> {
        let mut records: Vec<MaintenanceRecord> =
            self.records.lock().map(|r| r.values().cloned().collect()).unwrap_or_default();
        records.sort_by(|a, b| a.remote.cmp(&b.remote));
        records
    }

    fn tips(&self, pack: &str) -> Option<Arc<Vec<String>>> {
        self.tips.lock().ok()?.get(pack).cloned()
    }

    fn keep_tips(&self, pack: &str, tips: Arc<Vec<String>>) {
        if let Ok(mut all) = self.tips.lock() {
            if all.len() >= CACHED_ENTRIES {
                all.clear();
            }
            all.insert(pack.to_string(), tips);
        }
    }
}

/// One native repository in a bucket, reached on behalf of one caller.
#[derive(Clone)]
pub struct NativeRepo {
    pub bucket: Bucket,
    pub layout: Layout,
    pub config: RemoteConfig,
    pub git: Git,
    pub scratch: Arc<Scratch>,
    caches: Arc<Caches>,
    /// Bundles of the shared layout were seen beside the manifest.
    bundles_beside: bool,
    /// Told when the root has gone away.
    watch: FormatWatch,
}

/// The remote as one read of its root found it.
#[derive(Debug, Clone)]
struct Snapshot {
    root: Root,
    /// The root's version; `None` when there is no root yet.
    etag: Option<String>,
    refs: RefTable,
}

impl Snapshot {
    fn object_format(&self) -> Option<ObjectFormat> {
        self.root.object_format.as_deref().and_then(ObjectFormat::from_name)
    }

    fn remote_refs(&self, with_head: bool, warnings: Vec<String>) -> RemoteRefs {
        let head = with_head.then(|| self.root.head.clone().filter(|h| self.refs.contains_key(h))).flatten();
        RemoteRefs {
            refs: self.refs.iter().map(|(name, oid)| (name.clone(), oid.clone())).collect(),
            head,
            object_format: self.object_format().filter(|_| !self.refs.is_empty()),
            warnings,
        }
    }
}

#[async_trait::async_trait]
impl Repository for NativeRepo {
    fn format(&self) -> Format {
        Format::Native
    }

    async fn list(&self, with_head: bool) -> Result<RemoteRefs, StoreError> {
        let snapshot = self.snapshot().await?;
        Ok(snapshot.remote_refs(with_head, self.warnings()))
    }

    async fn fetch(
        &self,
        wanted: Vec<(String, String)>,
        events: &Events,
    ) -> Result<Vec<std::path::PathBuf>, StoreError> {
        self.fetch_wanted(wanted, events).await
    }

    async fn push(&self, batch: PushBatch, events: &Events) -> Vec<RefOutcome> {
        self.push_batch(batch, events).await
    }

    async fn inventory(&self) -> Result<Inventory, StoreError> {
        self.describe().await
    }

    async fn set_protection(&self, branch: &str, protect: bool) -> Result<(String, bool), ManageError> {
        self.mark_protected(branch, protect).await
    }

    async fn set_head(&self, refname: &str) -> Result<(), ManageError> {
        self.point_head(refname).await
    }

    async fn delete_branch(&self, branch: &str, force: bool) -> Result<(String, Option<String>), ManageError> {
        self.delete_ref(branch, force).await
    }

    async fn doctor(&self, options: &DoctorOptions) -> Result<Vec<Finding>, StoreError> {
        self.diagnose(options).await
    }

    async fn gc_grace(&self, seconds: Option<u64>) -> Result<(u64, bool), ManageError> {
        self.set_grace(seconds).await
    }
}

impl NativeRepo {
    pub fn new(
        remote: Remote,
        scratch: Arc<Scratch>,
        caches: Arc<Caches>,
        bundles_beside: bool,
        watch: FormatWatch,
    ) -> Self {
        let Remote { bucket, layout, config, git } = remote;
        Self { bucket, layout, config, git, scratch, caches, bundles_beside, watch }
    }

    fn warnings(&self) -> Vec<String> {
        if self.bundles_beside {
            vec!["this native remote's prefix holds bundles of the shared layout too; they are not read ('git s3 doctor' shows them)".into()]
        } else {
            Vec::new()
        }
    }

    fn corrupt(key: String, why: impl Into<String>) -> StoreError {
        NativeError::Corrupt { key, why: why.into() }.into()
    }

    /// The root alone: what fetches need.
    async fn read_root(&self) -> Result<(Root, Option<String>), StoreError> {
        let key = root_key(&self.layout);
        match self.bucket.get_small_tagged(&key, MAX_ROOT_BYTES).await {
            Ok(Some((bytes, etag))) => {
                let root = Root::parse(&bytes).map_err(|why| Self::corrupt(key, why))?;
                Ok((root, etag))
            }
            Ok(None) => {
                self.watch.look_again();
                Ok((Root::empty(), None))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The root and every ref. A shard swept between the root's read and its own (it had left
    /// the root; the sweep keeps no old shard for fetches) makes it read the root again, once.
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        match self.snapshot_once().await {
            Err(StoreError::Native(NativeError::Missing { key })) if key.starts_with(&shards_prefix(&self.layout)) => {
                tracing::info!(%key, "a shard went away while the refs were read; reading the manifest again");
                self.snapshot_once().await
            }
            other => other,
        }
    }

    /// The root and every ref: shards are immutable, so each is read from S3 once per daemon.
    async fn snapshot_once(&self) -> Result<Snapshot, StoreError> {
        let (root, etag) = self.read_root().await?;
        let count = root.shards.len();
        // Owned items: closures over borrowed ones trip the compiler's Send check.
        let named: Vec<(usize, String)> =
            root.shards.iter().enumerate().filter_map(|(i, s)| Some((i, s.clone()?))).collect();
        let shards: Vec<Result<ShardRefs, StoreError>> = futures::stream::iter(named)
            .map(|(index, name)| async move { self.read_shard(&name, index, count).await })
            .buffer_unordered(SHARDS_IN_FLIGHT)
            .collect()
            .await;
        let mut refs = RefTable::new();
        let mut formats = std::collections::HashSet::new();
        for shard in shards {
            for (name, oid) in shard?.iter() {
                formats.insert(oid.len());
                refs.insert(name.clone(), oid.clone());
            }
        }
        let expected = root.object_format.as_deref().and_then(ObjectFormat::from_name).map(|f| f.raw_len() * 2);
        if formats.len() > 1 || expected.is_some_and(|len| formats.iter().any(|&l| l != len)) {
            return Err(Self::corrupt(root_key(&self.layout), "its refs are not all in the remote's object format"));
        }
        Ok(Snapshot { root, etag, refs })
    }

    async fn read_shard(&self, name: &str, index: usize, count: usize) -> Result<ShardRefs, StoreError> {
        if let Some(refs) = self.caches.shard(name) {
            return Ok(refs);
        }
        let key = shard_key(&self.layout, name);
        let bytes = self
            .bucket
            .get_small(&key, MAX_SHARD_BYTES)
            .await?
            .ok_or_else(|| NativeError::Missing { key: key.clone() })?;
        let refs = manifest::decode_shard(&bytes, name, index, count).map_err(|why| Self::corrupt(key, why))?;
        let refs = Arc::new(refs);
        self.caches.keep_shard(name, refs.clone());
        Ok(refs)
    }
}
