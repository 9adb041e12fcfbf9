//! The storage format shared with awslabs/git-remote-s3: one self-contained bundle per ref at
//! `<ref>/<oid>.bundle`, a `HEAD` naming the default branch, per-ref locks and protection marks.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use aws_sdk_s3::primitives::ByteStream;

use crate::bucket::{Body, Bucket, ObjectInfo, PutOptions, S3Error};
use crate::bundle::{self, BundleHeader};
use crate::config::RemoteConfig;
use crate::git::{Git, GitError, last_line};
use crate::layout::{Layout, RefKey, check_refname};
use crate::lock::{LockError, RefLock};
use crate::progress::Events;
use crate::transfer::{TransferError, upload_stream};

/// Pipe buffer towards `git index-pack` (Linux allows up to 1 MiB for unprivileged users).
const INDEX_PACK_PIPE_BYTES: usize = 1024 * 1024;
/// Bundles downloaded at once by one fetch.
const BUNDLES_IN_FLIGHT: usize = 4;
/// Refs pushed at once by one non-atomic push.
const REFS_IN_FLIGHT: usize = 8;
const ZERO_OID: &str = "0000000000000000000000000000000000000000";

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

/// What one ref folder holds.
#[derive(Debug, Clone, Default)]
pub struct RefState {
    pub bundles: Vec<BundleObject>,
    pub protected: bool,
    pub lock: Option<ObjectInfo>,
}

#[derive(Debug, Clone)]
pub struct BundleObject {
    pub oid: String,
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

impl RefState {
    /// The ref's value. A push uploads the new bundle before deleting the old one, so when two
    /// are left (a push cut short), the newer one is what that push committed to.
    pub fn current(&self) -> Option<&BundleObject> {
        self.bundles.iter().max_by(|a, b| a.last_modified.cmp(&b.last_modified).then_with(|| a.key.cmp(&b.key)))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub refs: BTreeMap<String, RefState>,
    /// What `HEAD` names, as stored (it may name a ref that has no bundle).
    pub head: Option<String>,
}

impl Listing {
    /// `(refname, oid)` of every ref that has a value.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.refs.iter().filter_map(|(name, state)| state.current().map(|b| (name.as_str(), b.oid.as_str())))
    }
}

/// The branch a remote's HEAD should name, among `branches`: `preferred` if it is one of them,
/// else `main`, else `master`, else the first.
pub fn choose_head<'a>(branches: &[&'a str], preferred: Option<&str>) -> Option<&'a str> {
    let find = |wanted: &str| branches.iter().copied().find(|b| *b == wanted);
    preferred
        .and_then(find)
        .or_else(|| find("refs/heads/main"))
        .or_else(|| find("refs/heads/master"))
        .or_else(|| branches.first().copied())
}

/// The branch HEAD should name among the listed branches other than `excluding`.
pub fn default_branch<'a>(listing: &'a Listing, excluding: &str) -> Option<&'a str> {
    let branches: Vec<&str> =
        listing.values().map(|(name, _)| name).filter(|n| n.starts_with("refs/heads/") && *n != excluding).collect();
    choose_head(&branches, None)
}

pub fn parse_listing(layout: &Layout, objects: Vec<ObjectInfo>) -> BTreeMap<String, RefState> {
    let mut refs: BTreeMap<String, RefState> = BTreeMap::new();
    for object in objects {
        match layout.classify(&object.key) {
            RefKey::Bundle { refname, oid } => refs.entry(refname).or_default().bundles.push(BundleObject {
                oid,
                key: object.key,
                size: object.size,
                last_modified: object.last_modified,
            }),
            RefKey::Protected { refname } => refs.entry(refname).or_default().protected = true,
            RefKey::Lock { refname } => refs.entry(refname).or_default().lock = Some(object),
            RefKey::Zip { .. } | RefKey::Other => {}
        }
    }
    refs
}

/// One push command, as git sent it.
#[derive(Debug, Clone)]
pub struct PushCommand {
    /// Empty to delete `dst`.
    pub src: String,
    pub dst: String,
    pub force: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PushBatch {
    pub commands: Vec<PushCommand>,
    /// What the remote advertised to git for these refs (absent: did not exist).
    pub advertised: HashMap<String, String>,
    /// --force-with-lease expectations; an empty or zero value means "must not exist".
    pub leases: HashMap<String, String>,
    pub dry_run: bool,
    pub atomic: bool,
}

/// The result for one ref: `Ok(forced)` or git's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefOutcome {
    pub dst: String,
    pub result: Result<bool, String>,
}

/// A ref checked under its lock and ready to be written.
struct Prepared {
    command: PushCommand,
    /// `None` deletes the ref.
    new_oid: Option<String>,
    state: RefState,
    lock: RefLock,
    forced: bool,
    /// The remote already has this value.
    unchanged: bool,
}

/// One repository in a bucket, reached on behalf of one caller.
pub struct BundleRepo {
    pub bucket: Bucket,
    pub layout: Layout,
    pub config: RemoteConfig,
    pub git: Git,
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

    // ----- fetch -----

    /// Brings the objects of `wanted` into the caller's repository. Returns the `.keep` files that
    /// protect the new packs until git has updated its refs.
    pub async fn fetch(&self, wanted: Vec<(String, String)>, events: &Events) -> Result<Vec<PathBuf>, StoreError> {
        let pack_dir = self.git.git_path("objects/pack").await?;
        let mut keeps = Vec::new();
        let mut wanted = wanted.into_iter();
        // The first bundle usually carries most of the others' history: fetch it alone, then
        // skip every ref whose objects it brought.
        if let Some((refname, oid)) = wanted.next() {
            keeps.extend(self.fetch_ref(&refname, &oid, &pack_dir, events).await?);
        }
        let pack_dir = &pack_dir;
        // Owned items: closures over borrowed ones trip the compiler's Send check.
        let results: Vec<_> = futures::stream::iter(wanted)
            .map(|(refname, oid)| async move { self.fetch_ref(&refname, &oid, pack_dir, events).await })
            .buffer_unordered(BUNDLES_IN_FLIGHT)
            .collect()
            .await;
        for result in results {
            keeps.extend(result?);
        }
        Ok(keeps)
    }

    async fn fetch_ref(
        &self,
        refname: &str,
        oid: &str,
        pack_dir: &std::path::Path,
        events: &Events,
    ) -> Result<Option<PathBuf>, StoreError> {
        if self.git.has_object(oid).await? {
            return Ok(None);
        }
        let keep = self.unbundle(refname, oid, pack_dir, events).await?;
        if !self.git.has_object(oid).await? {
            return Err(StoreError::NotFetched { refname: refname.into(), oid: oid.into() });
        }
        Ok(keep)
    }

    /// Streams one bundle from S3 into `git index-pack`, never holding it whole.
    async fn unbundle(
        &self,
        refname: &str,
        oid: &str,
        pack_dir: &std::path::Path,
        events: &Events,
    ) -> Result<Option<PathBuf>, StoreError> {
        let key = self.layout.bundle(refname, oid);
        let corrupt = |why: String| StoreError::CorruptBundle { refname: refname.into(), key: key.clone(), why };
        let download = |why: String| StoreError::Download { key: key.clone(), why };
        let Body { body, len: size, etag } = self
            .bucket
            .get_from(&key, 0, None)
            .await?
            .ok_or_else(|| StoreError::MissingBundle { refname: refname.into(), key: key.clone() })?;
        let mut body = ResumingBody { bucket: &self.bucket, key: &key, etag, body, size, received: 0, resumes: 0 };
        let meter = events.meter(format!("Receiving {refname}"), size);

        let mut buf = Vec::new();
        let (header, header_len) = loop {
            match bundle::parse_header(&buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(e) => return Err(corrupt(e.to_string())),
            }
            match body.next().await {
                Ok(Some(chunk)) => {
                    meter.add(chunk.len() as u64);
                    buf.extend_from_slice(&chunk);
                }
                Err(e) => return Err(download(e)),
                Ok(None) => return Err(corrupt("it ends inside its header".into())),
            }
        };
        self.check_header(&header, oid).await.map_err(corrupt)?;

        let mut args =
            vec!["index-pack".to_string(), "--stdin".into(), format!("--keep=git-remote-s3 fetch {refname}")];
        if !header.prerequisites.is_empty() {
            args.push("--fix-thin".into());
        }
        let mut child = self
            .git
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(GitError::Spawn)?;
        let Some(mut stdin) = child.stdin.take() else {
            return Err(StoreError::Git(GitError::Spawn(std::io::Error::other("git index-pack has no stdin"))));
        };
        // index-pack reads in small pieces; a larger pipe means far fewer wake-ups of both sides.
        if let Err(e) = rustix::pipe::fcntl_setpipe_size(&stdin, INDEX_PACK_PIPE_BYTES) {
            tracing::debug!(error = %e, "could not enlarge the pipe to index-pack");
        }
        let feed = async {
            stdin.write_all(&buf[header_len..]).await?;
            while let Some(chunk) = body.next().await.map_err(std::io::Error::other)? {
                meter.add(chunk.len() as u64);
                stdin.write_all(&chunk).await?;
            }
            stdin.shutdown().await?;
            drop(stdin);
            Ok::<(), std::io::Error>(())
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(GitError::Spawn)?;
        if !output.status.success() {
            return Err(corrupt(format!("git index-pack: {}", last_line(&output.stderr))));
        }
        if let Err(e) = fed {
            return Err(download(e.to_string()));
        }
        meter.finish();
        // index-pack prints "keep\t<hash>" when it left a .keep file.
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout
            .lines()
            .find_map(|line| line.strip_prefix("keep\t"))
            .map(|hash| pack_dir.join(format!("pack-{}.keep", hash.trim()))))
    }

    async fn check_header(&self, header: &BundleHeader, oid: &str) -> Result<(), String> {
        if let Some((_, format)) = header.capabilities.iter().find(|(k, _)| k == "object-format")
            && format != "sha1"
        {
            return Err(format!("it holds {format} objects, this remote stores sha1"));
        }
        if !header.refs.iter().any(|(o, _)| o == oid) {
            return Err(format!("it does not contain {oid}"));
        }
        for prerequisite in &header.prerequisites {
            if !self.git.has_object(prerequisite).await.map_err(|e| e.to_string())? {
                return Err(format!("it needs {prerequisite}, which this repository lacks"));
            }
        }
        Ok(())
    }

    // ----- push -----

    pub async fn push(&self, batch: PushBatch, events: &Events) -> Vec<RefOutcome> {
        if let Err(why) = self.check_repository().await {
            return batch
                .commands
                .iter()
                .map(|c| RefOutcome { dst: c.dst.clone(), result: Err(why.clone()) })
                .collect();
        }
        let outcomes = if batch.atomic {
            self.push_atomic(&batch, events).await
        } else {
            let batch = &batch;
            futures::stream::iter(batch.commands.clone())
                .map(|command| async move {
                    let result = match self.prepare(&command, batch).await {
                        Ok(prepared) => self.write_and_commit(prepared, batch, events).await,
                        Err(why) => Err(why),
                    };
                    RefOutcome { dst: command.dst, result }
                })
                .buffered(REFS_IN_FLIGHT)
                .collect()
                .await
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

    async fn write_and_commit(&self, prepared: Prepared, batch: &PushBatch, events: &Events) -> Result<bool, String> {
        if batch.dry_run {
            let forced = prepared.forced;
            release(prepared.lock).await;
            return Ok(forced);
        }
        if let Err(why) = self.upload(&prepared, events).await {
            release(prepared.lock).await;
            return Err(why);
        }
        self.commit(prepared).await
    }

    /// Every ref is checked under its lock before any is written; then all new bundles are
    /// uploaded, and only when all are in place are the old ones removed. A failure before
    /// that point leaves every ref as it was.
    async fn push_atomic(&self, batch: &PushBatch, events: &Events) -> Vec<RefOutcome> {
        let mut prepared = Vec::new();
        let mut failure = None;
        for command in &batch.commands {
            match self.prepare(command, batch).await {
                Ok(p) => prepared.push(p),
                Err(why) => {
                    failure = Some((command.dst.clone(), why));
                    break;
                }
            }
        }
        if failure.is_none() && !batch.dry_run {
            for (i, p) in prepared.iter().enumerate() {
                if let Err(why) = self.upload(p, events).await {
                    for done in &prepared[..i] {
                        self.remove_uploaded(done).await;
                    }
                    failure = Some((p.command.dst.clone(), why));
                    break;
                }
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
                    let result =
                        if c.dst == failed_dst { Err(why.clone()) } else { Err("atomic push failed".to_string()) };
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
                Ok(forced)
            } else {
                self.commit(p).await
            };
            outcomes.push(RefOutcome { dst, result });
        }
        outcomes
    }

    async fn check_repository(&self) -> Result<(), String> {
        match self.git.object_format().await {
            Ok(format) if format == "sha1" => Ok(()),
            Ok(format) => Err(format!(
                "{format} repositories cannot be pushed to s3 remotes yet (the layout stores sha1 bundles)"
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Takes the ref's lock and decides, from a fresh read of the ref folder, whether and how the
    /// command may proceed. Errors are git's reserved words where git has them.
    async fn prepare(&self, command: &PushCommand, batch: &PushBatch) -> Result<Prepared, String> {
        let dst = &command.dst;
        check_refname(dst).map_err(|why| format!("invalid ref name: {why}"))?;
        if dst.matches('/').count() < 2 {
            return Err("ref names need at least three parts here (refs/<kind>/<name>)".into());
        }
        let new_oid = if command.src.is_empty() {
            None
        } else {
            match self.git.resolve(&command.src).await {
                Ok(Some(oid)) => Some(oid),
                Ok(None) => {
                    return Err(format!("src refspec {} does not match any object", command.src));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let lock = RefLock::acquire(&self.bucket, &self.layout.lock(dst), dst, self.config.lock_ttl)
            .await
            .map_err(|e| e.to_string())?;
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
    ) -> Result<Prepared, (String, RefLock)> {
        let dst = &command.dst;
        let state = match self.read_ref(dst).await {
            Ok(state) => state,
            Err(e) => return Err((e.to_string(), lock)),
        };
        let current = state.current().map(|b| b.oid.clone());
        if current.as_deref() != batch.advertised.get(dst).map(String::as_str) {
            return Err(("fetch first".into(), lock));
        }
        let lease = batch.leases.get(dst).map(|expected| expected.trim());
        if let Some(expected) = lease {
            let expected = (!expected.is_empty() && expected != ZERO_OID).then_some(expected);
            if expected != current.as_deref() {
                return Err(("stale info".into(), lock));
            }
        }
        let may_force = command.force || lease.is_some();
        let mut forced = false;
        match (&current, &new_oid) {
            (Some(_), None) if state.protected => return Err(("protected branch".into(), lock)),
            (Some(current), Some(new)) if current != new => {
                let fast_forward = match self.git.has_object(current).await {
                    Ok(true) => self.git.is_ancestor(current, new).await.unwrap_or(false),
                    Ok(false) if !may_force => return Err(("fetch first".into(), lock)),
                    Ok(false) => false,
                    Err(e) => return Err((e.to_string(), lock)),
                };
                if !fast_forward {
                    if !may_force {
                        return Err(("non-fast forward".into(), lock));
                    }
                    if state.protected {
                        return Err(("protected branch".into(), lock));
                    }
                    forced = true;
                }
            }
            _ => {}
        }
        let unchanged = current == new_oid;
        Ok(Prepared { command: command.clone(), new_oid, state, lock, forced, unchanged })
    }

    /// Uploads the new bundle; the ref folder then holds old and new until `commit`.
    async fn upload(&self, prepared: &Prepared, events: &Events) -> Result<(), String> {
        let Some(new_oid) = prepared.new_oid.as_deref().filter(|_| !prepared.unchanged) else {
            return Ok(());
        };
        let dst = &prepared.command.dst;
        let scratch = tempfile::Builder::new()
            .prefix("git-s3-push-")
            .tempdir()
            .map_err(|e| StoreError::TempDir(e).to_string())?;
        let scratch_git = self.scratch_repository(scratch.path(), dst, new_oid).await.map_err(|e| e.to_string())?;
        let mut child = scratch_git
            .command(["bundle", "create", "-q", "-", dst.as_str()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| GitError::Spawn(e).to_string())?;
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
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
        let result = upload_stream(&self.bucket, &key, &mut stdout, counter, async || {
            // The bundle is whole only if git says so, and we may commit only while we hold the lock.
            let status = child.wait().await.map_err(|e| e.to_string())?;
            if !status.success() {
                let stderr = stderr_task.await.unwrap_or_default();
                return Err(format!("git bundle create failed: {}", last_line(&stderr)));
            }
            prepared.lock.confirm().await.map_err(|e| e.to_string())
        })
        .await;
        match result {
            Ok(_) => {
                meter.finish();
                Ok(())
            }
            Err(TransferError::Refused(why)) => Err(why),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A throw-away bare repository that borrows the caller's objects and has exactly one ref,
    /// `dst`, so the bundle names the ref as the remote knows it whatever the local name was.
    async fn scratch_repository(&self, dir: &std::path::Path, dst: &str, oid: &str) -> Result<Git, GitError> {
        let objects = self.git.git_path("objects").await?;
        let dir_str = dir.to_string_lossy();
        self.git.run(&["init", "--quiet", "--bare", "--template=", "--object-format=sha1", &dir_str]).await?;
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
    async fn commit(&self, prepared: Prepared) -> Result<bool, String> {
        let result = self.commit_under_lock(&prepared).await;
        release(prepared.lock).await;
        result.map(|()| prepared.forced).map_err(|e| e.to_string())
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
            self.publish_zip(dst, new_oid).await?;
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
        let Some(head) = self.bucket.get_bytes(&self.layout.head()).await? else {
            return Ok(None);
        };
        if String::from_utf8_lossy(&head).trim() != deleted {
            return Ok(None);
        }
        let listing = self.list(false).await?;
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

    async fn publish_zip(&self, dst: &str, oid: &str) -> Result<(), StoreError> {
        let summary = self.git.run(&["log", "-1", "--pretty=%h %s", oid]).await?;
        let zip = self.git.run_bytes(&["archive", "--format=zip", oid]).await?;
        let options = PutOptions {
            metadata: vec![("codepipeline-artifact-revision-summary".into(), summary)],
            content_disposition: Some(format!("attachment; filename=repo-{}.zip", &oid[..8.min(oid.len())])),
            ..Default::default()
        };
        self.bucket.put_bytes(&self.layout.zip(dst), zip, options).await?;
        Ok(())
    }
}

/// Times one download picks up where a broken connection left it.
const DOWNLOAD_RESUMES: u32 = 3;

/// An object's body that survives broken connections: it asks again for the rest (of the same
/// version, by ETag) and goes on from there.
struct ResumingBody<'a> {
    bucket: &'a Bucket,
    key: &'a str,
    etag: Option<String>,
    body: ByteStream,
    size: u64,
    received: u64,
    resumes: u32,
}

impl ResumingBody<'_> {
    async fn next(&mut self) -> Result<Option<bytes::Bytes>, String> {
        loop {
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                None => return Ok(None),
                Some(Err(e)) if self.resumes < DOWNLOAD_RESUMES && self.etag.is_some() => {
                    self.resumes += 1;
                    tracing::info!(key = %self.key, at = self.received, error = %e, "download broke off; resuming");
                    let rest = self
                        .bucket
                        .get_from(self.key, self.received, self.etag.as_deref())
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("the object disappeared during the download")?;
                    if rest.len != self.size - self.received.min(self.size) {
                        return Err(format!("{e} (and the server did not resume at byte {})", self.received));
                    }
                    self.body = rest.body;
                }
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }
}

pub(crate) async fn release(lock: RefLock) {
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not release a lock; it goes stale after its TTL");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn object(key: &str, secs: u64) -> ObjectInfo {
        ObjectInfo { key: key.into(), size: 1, last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)) }
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn head_prefers_the_named_branch_then_main_then_master() {
        let branches = ["refs/heads/a", "refs/heads/master", "refs/heads/main"];
        assert_eq!(choose_head(&branches, Some("refs/heads/a")), Some("refs/heads/a"));
        assert_eq!(choose_head(&branches, Some("refs/heads/gone")), Some("refs/heads/main"));
        assert_eq!(choose_head(&branches[..2], None), Some("refs/heads/master"));
        assert_eq!(choose_head(&branches[..1], None), Some("refs/heads/a"));
        assert_eq!(choose_head(&[], None), None);
    }

    #[test]
    fn newest_bundle_is_the_value() {
        let layout = Layout::new("p");
        let refs = parse_listing(
            &layout,
            vec![
                object(&format!("p/refs/heads/main/{A}.bundle"), 10),
                object(&format!("p/refs/heads/main/{B}.bundle"), 20),
                object("p/refs/heads/main/PROTECTED#", 5),
                object("p/refs/heads/main/LOCK#.lock", 5),
                object("p/refs/heads/main/repo.zip", 5),
            ],
        );
        let main = &refs["refs/heads/main"];
        assert_eq!(main.bundles.len(), 2);
        assert_eq!(main.current().map(|b| b.oid.as_str()), Some(B));
        assert!(main.protected);
        assert!(main.lock.is_some());
    }

    #[test]
    fn a_ref_with_only_a_lock_has_no_value() {
        let layout = Layout::new("p");
        let listing =
            Listing { refs: parse_listing(&layout, vec![object("p/refs/heads/x/LOCK#.lock", 1)]), head: None };
        assert_eq!(listing.values().count(), 0);
    }
}
