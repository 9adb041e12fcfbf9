//! A push's pack on its way: `git pack-objects` writes the pack and its index, and a pack that
//! outgrows `STREAMED_PACK_BYTES` is uploaded while git writes it.
//!
//! A pack's name (its trailer) is known only when git has written its last byte, and its key
//! carries that name; so a large pack is uploaded under a temporary key
//! (`P/native/packs/incoming-<random>.pack`) while git writes it and copied inside S3 to its
//! name afterwards (on a 200 MB history git spends 4.7 s writing the pack; uploading the
//! finished file took 1.1 s more). git writes into an object directory of the push's own, so
//! the file it is writing (`tmp_pack_*`) is the only one there; it is read as it grows. What was
//! uploaded counts only if its trailer is the hash of the rest and git named the pack by it (git
//! rewrites a pack's header when it wrote fewer objects than it announced): otherwise the
//! finished file is uploaded. A small pack is uploaded from its file once named. The temporary
//! object is deleted once copied; one left by a crash is named by no root and swept like any
//! other unnamed pack.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::manifest::PackEntry;
use super::push::{pack_name, transfer_error};
use super::{NativeError, NativeRepo, Snapshot, pack_key, packs_prefix};
use crate::bucket::Bucket;
use crate::git::{GitError, last_line};
use crate::object_format::ObjectFormat;
use crate::progress::Events;
use crate::store::StoreError;
use crate::transfer::{TransferError, upload_stream};

/// Packs larger than this are uploaded while git writes them. Below it, the copy inside S3 and
/// the temporary object's deletion cost more than uploading the finished file.
const STREAMED_PACK_BYTES: u64 = 16 * 1024 * 1024;
/// What the copy into the upload's pipe holds at most.
const UPLOAD_PIPE_BYTES: usize = 1024 * 1024;
/// CopyObject copies up to 5 GiB: a larger pack is not streamed, its finished file is uploaded.
const MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Reads of the pack git is writing.
const READ_BYTES: usize = 256 * 1024;
/// How often the pack git is writing is looked at again when it has not grown.
const TAIL_POLL: Duration = Duration::from_millis(10);

/// A pack uploaded under a temporary key while git wrote it. Deleted by `delete`, or, when
/// dropped without it (a cancelled push, an error on the way), in the background.
struct Incoming {
    bucket: Bucket,
    key: String,
    size: u64,
    /// Its last bytes: the trailer, which must be the pack's name.
    trailer: Vec<u8>,
    deleted: bool,
}

impl Incoming {
    async fn delete(mut self) {
        self.deleted = true;
        delete_temporary(&self.bucket, &self.key).await;
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let (bucket, key) = (self.bucket.clone(), std::mem::take(&mut self.key));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { delete_temporary(&bucket, &key).await });
        }
    }
}

/// The temporary object is garbage once copied (or not needed); one left behind is swept.
async fn delete_temporary(bucket: &Bucket, key: &str) {
    if let Err(e) = bucket.delete(key).await {
        tracing::warn!(key, error = %e, "could not delete a pack's temporary upload; the sweep will");
    }
}

impl NativeRepo {
    /// Packs what `tips` need and the remote lacks — everything reachable from them but not from
    /// a remote ref this repository has — into one self-contained pack, and uploads it with its
    /// index and its tips. `None` when the remote lacks nothing.
    pub(super) async fn send_pack(
        &self,
        tips: &BTreeSet<String>,
        snapshot: &Snapshot,
        events: &Events,
    ) -> Result<Option<PackEntry>, StoreError> {
        let remote_values: BTreeSet<&str> = snapshot.refs.values().map(String::as_str).collect();
        let remote_values: Vec<&str> = remote_values.into_iter().collect();
        let bases = self.git.present(&remote_values).await?;
        let dir = self.scratch.tempdir("native-push-").map_err(StoreError::TempDir)?;
        let mut input: String = tips.iter().map(|tip| format!("{tip}\n")).collect();
        input.extend(bases.iter().map(|base| format!("^{base}\n")));
        let (name, incoming) = self.write_pack(input, dir.path(), events).await?;
        let entry = self.pack_entry(dir.path(), "pack", &name).await?;
        let unneeded = entry.is_none() || snapshot.root.has_pack(&name);
        match incoming {
            None if unneeded => Ok(entry),
            None => self.upload_pack(dir.path(), "pack", &name, tips, events).await,
            Some(incoming) => {
                let placed = match unneeded {
                    true => Ok(()),
                    false => self.place_incoming(&incoming, dir.path(), &name, tips).await,
                };
                incoming.delete().await;
                placed.map(|()| entry)
            }
        }
    }

    /// `git pack-objects --revs` of `input` into `<dir>/pack-<name>.pack` and `.idx`, the pack
    /// uploaded meanwhile once it is large; returns its name and where it was uploaded.
    async fn write_pack(
        &self,
        input: String,
        dir: &Path,
        events: &Events,
    ) -> Result<(String, Option<Incoming>), StoreError> {
        let object_format = self.git.object_format().await?;
        let objects = dir.join("objects");
        let writing_dir = objects.join("pack");
        tokio::fs::create_dir_all(&writing_dir).await.map_err(StoreError::TempDir)?;
        let packer = self.git.with_object_directory(&objects, &self.git.git_path("objects").await?);
        let base = dir.join("pack");
        let mut child = packer
            .command(["pack-objects", "--revs", "--delta-base-offset", "-q"])
            .arg(&base)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(GitError::Spawn)?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| GitError::Spawn(std::io::Error::other("git pack-objects has no stdin")))?;
        let feed = async move {
            stdin.write_all(input.as_bytes()).await?;
            stdin.shutdown().await
        };
        let exited = Exited::default();
        let packed = async {
            let output = child.wait_with_output().await;
            exited.set();
            output
        };
        let tail = self.upload_while_written(&writing_dir, object_format, &exited, events);
        let (fed, packed, streamed) = tokio::join!(feed, packed, tail);
        let incoming = match streamed {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::info!(error = %e, "could not upload the pack while git wrote it; uploading the finished file");
                None
            }
        };
        let named = async {
            let packed = packed.map_err(GitError::Spawn)?;
            if !packed.status.success() {
                let stderr = last_line(&packed.stderr);
                return Err(GitError::Failed { command: "pack-objects".into(), stderr }.into());
            }
            fed.map_err(GitError::Spawn)?;
            pack_name(&packed.stdout)
        };
        let name = match named.await {
            Ok(name) => name,
            Err(e) => {
                if let Some(incoming) = incoming {
                    incoming.delete().await;
                }
                return Err(e);
            }
        };
        let incoming = match incoming {
            Some(incoming) if hex::encode(&incoming.trailer) != name => {
                tracing::info!(%name, "git rewrote the pack after it was uploaded; uploading the finished file");
                incoming.delete().await;
                None
            }
            other => other,
        };
        Ok((name, incoming))
    }

    /// Reads the pack git is writing in `writing_dir` as it grows and, once it is larger than
    /// `STREAMED_PACK_BYTES`, uploads it under a temporary key. `None` when git finished first
    /// (or the file was gone before it was seen), or when what was read is not a whole pack.
    async fn upload_while_written(
        &self,
        writing_dir: &Path,
        object_format: ObjectFormat,
        exited: &Exited,
        events: &Events,
    ) -> Result<Option<Incoming>, StoreError> {
        let local = |e: std::io::Error| StoreError::from(NativeError::LocalPack(e));
        let mut file = loop {
            // Done already: the finished file is uploaded as it is (a `tmp_pack_*` still here
            // is what a failed git left).
            if exited.is_set() {
                return Ok(None);
            }
            if let Some(path) = pack_being_written(writing_dir).await {
                let large = tokio::fs::metadata(&path).await.is_ok_and(|m| m.len() >= STREAMED_PACK_BYTES);
                if large && let Ok(file) = tokio::fs::File::open(&path).await {
                    break file;
                }
            }
            exited.wait(TAIL_POLL).await;
        };
        let key = incoming_key(&self.layout);
        let (mut pipe, mut reader) = tokio::io::duplex(UPLOAD_PIPE_BYTES);
        let sending = events.meter("Sending pack", 0);
        let whole = Arc::new(AtomicBool::new(false));
        let mut uploading: JoinSet<Result<u64, TransferError>> = JoinSet::new();
        {
            let (bucket, at, sent, whole) = (self.bucket.clone(), key.clone(), sending.counter(), whole.clone());
            // The object becomes visible only once what was read is known to be the whole pack;
            // dropping the task (a cancelled push) aborts the upload.
            uploading.spawn(async move {
                let complete = async || match whole.load(Ordering::Acquire) {
                    true => Ok(()),
                    false => Err("what was read of the pack is not all of it".to_string()),
                };
                upload_stream(&bucket, &at, &mut reader, sent, complete).await
            });
        }
        // Everything but the last `trailer_len` bytes read so far is hashed: the trailer is the
        // hash of all before it.
        let trailer_len = object_format.raw_len();
        let mut hasher = object_format.hasher();
        let (mut last, mut size) = (Vec::with_capacity(READ_BYTES + trailer_len), 0u64);
        let mut chunk = vec![0u8; READ_BYTES];
        let read = async {
            loop {
                let done = exited.is_set();
                let n = file.read(&mut chunk).await.map_err(local)?;
                if n == 0 {
                    if done {
                        break;
                    }
                    exited.wait(TAIL_POLL).await;
                    continue;
                }
                size += n as u64;
                if size > MAX_COPY_BYTES {
                    // Too large to copy in one request: the finished file is uploaded instead.
                    return Ok(false);
                }
                pipe.write_all(&chunk[..n]).await.map_err(upload_gone)?;
                last.extend_from_slice(&chunk[..n]);
                let hashed = last.len().saturating_sub(trailer_len);
                hasher.update(&last[..hashed]);
                last.drain(..hashed);
            }
            Ok::<_, StoreError>(true)
        };
        let read = read.await;
        let whole_pack = matches!(read, Ok(true)) && last.len() == trailer_len && hasher.finalize() == last;
        whole.store(whole_pack, Ordering::Release);
        drop(pipe);
        let uploaded = match uploading.join_next().await {
            Some(Ok(uploaded)) => uploaded,
            // Tasks are aborted only when this future is dropped; a panic is this code's own.
            Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            None => Err(TransferError::Refused("the upload task is gone".into())),
        };
        sending.finish();
        let incoming = |trailer| Incoming { bucket: self.bucket.clone(), key, size, trailer, deleted: false };
        // The first cause stands: the upload's failure shows as a broken pipe to the reading.
        match (uploaded, read) {
            (Ok(uploaded), Ok(true)) if whole_pack && uploaded == size => Ok(Some(incoming(last))),
            // Uploaded, but not the whole pack as git named it.
            (Ok(_), read) => {
                incoming(last).delete().await;
                read.map(|_| None)
            }
            (Err(TransferError::Refused(_)), Ok(_)) if !whole_pack => Ok(None),
            (Err(e), _) => Err(transfer_error(e)),
        }
    }

    /// The pack uploaded as `incoming` while git wrote it, copied to its name, with its index
    /// and tips beside it.
    async fn place_incoming(
        &self,
        incoming: &Incoming,
        dir: &Path,
        name: &str,
        tips: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let idx_path = dir.join(format!("pack-{name}.idx"));
        let idx_bytes = tokio::fs::metadata(&idx_path).await.map_err(NativeError::LocalPack)?.len();
        let tips_text: String = tips.iter().map(|tip| format!("{tip}\n")).collect();
        let (pack_at, idx_at, tips_at) = (
            pack_key(&self.layout, name, "pack"),
            pack_key(&self.layout, name, "idx"),
            pack_key(&self.layout, name, "tips"),
        );
        let sent = Arc::new(AtomicU64::new(0));
        let (copied, idx, tips) = tokio::join!(
            self.bucket.copy(&incoming.key, &pack_at),
            self.upload_file(&idx_at, &idx_path, idx_bytes, sent.clone()),
            self.bucket.put_bytes(&tips_at, tips_text.into_bytes(), Default::default()),
        );
        idx?;
        tips?;
        if let Err(e) = copied {
            // A store without CopyObject, or the temporary object swept by hand meanwhile.
            tracing::info!(error = %e, "could not copy the uploaded pack to its name; uploading it again");
            let pack_path = dir.join(format!("pack-{name}.pack"));
            self.upload_file(&pack_at, &pack_path, incoming.size, sent).await?;
        }
        Ok(())
    }
}

/// Whether `git pack-objects` has exited, told at once to whoever waits for it.
#[derive(Default)]
struct Exited {
    flag: AtomicBool,
    told: tokio::sync::Notify,
}

impl Exited {
    fn set(&self) {
        self.flag.store(true, Ordering::Release);
        self.told.notify_one();
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Until git exits, or at most `poll`.
    async fn wait(&self, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.told.notified()).await;
    }
}

/// The pack git is writing in `dir` (`tmp_pack_*`), if it has begun.
async fn pack_being_written(dir: &Path) -> Option<PathBuf> {
    let mut entries = tokio::fs::read_dir(dir).await.ok()?;
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.file_name().to_string_lossy().starts_with("tmp_pack_") {
            return Some(entry.path());
        }
    }
    None
}

/// `P/native/packs/incoming-<32 hex digits>.pack`.
fn incoming_key(layout: &crate::layout::Layout) -> String {
    format!("{}incoming-{:016x}{:016x}.pack", packs_prefix(layout), fastrand::u64(..), fastrand::u64(..))
}

fn upload_gone(e: std::io::Error) -> StoreError {
    NativeError::LocalPack(std::io::Error::other(format!("the upload stopped taking the pack: {e}"))).into()
}
