//! Push: one pack of what the remote lacks (with its index and its tips), then every ref of the
//! push in one commit of the root. `--atomic` is all or none by construction; a non-atomic push
//! commits the refs it may move and reports the others as git does.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::manifest::{PackEntry, RefTable};
use super::{MaintenanceRecord, NativeError, NativeRepo, Snapshot, pack_key};
use crate::git::{Git, GitError};
use crate::layout::check_refname;
use crate::object_format::ObjectFormat;
use crate::progress::{CANCELLED, Events};
use crate::store::zip::publish_zip;
use crate::store::{PushBatch, Pushed, RefOutcome, Refusal, StoreError, check_object_format, choose_head, judge};
use crate::transfer::{TransferError, upload_file};

/// Times a push packs again because the remote was garbage-collected meanwhile.
const PACK_ATTEMPTS: usize = 3;

/// How one attempt of a push ended.
enum Attempt {
    Done {
        outcomes: Vec<RefOutcome>,
        /// Whether the commit added a pack or made garbage (a ref deleted or forced): then
        /// compaction or garbage collection may be due.
        maintain: bool,
    },
    /// A garbage collection committed since the pack was made, or the pack was swept: pack
    /// (and upload) again.
    Collected,
}

/// What one command of the batch asks, once its source is resolved.
struct Wanted {
    dst: String,
    /// `None` deletes the ref.
    new: Option<String>,
}

impl NativeRepo {
    pub(super) async fn push_batch(&self, batch: PushBatch, events: &Events) -> Vec<RefOutcome> {
        if let Err(e) = check_object_format(&self.git, batch.remote_format).await {
            return RefOutcome::refuse_all(&batch, &e.into());
        }
        match self.push_resolved(&batch, events).await {
            Ok(outcomes) => outcomes,
            Err(e) => RefOutcome::refuse_all(&batch, &Refusal::Failed(e.to_string())),
        }
    }

    async fn push_resolved(&self, batch: &PushBatch, events: &Events) -> Result<Vec<RefOutcome>, StoreError> {
        // Each command's new value, or why it cannot be pushed at all; sources resolved at once
        // (a mirror push may name thousands).
        let sources: Vec<&str> = batch.commands.iter().filter(|c| !c.src.is_empty()).map(|c| c.src.as_str()).collect();
        let mut resolved = self.git.resolve_all(&sources).await?.into_iter();
        let mut wanted: Vec<Result<Wanted, Refusal>> = Vec::new();
        for command in &batch.commands {
            let dst = command.dst.clone();
            let new = if command.src.is_empty() { None } else { Some(resolved.next().flatten()) };
            wanted.push(match (check_refname(&dst), new) {
                (Err(why), _) => Err(Refusal::InvalidRefName(why.to_string())),
                (Ok(()), None) => Ok(Wanted { dst, new: None }),
                (Ok(()), Some(Some(oid))) => Ok(Wanted { dst, new: Some(oid) }),
                (Ok(()), Some(None)) => Err(Refusal::NoSuchSource(command.src.clone())),
            });
        }
        for _ in 0..PACK_ATTEMPTS {
            let (outcomes, maintain) = match self.push_once(batch, &wanted, events).await? {
                Attempt::Done { outcomes, maintain } => (outcomes, maintain),
                Attempt::Collected => {
                    tracing::info!(
                        "the remote was garbage-collected, or the pack swept, while this push ran; packing again"
                    );
                    continue;
                }
            };
            if self.config.url.zip {
                self.publish_zips(&wanted, &outcomes, events).await;
            }
            if maintain {
                self.maintain_in_background();
            }
            return Ok(outcomes);
        }
        Err(NativeError::Contended.into())
    }

    /// Starts `maintain`: the remote's work, not the client's, it goes on after the client leaves.
    pub(super) fn maintain_in_background(&self) {
        let repo = self.clone();
        tokio::spawn(async move { repo.maintain().await });
    }

    /// Compaction, then garbage collection, each when due; one run per remote at a time (a
    /// push that finds one running leaves the work to it, or to the next push).
    async fn maintain(&self) {
        let remote = format!("{} {}", self.bucket.name(), self.layout);
        if !self.caches.begin_maintenance(&remote) {
            return;
        }
        self.caches.record(self.maintenance_record(vec!["running".into()], None).await);
        let mut did = Vec::new();
        loop {
            match self.compact().await {
                Ok(done) => did.extend(done),
                Err(e) => tracing::warn!(error = %e, "compaction failed; the next push tries again"),
            }
            match self.collect_garbage().await {
                Ok(done) => did.extend(done),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed; the next push tries again"),
            }
            match self.sweep_after_grace().await {
                Ok(done) => did.extend(done),
                Err(e) => tracing::warn!(error = %e, "sweeping old packs failed; the next push tries again"),
            }
            if !self.caches.maintenance_again(&remote) {
                break;
            }
        }
        self.caches.record(self.maintenance_record(did, Some(std::time::Instant::now())).await);
    }

    async fn maintenance_record(&self, did: Vec<String>, ended: Option<std::time::Instant>) -> MaintenanceRecord {
        let (packs, bytes) = match self.read_root().await {
            Ok((root, _)) => (root.packs.len(), root.pack_bytes()),
            Err(_) => (0, 0),
        };
        let did = if did.is_empty() { "nothing was due".to_string() } else { did.join("; ") };
        let remote = format!("s3://{}/{}", self.bucket.name(), self.layout);
        MaintenanceRecord { remote, packs, bytes, did, ended }
    }

    /// One pack of what the remote lacks, then one commit of every ref. A garbage collection
    /// committed after the snapshot the pack was made against may have dropped objects the pack
    /// left out as the remote's (or that a new value without a pack rests on): then nothing is
    /// committed and the push packs again.
    async fn push_once(
        &self,
        batch: &PushBatch,
        wanted: &[Result<Wanted, Refusal>],
        events: &Events,
    ) -> Result<Attempt, StoreError> {
        let snapshot = self.snapshot().await?;
        check_object_format(&self.git, snapshot.object_format()).await?;
        let verdicts = self.judge_all(batch, wanted, &snapshot).await;
        let done = |outcomes| Ok(Attempt::Done { outcomes, maintain: false });
        if batch.atomic && verdicts.iter().any(Result::is_err) {
            return done(atomic_failure(batch, verdicts));
        }
        if batch.dry_run {
            return done(outcomes(batch, verdicts));
        }
        let tips: BTreeSet<String> = wanted
            .iter()
            .zip(&verdicts)
            .filter(|(_, verdict)| verdict.is_ok())
            .filter_map(|(w, _)| w.as_ref().ok())
            .filter(|w| w.new.is_some() && w.new.as_ref() != snapshot.refs.get(&w.dst))
            .filter_map(|w| w.new.clone())
            .collect();
        let cancelled = || done(RefOutcome::refuse_all(batch, &Refusal::Failed(CANCELLED.into())));
        let pack = if tips.is_empty() {
            None
        } else {
            tokio::select! {
                biased;
                pack = self.send_pack(&tips, &snapshot, events) => pack?,
                () = events.cancelled() => return cancelled(),
            }
        };
        // The commit is this push's point of no return: a client gone before it changes nothing.
        if events.is_cancelled() {
            return cancelled();
        }
        let preferred = self.git.run(&["symbolic-ref", "-q", "HEAD"]).await.ok();
        let object_format = self.git.object_format().await?;
        let packed_against = snapshot.root.gc;
        let pack = &pack;
        let preferred = preferred.as_deref();
        let committed = self
            .commit_with(move |snapshot: Arc<Snapshot>| {
                Box::pin(async move {
                    let snapshot = &*snapshot;
                    // New values rest on objects the remote had at `packed_against`.
                    let sets_values = wanted.iter().any(|w| matches!(w, Ok(Wanted { new: Some(_), .. })));
                    if sets_values && snapshot.root.gc != packed_against {
                        return Ok::<_, StoreError>((None, Attempt::Collected));
                    }
                    // A push slow enough for doctor's sweep to take its pack uploads it again.
                    if let Some(pack) = pack.as_ref().filter(|p| !snapshot.root.has_pack(&p.name))
                        && self.bucket.head(&pack_key(&self.layout, &pack.name, "pack")).await?.is_none()
                    {
                        return Ok((None, Attempt::Collected));
                    }
                    let verdicts = self.judge_all(batch, wanted, snapshot).await;
                    if batch.atomic && verdicts.iter().any(Result::is_err) {
                        let outcomes = atomic_failure(batch, verdicts);
                        return Ok((None, Attempt::Done { outcomes, maintain: false }));
                    }
                    let mut refs = snapshot.refs.clone();
                    let mut rewrites = 0;
                    let mut pushed_branches = Vec::new();
                    for (w, verdict) in wanted.iter().zip(&verdicts) {
                        let (Ok(w), Ok(forced)) = (w, verdict) else { continue };
                        let old = match &w.new {
                            Some(new) => refs.insert(w.dst.clone(), new.clone()),
                            None => refs.remove(&w.dst),
                        };
                        // Only a deleted or forced ref can leave objects nobody reaches.
                        rewrites += u64::from(old.is_some() && old != w.new && (*forced || w.new.is_none()));
                        if w.new.is_some() && w.dst.starts_with("refs/heads/") {
                            pushed_branches.push(w.dst.as_str());
                        }
                    }
                    let changed_refs = refs != snapshot.refs;
                    let mut next = snapshot.root.successor();
                    next.rewrites += rewrites;
                    // The pack goes in with the first ref it gives a new value.
                    let packed = pack.as_ref().filter(|p| changed_refs && !snapshot.root.has_pack(&p.name));
                    if let Some(pack) = packed {
                        next.packs.push(pack.clone());
                    }
                    if next.gc_bytes == 0 {
                        next.gc_bytes = next.pack_bytes();
                    }
                    if snapshot.etag.is_none()
                        && let Some(grace) = self.config.gc_grace
                    {
                        next.grace_s = grace.as_secs();
                    }
                    next.object_format.get_or_insert_with(|| object_format.name().to_string());
                    next.protected.retain(|name| refs.contains_key(name));
                    let head = choose_next_head(snapshot.root.head.as_deref(), &refs, &pushed_branches, preferred);
                    let changed = changed_refs || head != next.head || packed.is_some();
                    next.head = head;
                    let maintain = changed && (packed.is_some() || rewrites > 0);
                    let attempt = Attempt::Done { outcomes: outcomes(batch, verdicts), maintain };
                    Ok((changed.then_some((next, refs)), attempt))
                })
            })
            .await;
        match committed {
            Ok(attempt) => Ok(attempt),
            Err(e) => done(RefOutcome::refuse_all(batch, &Refusal::Failed(e.to_string()))),
        }
    }

    /// `s3+zip://`: the zip beside each ref pushed, removed with a deleted one. The refs are
    /// committed already; a zip that cannot be written is a warning.
    async fn publish_zips(&self, wanted: &[Result<Wanted, Refusal>], outcomes: &[RefOutcome], events: &Events) {
        for (w, outcome) in wanted.iter().zip(outcomes) {
            let (Ok(w), Ok(_)) = (w, &outcome.result) else { continue };
            let result = match &w.new {
                Some(oid) => publish_zip(&self.bucket, &self.layout, &self.git, &w.dst, oid).await,
                None => self.bucket.delete(&self.layout.zip(&w.dst)).await.map_err(StoreError::from),
            };
            if let Err(e) = result {
                events.message(format!("warning: {} was pushed but its zip was not written: {e}", w.dst)).await;
            }
        }
    }

    /// Each command judged against `snapshot`: whether it moves its ref by force, or why not.
    /// A ref that already has the value pushed is fine whatever git was told (a retry of a
    /// commit that won after all).
    async fn judge_all(
        &self,
        batch: &PushBatch,
        wanted: &[Result<Wanted, Refusal>],
        snapshot: &Snapshot,
    ) -> Vec<Result<bool, Refusal>> {
        let mut verdicts = Vec::with_capacity(wanted.len());
        for (command, w) in batch.commands.iter().zip(wanted) {
            verdicts.push(match w {
                Err(why) => Err(why.clone()),
                Ok(w) => {
                    let current = snapshot.refs.get(&w.dst).map(String::as_str);
                    let advertised = batch.advertised.get(&w.dst).map(String::as_str);
                    if current.is_some() && current == w.new.as_deref() && current != advertised {
                        Ok(false)
                    } else {
                        let protected = snapshot.root.is_protected(&w.dst);
                        judge(&self.git, command, batch, current, w.new.as_deref(), protected).await
                    }
                }
            });
        }
        verdicts
    }

    /// The entry of the pack `git pack-objects` wrote as `<dir>/<base>-<name>.pack`; `None`
    /// when it holds no object.
    pub(super) async fn pack_entry(&self, dir: &Path, base: &str, name: &str) -> Result<Option<PackEntry>, StoreError> {
        let pack_path = dir.join(format!("{base}-{name}.pack"));
        let objects = pack_object_count(&pack_path).await?;
        if objects == 0 {
            return Ok(None);
        }
        let bytes = file_len(&pack_path).await?;
        let idx_bytes = file_len(&dir.join(format!("{base}-{name}.idx"))).await?;
        Ok(Some(PackEntry { name: name.to_string(), objects, bytes, idx_bytes, replaces: Vec::new() }))
    }

    /// Uploads the pack `<dir>/<base>-<name>.pack`, its index and `tips`; `None` when it holds
    /// no object (nothing is uploaded then).
    pub(super) async fn upload_pack(
        &self,
        dir: &Path,
        base: &str,
        name: &str,
        tips: &BTreeSet<String>,
        events: &Events,
    ) -> Result<Option<PackEntry>, StoreError> {
        let Some(entry) = self.pack_entry(dir, base, name).await? else { return Ok(None) };
        let meter = events.meter("Sending pack", entry.bytes + entry.idx_bytes);
        let tips_text: String = tips.iter().map(|tip| format!("{tip}\n")).collect();
        let (pack_at, idx_at, tips_at) = (
            pack_key(&self.layout, name, "pack"),
            pack_key(&self.layout, name, "idx"),
            pack_key(&self.layout, name, "tips"),
        );
        let (pack_path, idx_path) = (dir.join(format!("{base}-{name}.pack")), dir.join(format!("{base}-{name}.idx")));
        let (pack, idx, tips) = tokio::join!(
            self.upload_file(&pack_at, &pack_path, entry.bytes, meter.counter()),
            self.upload_file(&idx_at, &idx_path, entry.idx_bytes, meter.counter()),
            self.bucket.put_bytes(&tips_at, tips_text.into_bytes(), Default::default()),
        );
        pack?;
        idx?;
        tips?;
        meter.finish();
        Ok(Some(entry))
    }

    /// `git pack-objects <options>` of `input` into `<base>-<name>.pack` and `.idx`, in the
    /// repository of `git`; returns the pack's name.
    pub(super) async fn pack_objects_with(
        &self,
        git: &Git,
        options: &[&str],
        base: &Path,
        input: String,
    ) -> Result<String, StoreError> {
        let base = base.to_string_lossy();
        let mut args = vec!["pack-objects", "--delta-base-offset", "-q"];
        args.extend(options);
        args.push(base.as_ref());
        let output = git.run_with_input(&args, input.as_bytes()).await?;
        pack_name(&output)
    }

    pub(super) async fn upload_file(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        sent: Arc<AtomicU64>,
    ) -> Result<(), StoreError> {
        upload_file(&self.bucket, key, path, size, &sent).await.map_err(transfer_error)
    }
}

/// The name `git pack-objects` printed for the pack it wrote.
pub(super) fn pack_name(stdout: &[u8]) -> Result<String, StoreError> {
    let name = String::from_utf8_lossy(stdout).trim().to_string();
    if ObjectFormat::of_hex(&name).is_none() {
        return Err(GitError::Unexpected { command: "pack-objects".into(), output: name }.into());
    }
    Ok(name)
}

/// A failed upload of a pack this daemon built: S3's error, or the local pack's.
pub(super) fn transfer_error(e: TransferError) -> StoreError {
    match e {
        TransferError::S3(e) => e.into(),
        TransferError::Read(e) => NativeError::LocalPack(e).into(),
        TransferError::Refused(why) => NativeError::LocalPack(std::io::Error::other(why)).into(),
    }
}

/// HEAD after a push: kept while it names a ref; else the pusher's current branch if it was
/// pushed, else main, else master, else the first branch.
fn choose_next_head(
    head: Option<&str>,
    refs: &RefTable,
    pushed_branches: &[&str],
    preferred: Option<&str>,
) -> Option<String> {
    if let Some(head) = head.filter(|h| refs.contains_key(*h)) {
        return Some(head.to_string());
    }
    let choice = choose_head(pushed_branches, preferred).or_else(|| {
        let branches: Vec<&str> = refs.keys().map(String::as_str).filter(|n| n.starts_with("refs/heads/")).collect();
        choose_head(&branches, None)
    });
    choice.map(str::to_string)
}

fn outcomes(batch: &PushBatch, verdicts: Vec<Result<bool, Refusal>>) -> Vec<RefOutcome> {
    batch
        .commands
        .iter()
        .zip(verdicts)
        .map(|(c, verdict)| RefOutcome { dst: c.dst.clone(), result: verdict.map(|forced| Pushed { forced }) })
        .collect()
}

/// The first refusal stands; every other ref of the atomic push was not written either.
fn atomic_failure(batch: &PushBatch, verdicts: Vec<Result<bool, Refusal>>) -> Vec<RefOutcome> {
    let mut first = true;
    batch
        .commands
        .iter()
        .zip(verdicts)
        .map(|(c, verdict)| {
            let result = match verdict {
                Err(why) if first => {
                    first = false;
                    Err(why)
                }
                _ => Err(Refusal::AtomicPushFailed),
            };
            RefOutcome { dst: c.dst.clone(), result }
        })
        .collect()
}

/// The object count in a pack's header (`PACK`, version, count).
async fn pack_object_count(path: &Path) -> Result<u64, StoreError> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 12];
    let mut file = tokio::fs::File::open(path).await.map_err(NativeError::LocalPack)?;
    file.read_exact(&mut header).await.map_err(NativeError::LocalPack)?;
    Ok(u64::from(u32::from_be_bytes([header[8], header[9], header[10], header[11]])))
}

async fn file_len(path: &Path) -> Result<u64, StoreError> {
    Ok(tokio::fs::metadata(path).await.map_err(NativeError::LocalPack)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_stays_while_it_names_a_ref() {
        let refs: RefTable =
            [("refs/heads/dev", "a"), ("refs/heads/main", "b")].map(|(n, o)| (n.to_string(), o.to_string())).into();
        assert_eq!(choose_next_head(Some("refs/heads/dev"), &refs, &[], None).as_deref(), Some("refs/heads/dev"));
        assert_eq!(choose_next_head(Some("refs/heads/gone"), &refs, &[], None).as_deref(), Some("refs/heads/main"));
        assert_eq!(
            choose_next_head(None, &refs, &["refs/heads/dev"], Some("refs/heads/dev")).as_deref(),
            Some("refs/heads/dev")
        );
        assert_eq!(choose_next_head(None, &RefTable::new(), &[], None), None);
    }
}
