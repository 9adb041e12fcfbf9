//! Fetch and clone: the packs holding what the repository lacks, several at once, each streamed
//! into `git index-pack` as it arrives and verified by it (a stored `.idx` is never used here).
//!
//! Which packs: every pack names its tips (the values its push gave refs). A repository that
//! has a tip has everything reachable from it, so a pack is needed only if one of its tips is
//! missing here. Packs whose tips went away with their refs (forced, deleted) would then be
//! downloaded by every fetch; the repository keeps a record of the packs it fetched
//! (`$GIT_DIR/git-remote-s3/native-packs-<remote>`) to skip those. A wrong record (a copied
//! repository, objects pruned) costs bytes, never correctness: when the fetch still lacks
//! objects after the unrecorded packs, the recorded ones it needs are fetched too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;

use super::manifest::{PackEntry, sha256_hex};
use super::{NativeError, NativeRepo, pack_key};
use crate::git::{Git, GitError, last_line};
use crate::object_format::ObjectFormat;
use crate::progress::Events;
use crate::quarantine::Quarantine;
use crate::store::download::{ResumingBody, feed_rest, in_tasks, index_pack, keep_file};
use crate::store::{StoreError, check_object_format};

/// Packs downloaded at once by one fetch.
const PACKS_IN_FLIGHT: usize = 4;
/// Tips files read at once.
const TIPS_IN_FLIGHT: usize = 16;
/// A pack's tips are the refs of one push: at most a few hundred KiB of ids.
const MAX_TIPS_BYTES: usize = 16 * 1024 * 1024;

impl NativeRepo {
    pub(super) async fn fetch_wanted(
        &self,
        wanted: Vec<(String, String)>,
        events: &Events,
    ) -> Result<Vec<PathBuf>, StoreError> {
        match self.fetch_once(&wanted, events).await {
            // The root this fetch read named a pack a compaction has replaced and a sweep removed
            // since: the current root names its successor.
            Err(StoreError::Native(NativeError::Missing { key })) => {
                tracing::info!(%key, "a pack went away during the fetch; reading the manifest again");
                self.fetch_once(&wanted, events).await
            }
            other => other,
        }
    }

    async fn fetch_once(&self, wanted: &[(String, String)], events: &Events) -> Result<Vec<PathBuf>, StoreError> {
        let oids: Vec<&str> = wanted.iter().map(|(_, oid)| oid.as_str()).collect();
        if let Some(remote) = oids.iter().find_map(|oid| ObjectFormat::of_hex(oid)) {
            check_object_format(&self.git, Some(remote)).await?;
        }
        let present = self.git.present(&oids).await?;
        if oids.iter().all(|oid| present.contains(*oid)) {
            return Ok(Vec::new());
        }
        let (root, _) = self.read_root().await?;
        let record_path = self.record_path().await?;
        let record = read_record(&record_path);
        let objects = self.git.git_path("objects").await?;
        // Dropped on any failure, with everything this fetch wrote and nothing else.
        let quarantine =
            Quarantine::new(&objects).map_err(|source| StoreError::Quarantine { what: "create", source })?;
        let inside = quarantine.git(&self.git);
        let pack_dir = quarantine.pack_dir();

        let unrecorded: Vec<PackEntry> = root.packs.iter().filter(|p| !record.contains(&p.name)).cloned().collect();
        let needed = self.packs_lacking(&self.git, unrecorded).await?;
        let (needed, substituted) = self.substitute(needed, &record).await?;
        let downloaded: HashSet<String> = needed.iter().map(|p| p.name.clone()).collect();
        // What the repository has all of once these packs are in: the record to be.
        let mut fetched: HashSet<String> = downloaded.union(&substituted).cloned().collect();
        let mut keeps = self.download(&inside, needed, &pack_dir, events).await?;
        let trusted: Vec<PackEntry> = root
            .packs
            .iter()
            .filter(|p| (record.contains(&p.name) || substituted.contains(&p.name)) && !downloaded.contains(&p.name))
            .cloned()
            .collect();
        if !trusted.is_empty() && !self.complete(&inside, &oids).await? {
            tracing::info!("the record of fetched packs was wrong; fetching the recorded packs this repository needs");
            let more = self.packs_lacking(&inside, trusted).await?;
            fetched.extend(more.iter().map(|p| p.name.clone()));
            keeps.extend(self.download(&inside, more, &pack_dir, events).await?);
        }
        let fetched_now = inside.present(&oids).await?;
        if let Some((refname, oid)) = wanted.iter().find(|(_, oid)| !fetched_now.contains(oid)) {
            return Err(StoreError::NotFetched { refname: refname.clone(), oid: oid.clone() });
        }
        let keeps = quarantine
            .migrate(&keeps)
            .map_err(|source| StoreError::Quarantine { what: "move the packs out of", source })?;
        // Only packs the remote still names: merged ones leave the record with the manifest.
        let now: Vec<&str> = root
            .packs
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| record.contains(*n) || fetched.contains(*n))
            .collect();
        if let Err(e) = write_record(&record_path, &now) {
            tracing::warn!(error = %e, "could not record the fetched packs; the next fetch may download some again");
        }
        Ok(keeps)
    }

    /// A pack a compaction or collection made of packs this repository partly has (by its
    /// record) is replaced by the ones it lacks, while they are still in the bucket (retired
    /// packs stay for the grace period): a reader that fetched before a merge downloads the
    /// change, not the merged history. Returns the packs to download and the merged packs whose
    /// objects the repository will then have.
    async fn substitute(
        &self,
        needed: Vec<PackEntry>,
        record: &HashSet<String>,
    ) -> Result<(Vec<PackEntry>, HashSet<String>), StoreError> {
        let mut packs = Vec::new();
        let mut substituted = HashSet::new();
        for pack in needed {
            if !pack.replaces.iter().any(|name| record.contains(name)) {
                packs.push(pack);
                continue;
            }
            let lacking: Vec<PackEntry> = pack
                .replaces
                .iter()
                .filter(|name| !record.contains(*name))
                .map(|name| PackEntry { name: name.clone(), objects: 0, bytes: 0, idx_bytes: 0, replaces: Vec::new() })
                .collect();
            let lacking = self.packs_lacking(&self.git, lacking).await?;
            let mut present = true;
            for replaced in &lacking {
                present &= self.bucket.head(&pack_key(&self.layout, &replaced.name, "pack")).await?.is_some();
            }
            if present {
                tracing::debug!(pack = %pack.name, instead = lacking.len(), "fetching the packs a merged pack replaced");
                substituted.insert(pack.name);
                packs.extend(lacking);
            } else {
                packs.push(pack);
            }
        }
        Ok((packs, substituted))
    }

    /// Where this repository records the packs it fetched from this remote.
    async fn record_path(&self) -> Result<PathBuf, StoreError> {
        let remote = format!("{:?} {} {}", self.config.s3.endpoint, self.bucket.name(), self.layout);
        let name = format!("git-remote-s3/native-packs-{}", &sha256_hex(remote.as_bytes())[..16]);
        Ok(self.git.git_path(&name).await?)
    }

    /// Whether everything reachable from `oids` is in the repository `git` writes to.
    async fn complete(&self, git: &Git, oids: &[&str]) -> Result<bool, StoreError> {
        let mut args = vec!["rev-list", "--objects", "--quiet"];
        args.extend(oids.iter().copied());
        args.extend(["--not", "--all"]);
        Ok(git.succeeds(&args).await?)
    }

    /// The packs among `packs` with a tip `git`'s repository lacks (or whose tips cannot be read).
    async fn packs_lacking(&self, git: &Git, packs: Vec<PackEntry>) -> Result<Vec<PackEntry>, StoreError> {
        // Owned items: closures over borrowed ones trip the compiler's Send check.
        let names: Vec<String> = packs.iter().map(|p| p.name.clone()).collect();
        let tips: Vec<Option<Arc<Vec<String>>>> = futures::stream::iter(names)
            .map(|name| async move { self.read_tips(&name).await })
            .buffered(TIPS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let all: Vec<&str> = tips.iter().flatten().flat_map(|t| t.iter().map(String::as_str)).collect();
        let present = git.present(&all).await?;
        Ok(packs
            .into_iter()
            .zip(&tips)
            .filter(|(_, tips)| tips.as_ref().is_none_or(|t| t.iter().any(|tip| !present.contains(tip))))
            .map(|(pack, _)| pack)
            .collect())
    }

    /// A pack's tips, `None` when they cannot be read (then the pack counts as needed).
    pub(super) async fn read_tips(&self, name: &str) -> Result<Option<Arc<Vec<String>>>, StoreError> {
        if let Some(tips) = self.caches.tips(name) {
            return Ok(Some(tips));
        }
        let key = pack_key(&self.layout, name, "tips");
        let Some(bytes) = self.bucket.get_small(&key, MAX_TIPS_BYTES).await? else {
            tracing::warn!(%key, "a pack's tips are missing; fetching the pack");
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        let tips: Vec<String> = text.lines().map(str::trim).map(str::to_string).collect();
        if tips.iter().any(|tip| ObjectFormat::of_hex(tip).is_none()) {
            tracing::warn!(%key, "a pack's tips are not object ids; fetching the pack");
            return Ok(None);
        }
        let tips = Arc::new(tips);
        self.caches.keep_tips(name, tips.clone());
        Ok(Some(tips))
    }

    /// Downloads `packs` into the quarantine `git` writes to, `PACKS_IN_FLIGHT` at once (each a
    /// task of its own: `in_tasks`); returns their `.keep` files.
    pub(super) async fn download(
        &self,
        git: &Git,
        packs: Vec<PackEntry>,
        pack_dir: &Path,
        events: &Events,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let keeps = in_tasks(packs, PACKS_IN_FLIGHT, |pack| {
            let (repo, git, pack_dir, events) = (self.clone(), git.clone(), pack_dir.to_path_buf(), events.clone());
            async move { repo.download_pack(&git, &pack, &pack_dir, &events).await }
        })
        .await?;
        Ok(keeps.into_iter().flatten().collect())
    }

    /// Streams one pack into `git index-pack`, which checks every object and computes the
    /// pack's name from its bytes: it must be the name the manifest gives.
    async fn download_pack(
        &self,
        git: &Git,
        pack: &PackEntry,
        pack_dir: &Path,
        events: &Events,
    ) -> Result<Option<PathBuf>, StoreError> {
        let key = pack_key(&self.layout, &pack.name, "pack");
        let bad = |why: String| StoreError::from(NativeError::BadPack { key: key.clone(), why });
        let body =
            self.bucket.get_from(&key, 0, None).await?.ok_or_else(|| NativeError::Missing { key: key.clone() })?;
        let meter = events.meter(format!("Receiving pack {}", &pack.name[..12]), body.len);
        let mut body = ResumingBody::new(&self.bucket, &key, body);
        let (child, stdin) = index_pack(git, &format!("pack {}", pack.name), false)?;
        let (fed, output) = tokio::join!(feed_rest(&mut body, stdin, &meter), child.wait_with_output());
        let output = output.map_err(GitError::Spawn)?;
        if let Err(e) = fed {
            return Err(StoreError::Download { key: key.clone(), why: e.to_string() });
        }
        if !output.status.success() {
            return Err(bad(format!("git index-pack: {}", last_line(&output.stderr))));
        }
        let (keep, hash) = keep_file(&output.stdout, pack_dir);
        if hash.as_deref() != Some(pack.name.as_str()) {
            return Err(bad(format!("its objects make pack {}", hash.unwrap_or_default())));
        }
        meter.finish();
        Ok(keep)
    }
}

fn read_record(path: &Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Replaces the record whole (a crash leaves the old one or the new one).
fn write_record(path: &Path, packs: &[&str]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("the record has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, packs.iter().map(|p| format!("{p}\n")).collect::<String>().as_bytes())?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
