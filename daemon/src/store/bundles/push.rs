//! Push: each ref under its lock, checked against what git was told, its new bundle uploaded
//! (composed from an old one where that pays) before the old one is removed.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::compose::{Composed, Teed};
use super::keys::{BundleKeys, RefKey};
use super::listing::{RefState, default_branch};
use super::lock::RefLock;
use super::segmented::{BundleBases, NoBase};
use super::{BundleRepo, Head, release};
use crate::bucket::PutOptions;
use crate::git::{Git, GitError, last_line};
use crate::layout::check_refname;
use crate::progress::{CANCELLED, Events};
use crate::store::zip::publish_zip;
use crate::store::{
    PushBatch, PushCommand, Pushed, RefOutcome, Refusal, StoreError, check_object_format, choose_head, judge,
};
use crate::transfer::{TransferError, upload_stream};

/// Refs pushed at once by one non-atomic push.
const REFS_IN_FLIGHT: usize = 8;

/// A ref checked under its lock and ready to be written.
pub(super) struct Prepared {
    pub(super) command: PushCommand,
    /// `None` deletes the ref.
    new_oid: Option<String>,
    pub(super) state: RefState,
    pub(super) lock: RefLock,
    forced: bool,
    /// The remote already has this value.
    unchanged: bool,
    /// The new bundle is becoming visible: the push finishes, whoever waits for it.
    past_no_return: AtomicBool,
}

impl Prepared {
    /// Called right before the new bundle becomes the ref's value (its upload completes): from
    /// here on the push finishes even if its client goes away. Refuses when it is gone already.
    pub(super) fn pass_point_of_no_return(&self, events: &Events) -> Result<(), String> {
        self.past_no_return.store(true, Ordering::SeqCst);
        if events.is_cancelled() { Err(CANCELLED.into()) } else { Ok(()) }
    }
}

impl BundleRepo {
    // ----- push -----

    pub(super) async fn push_batch(&self, batch: PushBatch, events: &Events) -> Vec<RefOutcome> {
        if let Err(e) = check_object_format(&self.git, batch.remote_format).await {
            return RefOutcome::refuse_all(&batch, &e.into());
        }
        let bases = if batch.dry_run { BundleBases::default() } else { self.bundle_bases(&batch).await };
        let outcomes = if batch.atomic {
            self.push_atomic(&batch, &bases, events).await
        } else {
            // In the order later refs build on earlier ones' bundles; the trunk alone first, as
            // the other branches build on it.
            let mut order: Vec<usize> = (0..batch.commands.len()).collect();
            order.sort_by_key(|&i| bases.build_order(&batch.commands[i].dst));
            let trunk_first = order.first().is_some_and(|&i| bases.is_trunk(&batch.commands[i].dst));
            let rest = order.split_off(usize::from(trunk_first));
            let (batch, bases) = (&batch, &bases);
            let push_one = |i: usize| async move {
                let command = &batch.commands[i];
                let result = match self.prepare(command, batch, events).await {
                    Ok(prepared) => self.write_and_commit(prepared, batch, bases, events).await,
                    Err(why) => Err(why),
                };
                (i, RefOutcome { dst: command.dst.clone(), result })
            };
            let mut outcomes = Vec::with_capacity(batch.commands.len());
            for i in order {
                outcomes.push(push_one(i).await);
            }
            outcomes
                .extend(futures::stream::iter(rest).map(push_one).buffered(REFS_IN_FLIGHT).collect::<Vec<_>>().await);
            outcomes.sort_by_key(|(i, _)| *i);
            outcomes.into_iter().map(|(_, outcome)| outcome).collect()
        };
        if !batch.dry_run
            && let Err(e) = self.set_head_if_missing(&batch, &outcomes).await
        {
            tracing::warn!(error = %e, "could not set the remote's HEAD");
        }
        outcomes
    }

    /// A remote without HEAD gets one once the batch is done (refs of a batch are pushed in
    /// parallel, so "the first push" would be a race): the pusher's current branch if it was
    /// pushed, else main, else master, else the batch's first branch.
    async fn set_head_if_missing(&self, batch: &PushBatch, outcomes: &[RefOutcome]) -> Result<(), StoreError> {
        let pushed: Vec<&str> = batch
            .commands
            .iter()
            .zip(outcomes)
            .filter(|(c, o)| !c.src.is_empty() && o.result.is_ok() && c.dst.starts_with("refs/heads/"))
            .map(|(c, _)| c.dst.as_str())
            .collect();
        if pushed.is_empty() || self.bucket.head(&self.layout.head()).await?.is_some() {
            return Ok(());
        }
        let current = self.git.run(&["symbolic-ref", "-q", "HEAD"]).await.ok();
        let Some(choice) = choose_head(&pushed, current.as_deref()) else {
            return Ok(());
        };
        let options = PutOptions { if_none_match_any: true, ..Default::default() };
        self.bucket.put_bytes(&self.layout.head(), choice.as_bytes().to_vec(), options).await?;
        Ok(())
    }

    async fn write_and_commit(
        &self,
        prepared: Prepared,
        batch: &PushBatch,
        bases: &BundleBases,
        events: &Events,
    ) -> Result<Pushed, Refusal> {
        if batch.dry_run {
            let forced = prepared.forced;
            release(prepared.lock).await;
            return Ok(Pushed { forced });
        }
        if let Err(why) = self.upload(&prepared, bases, events).await {
            release(prepared.lock).await;
            return Err(Refusal::Failed(why));
        }
        self.commit(prepared).await
    }

    /// Every ref is checked under its lock before any is written; then all new bundles are
    /// uploaded, and only when all are in place are the old ones removed. A failure before
    /// that point leaves every ref as it was.
    async fn push_atomic(&self, batch: &PushBatch, bases: &BundleBases, events: &Events) -> Vec<RefOutcome> {
        let mut prepared = Vec::new();
        let mut failure = None;
        for command in &batch.commands {
            match self.prepare(command, batch, events).await {
                Ok(p) => prepared.push(p),
                Err(why) => {
                    failure = Some((command.dst.clone(), why));
                    break;
                }
            }
        }
        if failure.is_none() && !batch.dry_run {
            for (i, p) in prepared.iter().enumerate() {
                if let Err(why) = self.upload(p, bases, events).await {
                    for done in &prepared[..i] {
                        self.remove_uploaded(done).await;
                    }
                    failure = Some((p.command.dst.clone(), Refusal::Failed(why)));
                    break;
                }
            }
            // The commit of every ref is this push's point of no return; a client gone before it
            // leaves every ref as it was.
            if failure.is_none()
                && events.is_cancelled()
                && let Some(last) = prepared.last()
            {
                for done in &prepared {
                    self.remove_uploaded(done).await;
                }
                failure = Some((last.command.dst.clone(), Refusal::Failed(CANCELLED.into())));
            }
        }
        if let Some((failed_dst, why)) = failure {
            for p in prepared {
                release(p.lock).await;
            }
            return batch
                .commands
                .iter()
                .map(|c| {
                    let result = if c.dst == failed_dst { Err(why.clone()) } else { Err(Refusal::AtomicPushFailed) };
                    RefOutcome { dst: c.dst.clone(), result }
                })
                .collect();
        }
        let mut outcomes = Vec::new();
        for p in prepared {
            let dst = p.command.dst.clone();
            let result = if batch.dry_run {
                let forced = p.forced;
                release(p.lock).await;
                Ok(Pushed { forced })
            } else {
                self.commit(p).await
            };
            outcomes.push(RefOutcome { dst, result });
        }
        outcomes
    }

    /// Takes the ref's lock and decides, from a fresh read of the ref folder, whether and how the
    /// command may proceed. Errors are git's reserved words where git has them.
    async fn prepare(&self, command: &PushCommand, batch: &PushBatch, events: &Events) -> Result<Prepared, Refusal> {
        if events.is_cancelled() {
            return Err(Refusal::Failed(CANCELLED.into()));
        }
        let dst = &command.dst;
        check_refname(dst).map_err(|why| Refusal::InvalidRefName(why.to_string()))?;
        let new_oid = if command.src.is_empty() {
            None
        } else {
            match self.git.resolve(&command.src).await? {
                Some(oid) => Some(oid),
                None => return Err(Refusal::NoSuchSource(command.src.clone())),
            }
        };
        let lock = RefLock::acquire(&self.bucket, &self.layout.lock(dst), dst, self.config.lock_ttl).await?;
        match self.decide(command, batch, new_oid, lock).await {
            Ok(prepared) => Ok(prepared),
            Err((why, lock)) => {
                release(lock).await;
                Err(why)
            }
        }
    }

    async fn decide(
        &self,
        command: &PushCommand,
        batch: &PushBatch,
        new_oid: Option<String>,
        lock: RefLock,
    ) -> Result<Prepared, (Refusal, RefLock)> {
        let dst = &command.dst;
        let state = match self.read_ref(dst).await {
            Ok(state) => state,
            Err(e) => return Err((e.into(), lock)),
        };
        let current = state.current().map(|b| b.oid.clone());
        let forced =
            match judge(&self.git, command, batch, current.as_deref(), new_oid.as_deref(), state.protected).await {
                Ok(forced) => forced,
                Err(why) => return Err((why, lock)),
            };
        let unchanged = current == new_oid;
        Ok(Prepared {
            command: command.clone(),
            new_oid,
            state,
            lock,
            forced,
            unchanged,
            past_no_return: AtomicBool::new(false),
        })
    }

    /// Uploads the new bundle; the ref folder then holds old and new until `commit`. When the
    /// client goes away before the upload passes its point of no return, the upload is given up
    /// with everything it started (the multipart upload is aborted, `git bundle create` killed,
    /// temporary files removed) and the ref stays as it was.
    async fn upload(&self, prepared: &Prepared, bases: &BundleBases, events: &Events) -> Result<(), String> {
        let given_up = async {
            events.cancelled().await;
            if prepared.past_no_return.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            result = self.upload_new_bundle(prepared, bases, events) => result,
            () = given_up => Err(CANCELLED.into()),
        }
    }

    async fn upload_new_bundle(&self, prepared: &Prepared, bases: &BundleBases, events: &Events) -> Result<(), String> {
        let Some(new_oid) = prepared.new_oid.as_deref().filter(|_| !prepared.unchanged) else {
            return Ok(());
        };
        let dst = &prepared.command.dst;
        match self.compose(prepared, new_oid, events).await? {
            Composed::Uploaded => return Ok(()),
            Composed::WholeBundle(why) => tracing::debug!(refname = %dst, %why, "not composed in S3"),
        }
        match self.upload_segmented(prepared, new_oid, bases, events).await? {
            Ok(()) => return Ok(()),
            Err(NoBase(why)) => tracing::info!(refname = %dst, %why, "writing the bundle with git bundle create"),
        }
        let scratch = self.scratch.tempdir("push-").map_err(|e| StoreError::TempDir(e).to_string())?;
        let scratch_git = self.scratch_repository(scratch.path(), dst, new_oid).await.map_err(|e| e.to_string())?;
        let mut child = scratch_git
            .command(["bundle", "create", "-q", "-", dst.as_str()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| GitError::Spawn(e).to_string())?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("git bundle create has no output".into());
        };
        let stderr_task = tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text).await;
            text
        });
        let meter = events.meter(format!("Sending {dst}"), 0);
        let key = self.layout.bundle(dst, new_oid);
        let counter: Arc<AtomicU64> = meter.counter();
        let (copy_path, copy) = self.whole_bundle_copy().unzip();
        let mut bundle = Teed::new(stdout, copy);
        // The pack cache wants the ids of the objects the bundle holds: listed while the bundle
        // is made and sent, not after it (on a large history that walk takes seconds).
        let listing = async {
            match copy_path {
                Some(_) => Some(self.git.run_bytes(&["rev-list", "--objects", new_oid]).await),
                None => None,
            }
        };
        let upload = upload_stream(&self.bucket, &key, &mut bundle, counter, async || {
            // The bundle is whole only if git says so, and we may commit only while we hold the lock.
            let status = child.wait().await.map_err(|e| e.to_string())?;
            if !status.success() {
                let stderr = stderr_task.await.unwrap_or_default();
                return Err(format!("git bundle create failed: {}", last_line(&stderr)));
            }
            prepared.pass_point_of_no_return(events)?;
            prepared.lock.confirm().await.map_err(|e| e.to_string())
        });
        let (result, listed) = tokio::join!(upload, listing);
        drop(bundle);
        let outcome = match result {
            Ok(_) => {
                meter.finish();
                Ok(())
            }
            Err(TransferError::Refused(why)) => Err(why),
            Err(e) => Err(e.to_string()),
        };
        if let (Ok(()), Some(path), Some(listed)) = (&outcome, copy_path, listed) {
            self.remember_whole_bundle(path, new_oid, listed).await;
        }
        outcome
    }

    /// A throw-away bare repository that borrows the caller's objects and has exactly one ref,
    /// `dst`, so the bundle names the ref as the remote knows it whatever the local name was.
    async fn scratch_repository(&self, dir: &std::path::Path, dst: &str, oid: &str) -> Result<Git, GitError> {
        let objects = self.git.git_path("objects").await?;
        let dir_str = dir.to_string_lossy();
        let object_format = format!("--object-format={}", self.git.object_format().await?);
        self.git.run(&["init", "--quiet", "--bare", "--template=", &object_format, &dir_str]).await?;
        let alternates = dir.join("objects/info/alternates");
        if let Some(parent) = alternates.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(GitError::Spawn)?;
        }
        tokio::fs::write(&alternates, format!("{}\n", objects.display())).await.map_err(GitError::Spawn)?;
        let scratch = self.git.for_repository(dir);
        scratch.run(&["update-ref", dst, oid]).await?;
        Ok(scratch)
    }

    /// Makes the uploaded bundle the ref's value: removes the old bundles, publishes the zip of
    /// `s3+zip://` remotes, and releases the lock.
    async fn commit(&self, prepared: Prepared) -> Result<Pushed, Refusal> {
        let result = self.commit_under_lock(&prepared).await;
        release(prepared.lock).await;
        result?;
        Ok(Pushed { forced: prepared.forced })
    }

    async fn commit_under_lock(&self, prepared: &Prepared) -> Result<(), StoreError> {
        let dst = &prepared.command.dst;
        self.abort_orphan_uploads(dst).await;
        let Some(new_oid) = &prepared.new_oid else {
            prepared.lock.confirm().await?;
            for bundle in &prepared.state.bundles {
                self.bucket.delete(&bundle.key).await?;
            }
            self.bucket.delete(&self.layout.zip(dst)).await?;
            return self.repoint_head_after_delete(dst).await.map(|_| ());
        };
        if prepared.unchanged {
            return Ok(());
        }
        for old in prepared.state.bundles.iter().filter(|b| &b.oid != new_oid) {
            self.bucket.delete(&old.key).await?;
        }
        if self.config.url.zip {
            publish_zip(&self.bucket, &self.layout, &self.git, dst, new_oid).await?;
        }
        Ok(())
    }

    /// Aborts bundle uploads of `refname` that pushes killed mid-upload left open. Only a lock
    /// holder uploads bundles, and we hold the lock with our own upload done: any open one is dead.
    async fn abort_orphan_uploads(&self, refname: &str) {
        let uploads = match self.bucket.open_uploads(&self.layout.ref_dir(refname)).await {
            Ok(uploads) => uploads,
            Err(e) => return tracing::debug!(error = %e, "cannot list open uploads"),
        };
        for upload in uploads {
            if !matches!(self.layout.classify(&upload.key), RefKey::Bundle { refname: r, .. } if r == refname) {
                continue;
            }
            tracing::info!(key = %upload.key, "aborting an upload a killed push left open");
            if let Err(e) = self.bucket.abort_upload(&upload.key, &upload.upload_id).await {
                tracing::warn!(error = %e, "could not abort an orphaned upload");
            }
        }
    }

    async fn remove_uploaded(&self, prepared: &Prepared) {
        let Some(new_oid) = prepared.new_oid.as_deref().filter(|_| !prepared.unchanged) else {
            return;
        };
        if prepared.state.bundles.iter().any(|b| b.oid == new_oid) {
            return;
        }
        if let Err(e) = self.bucket.delete(&self.layout.bundle(&prepared.command.dst, new_oid)).await {
            tracing::warn!(error = %e, "could not remove a bundle of a failed atomic push");
        }
    }

    /// Points HEAD elsewhere when it named the deleted ref (or removes it when no branch is
    /// left). Returns the new HEAD when it moved.
    pub(crate) async fn repoint_head_after_delete(&self, deleted: &str) -> Result<Option<String>, StoreError> {
        if !matches!(self.read_head().await?, Head::Ref(head) if head == deleted) {
            return Ok(None);
        }
        let listing = self.listing(false).await?;
        match default_branch(&listing, deleted) {
            Some(next) => {
                self.bucket.put_bytes(&self.layout.head(), next.as_bytes().to_vec(), PutOptions::default()).await?;
                Ok(Some(next.to_string()))
            }
            None => {
                self.bucket.delete(&self.layout.head()).await?;
                Ok(None)
            }
        }
    }
}
