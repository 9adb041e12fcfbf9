//! git-lfs objects at `P/lfs/<oid>`. Uploads skip what the bucket has, let S3 verify content
//! (the oid is the SHA-256 S3 checks), and go up in parallel parts read straight from the file;
//! downloads come in parallel ranges into the repository's LFS temp dir and are verified before
//! git-lfs sees them. Every request goes through the daemon-wide scheduler.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::bucket::{Bucket, EncryptedWith, S3Error, next_chunk_within};
use crate::git::{Git, GitError};
use crate::layout::{Layout, is_lfs_oid};
use crate::scheduler::STREAMED_BODY_BYTES;
use crate::shared_repository::{Sharing, SharingError};
use crate::transfer::{TransferError, part_size_for, upload_file};

/// Objects up to this size go in one request.
pub const SINGLE_REQUEST_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Buffer for hashing a downloaded file.
const HASH_BUFFER_BYTES: usize = 256 * 1024;
/// Received bytes written to disk at once.
const WRITE_BATCH_BYTES: u64 = 1024 * 1024;
/// Git-lfs error code for a failed transfer (as the Python agent reports).
pub const TRANSFER_ERROR_CODE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum LfsError {
    #[error("'{0}' is not a git-lfs object id (64 lowercase hex digits)")]
    BadOid(String),
    #[error("refusing to upload {path}: it is not inside this repository's git directory")]
    OutsideRepository { path: PathBuf },
    #[error("{path} has {actual} bytes, git-lfs said {expected}")]
    WrongSize { path: PathBuf, expected: u64, actual: u64 },
    #[error("object {oid} is not in the bucket ({key})")]
    Missing { oid: String, key: String },
    #[error("object {oid} in the bucket is corrupt (its content hashes to {actual}); it was not used")]
    Corrupt { oid: String, actual: String },
    #[error("object {oid} in the bucket is larger than the {size} bytes its pointer says; it was not used")]
    Oversized { oid: String, size: u64 },
    #[error("the content of {oid} does not match its id; S3 refused it")]
    Rejected { oid: String },
    #[error("object {oid} is not in this repository's LFS storage; bring it first (e.g. 'git lfs fetch --all')")]
    NotLocal { oid: String },
    #[error("cannot read git-lfs's listing: {0}")]
    Listing(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Invalid(#[from] crate::requests::InvalidRequest),
    #[error(transparent)]
    Sharing(#[from] SharingError),
}

/// A repository's LFS objects in the bucket, and where its LFS files live locally.
pub struct LfsStore {
    pub bucket: Bucket,
    pub layout: Layout,
    /// The git directory shared by all worktrees: uploads must come from inside it.
    git_common_dir: PathBuf,
    /// Where git-lfs keeps objects (`lfs.storage`, else `<common dir>/lfs`).
    storage_dir: PathBuf,
    /// Who may read and write what is placed there (`core.sharedRepository`).
    sharing: Sharing,
}

impl LfsStore {
    pub async fn open(bucket: Bucket, layout: Layout, git: &Git) -> Result<Self, LfsError> {
        let git_common_dir =
            PathBuf::from(git.run(&["rev-parse", "--path-format=absolute", "--git-common-dir"]).await?);
        let storage_dir = match git.run(&["config", "--get", "lfs.storage"]).await {
            Ok(storage) if !storage.is_empty() => git_common_dir.join(storage),
            _ => git_common_dir.join("lfs"),
        };
        let shared = git.run(&["config", "--get", "core.sharedRepository"]).await.ok();
        let sharing = Sharing::parse(shared.as_deref())?;
        Ok(Self { bucket, layout, git_common_dir, storage_dir, sharing })
    }

    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LfsError + 'a {
        move |source| LfsError::Io { what, path: path.to_path_buf(), source }
    }

    /// Where git-lfs keeps object `oid` (`objects/<2>/<2>/<oid>` in its storage).
    pub fn object_path(&self, oid: &str) -> PathBuf {
        let (first, second) = (oid.get(..2).unwrap_or_default(), oid.get(2..4).unwrap_or_default());
        self.storage_dir.join("objects").join(first).join(second).join(oid)
    }

    /// Sends `path` as object `oid`, unless the bucket has it already. Adds the bytes sent to
    /// `sent`.
    pub async fn upload(&self, oid: &str, size: u64, path: &Path, sent: &AtomicU64) -> Result<(), LfsError> {
        let key = self.layout.lfs_object(oid);
        check_oid(oid)?;
        if self.bucket.head(&key).await?.is_some_and(|existing| existing.size == size) {
            sent.fetch_add(size, Ordering::Relaxed);
            return Ok(());
        }
        self.send(oid, size, path, sent).await
    }

    /// Sends `path` as object `oid` (the caller knows the bucket lacks it).
    pub async fn send(&self, oid: &str, size: u64, path: &Path, sent: &AtomicU64) -> Result<(), LfsError> {
        check_oid(oid)?;
        let path = self.check_upload_path(path).await?;
        let actual = tokio::fs::metadata(&path).await.map_err(Self::io("cannot read", &path))?.len();
        if actual != size {
            return Err(LfsError::WrongSize { path, expected: size, actual });
        }
        let key = self.layout.lfs_object(oid);
        if size <= SINGLE_REQUEST_MAX_BYTES {
            self.upload_whole(oid, &key, &path, size).await?;
            sent.fetch_add(size, Ordering::Relaxed);
            return Ok(());
        }
        Ok(upload_file(&self.bucket, &key, &path, size, sent).await?)
    }

    /// One PUT carrying the SHA-256 of the content: S3 itself refuses content that is not `oid`.
    async fn upload_whole(&self, oid: &str, key: &str, path: &Path, size: u64) -> Result<(), LfsError> {
        // Streamed from the file: what it holds in memory is the SDK's buffers, not the object.
        let _admission = self.bucket.scheduler().admit(size.min(STREAMED_BODY_BYTES)).await;
        let body = ByteStream::from_path(path).await.map_err(|e| LfsError::Io {
            what: "cannot read",
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        let digest = hex::decode(oid).map_err(|_| LfsError::BadOid(oid.to_string()))?;
        let result = self
            .bucket
            .client()
            .put_object()
            .bucket(self.bucket.name())
            .key(key)
            .body(body)
            .checksum_sha256(aws_smithy_types::base64::encode(digest))
            .encrypted_with(self.bucket.kms_key_id())
            .customize()
            .config_override(crate::clients::bulk_transfer())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                if matches!(e.code(), Some("BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch")) {
                    return Err(LfsError::Rejected { oid: oid.to_string() });
                }
                Err(self.bucket.classify("PutObject", key, e).into())
            }
        }
    }

    /// Brings object `oid` (of `size` bytes, as git-lfs says) into a temp file under the LFS
    /// storage dir, verified; returns its path (git-lfs moves it into place).
    pub async fn download(&self, oid: &str, size: u64, received: &AtomicU64) -> Result<PathBuf, LfsError> {
        self.fetch(oid, size, received, None).await
    }

    /// Brings object `oid` where git-lfs keeps it, verified (renamed into place whole: git-lfs
    /// never sees half an object).
    pub async fn download_into_place(&self, oid: &str, size: u64, received: &AtomicU64) -> Result<(), LfsError> {
        self.fetch(oid, size, received, Some(self.object_path(oid))).await.map(drop)
    }

    /// Downloads object `oid` to `target`, or to a temp file kept for the caller when `None`.
    async fn fetch(
        &self,
        oid: &str,
        size: u64,
        received: &AtomicU64,
        target: Option<PathBuf>,
    ) -> Result<PathBuf, LfsError> {
        check_oid(oid)?;
        let key = self.layout.lfs_object(oid);
        if size <= SINGLE_REQUEST_MAX_BYTES {
            self.download_whole(oid, &key, size, received, target).await
        } else {
            self.download_ranges(oid, &key, size, received, target).await
        }
    }

    /// One GET held in memory and hashed as it arrives, written to disk (one trip to the
    /// blocking pool) only once it matched its id: nothing unverified touches the disk.
    async fn download_whole(
        &self,
        oid: &str,
        key: &str,
        size: u64,
        received: &AtomicU64,
        target: Option<PathBuf>,
    ) -> Result<PathBuf, LfsError> {
        let _admission = self.bucket.scheduler().admit(size).await;
        let mut body = self.get(oid, key, None).await?;
        let mut hasher = Sha256::new();
        let mut chunks = Vec::new();
        let mut length = 0;
        while let Some(chunk) = next_chunk_within(&mut body, self.bucket.body_idle(), key, length).await? {
            length += chunk.len() as u64;
            if length > size {
                return Err(LfsError::Oversized { oid: oid.into(), size });
            }
            hasher.update(&chunk);
            received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            chunks.push(chunk);
        }
        verify(oid, hasher)?;
        let (tmp_dir, oid, sharing) = (self.tmp_dir(), oid.to_string(), self.sharing);
        blocking(move || {
            let mut file = temp_file(&tmp_dir, &oid, sharing)?;
            for chunk in &chunks {
                file.write_all(chunk).map_err(Self::io("cannot write", file.path()))?;
            }
            finish(file, target, sharing)
        })
        .await
    }

    /// Downloads ranges in parallel, each written where it belongs as it arrives, and hashes
    /// the file in order while later ranges still arrive (SHA-256 is sequential; reading back a
    /// range just written comes from the page cache).
    async fn download_ranges(
        &self,
        oid: &str,
        key: &str,
        size: u64,
        received: &AtomicU64,
        target: Option<PathBuf>,
    ) -> Result<PathBuf, LfsError> {
        let (tmp_dir, named, sharing) = (self.tmp_dir(), oid.to_string(), self.sharing);
        let file = blocking(move || {
            let file = temp_file(&tmp_dir, &named, sharing)?;
            file.as_file().set_len(size).map_err(Self::io("cannot size", file.path()))?;
            Ok(file)
        })
        .await?;
        // The temp file is removed on every error path until it is verified and kept.
        let file = Arc::new(file);
        let part_size = part_size_for(size);
        let ranges: Vec<(u64, u64)> =
            (0..size).step_by(part_size as usize).map(|offset| (offset, part_size.min(size - offset))).collect();
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let downloads: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(index, &(offset, len))| {
                let (done_tx, file) = (done_tx.clone(), Arc::clone(&file));
                async move {
                    self.download_range(oid, key, &file, offset, len, received).await?;
                    let _ = done_tx.send(index);
                    Ok::<(), LfsError>(())
                }
            })
            .collect();
        // Only the downloads hold senders now: the hasher sees the channel close if one fails.
        drop(done_tx);
        let (downloaded, hashed) =
            tokio::join!(futures::future::try_join_all(downloads), hash_in_order(Arc::clone(&file), ranges, done_rx));
        downloaded?;
        verify(oid, hashed?)?;
        let file = Arc::into_inner(file).ok_or_else(|| LfsError::Io {
            what: "cannot keep",
            path: self.tmp_dir(),
            source: std::io::Error::other("the download's file is still in use"),
        })?;
        blocking(move || finish(file, target, sharing)).await
    }

    /// Writes bytes `offset..offset+len` of the object at the same place in `file`, in batches
    /// written straight from the received buffers.
    async fn download_range(
        &self,
        oid: &str,
        key: &str,
        file: &Arc<NamedTempFile>,
        offset: u64,
        len: u64,
        received: &AtomicU64,
    ) -> Result<(), LfsError> {
        // Written out in batches as it arrives: a batch being written and the next arriving.
        let _admission = self.bucket.scheduler().admit(len.min(2 * WRITE_BATCH_BYTES)).await;
        let mut body = self.get(oid, key, Some((offset, len))).await?;
        let mut batch = Vec::new();
        let (mut batch_bytes, mut at, end) = (0, offset, offset + len);
        let wrong_length = |sent: u64| {
            let detail = format!("asked for bytes {offset}-{} of {oid}, the server sent {sent}", end - 1);
            LfsError::from(S3Error::Other { op: "GetObject", key: key.into(), detail })
        };
        loop {
            let chunk = next_chunk_within(&mut body, self.bucket.body_idle(), key, at + batch_bytes - offset).await?;
            let finished = chunk.is_none();
            if let Some(chunk) = chunk {
                batch_bytes += chunk.len() as u64;
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                batch.push(chunk);
            }
            if at + batch_bytes > end {
                return Err(wrong_length(at + batch_bytes - offset));
            }
            if batch_bytes >= WRITE_BATCH_BYTES || (finished && batch_bytes > 0) {
                let (file, chunks) = (Arc::clone(file), std::mem::take(&mut batch));
                blocking(move || write_at(&file, at, &chunks)).await?;
                at += batch_bytes;
                batch_bytes = 0;
            }
            if finished {
                return if at == end { Ok(()) } else { Err(wrong_length(at - offset)) };
            }
        }
    }

    /// The body of object `oid`, or of bytes `offset..offset+len` of it.
    async fn get(&self, oid: &str, key: &str, range: Option<(u64, u64)>) -> Result<ByteStream, LfsError> {
        let range =
            range.filter(|(_, len)| *len > 0).map(|(offset, len)| format!("bytes={offset}-{}", offset + len - 1));
        let answer = self
            .bucket
            .follow(|| async {
                let request = self.bucket.client().get_object().bucket(self.bucket.name()).key(key);
                match request.set_range(range.clone()).send().await {
                    Ok(out) => Ok(Some(out)),
                    Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(None),
                    Err(e) => Err(self.bucket.classify("GetObject", key, e)),
                }
            })
            .await?;
        match answer {
            Some(out) => Ok(out.body),
            None => Err(LfsError::Missing { oid: oid.into(), key: key.into() }),
        }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.storage_dir.join("tmp")
    }

    /// The file must be inside the repository's git directory (where git-lfs keeps objects):
    /// an agent request must not make the daemon read arbitrary files of the user.
    async fn check_upload_path(&self, path: &Path) -> Result<PathBuf, LfsError> {
        let outside = || LfsError::OutsideRepository { path: path.to_path_buf() };
        let real = tokio::fs::canonicalize(path).await.map_err(|_| outside())?;
        let roots = [&self.git_common_dir, &self.storage_dir];
        for root in roots {
            if let Ok(root) = tokio::fs::canonicalize(root).await
                && real.starts_with(&root)
            {
                return Ok(real);
            }
        }
        Err(outside())
    }
}

/// The agent's name in git config, shared with the Python tool.
pub const AGENT_NAME: &str = "git-lfs-s3";

/// During `git clone` of a remote that has LFS objects, points the new repository's LFS at our
/// agent for that remote (the keys the Python tool's `git-lfs-s3 install --remote` writes), so
/// checkout gets real file contents with no extra step. Returns whether it did.
pub async fn configure_clone(
    bucket: &Bucket,
    layout: &Layout,
    git: &Git,
    remote_name: &str,
    bucket_name: &str,
    prefix: &str,
) -> Result<bool, LfsError> {
    if !bucket.has_any(&layout.lfs_prefix()).await? {
        return Ok(false);
    }
    let alias = git_s3_proto::url::lfs_alias_url(bucket_name, prefix);
    for (key, value) in [
        (format!("lfs.customtransfer.{AGENT_NAME}.path"), AGENT_NAME.to_string()),
        (format!("remote.{remote_name}.lfsurl"), alias.clone()),
        (format!("lfs.{alias}.standalonetransferagent"), AGENT_NAME.to_string()),
    ] {
        git.run(&["config", "--local", &key, &value]).await?;
    }
    Ok(true)
}

fn check_oid(oid: &str) -> Result<(), LfsError> {
    if is_lfs_oid(oid) { Ok(()) } else { Err(LfsError::BadOid(oid.to_string())) }
}

/// Hashes the file range by range, each as soon as it and all before it are complete.
async fn hash_in_order(
    file: Arc<NamedTempFile>,
    ranges: Vec<(u64, u64)>,
    mut done: tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> Result<Sha256, LfsError> {
    let mut complete = vec![false; ranges.len()];
    let (mut next, mut hasher) = (0, Sha256::new());
    while next < ranges.len() {
        // A closed channel with ranges missing means a download failed; that error wins.
        let Some(index) = done.recv().await else {
            return Err(LfsError::Io {
                what: "cannot hash",
                path: file.path().to_path_buf(),
                source: std::io::Error::other("a range did not arrive"),
            });
        };
        complete[index] = true;
        let first = next;
        while next < ranges.len() && complete[next] {
            next += 1;
        }
        if next > first {
            let (start, end) = (ranges[first].0, ranges[next - 1].0 + ranges[next - 1].1);
            let file = Arc::clone(&file);
            hasher = blocking(move || hash_span(&file, start..end, hasher)).await?;
        }
    }
    Ok(hasher)
}

/// Feeds bytes `span` of `file` to `hasher`.
fn hash_span(file: &NamedTempFile, span: std::ops::Range<u64>, mut hasher: Sha256) -> Result<Sha256, LfsError> {
    let mut buf = vec![0u8; HASH_BUFFER_BYTES];
    let mut at = span.start;
    while at < span.end {
        let want = (span.end - at).min(buf.len() as u64) as usize;
        file.as_file().read_exact_at(&mut buf[..want], at).map_err(LfsStore::io("cannot read", file.path()))?;
        hasher.update(&buf[..want]);
        at += want as u64;
    }
    Ok(hasher)
}

/// Writes `chunks` one after the other from `offset` on.
fn write_at(file: &NamedTempFile, mut offset: u64, chunks: &[Bytes]) -> Result<(), LfsError> {
    for chunk in chunks {
        file.as_file().write_all_at(chunk, offset).map_err(LfsStore::io("cannot write", file.path()))?;
        offset += chunk.len() as u64;
    }
    Ok(())
}

/// The next piece of a GET's body, `None` at its end.
fn verify(oid: &str, hasher: Sha256) -> Result<(), LfsError> {
    let actual = hex::encode(hasher.finalize());
    if actual == oid { Ok(()) } else { Err(LfsError::Corrupt { oid: oid.into(), actual }) }
}

/// A temp file in `dir` (created if need be) for a download of `oid`, named after it as
/// git-lfs names its own, created as git-lfs creates objects (0666 less the umask).
fn temp_file(dir: &Path, oid: &str, sharing: Sharing) -> Result<NamedTempFile, LfsError> {
    use std::os::unix::fs::PermissionsExt;
    sharing.create_dir_all(dir).map_err(LfsStore::io("cannot create", dir))?;
    tempfile::Builder::new()
        .prefix(&format!("{oid}-s3-"))
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(LfsStore::io("cannot create a temp file in", dir))
}

/// Gives a verified download the mode `core.sharedRepository` asks for, then renames its temp
/// file to `target`, or keeps it where it is when `None`; returns where it now is.
fn finish(file: NamedTempFile, target: Option<PathBuf>, sharing: Sharing) -> Result<PathBuf, LfsError> {
    sharing.apply(file.path()).map_err(LfsStore::io("cannot set the mode of", file.path()))?;
    let Some(target) = target else {
        return file.into_temp_path().keep().map_err(|e| LfsError::Io {
            what: "cannot keep",
            path: e.path.to_path_buf(),
            source: e.error,
        });
    };
    if let Some(dir) = target.parent() {
        sharing.create_dir_all(dir).map_err(LfsStore::io("cannot create", dir))?;
    }
    // On failure the temp file comes back inside the error and is removed with it.
    file.persist(&target).map_err(|e| LfsError::Io {
        what: "cannot move into place",
        path: target.clone(),
        source: e.error,
    })?;
    Ok(target)
}

/// Runs file work on the blocking pool, one trip for all of it.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LfsError> + Send + 'static,
) -> Result<T, LfsError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| LfsError::Io {
        what: "file work failed in",
        path: PathBuf::from("the daemon"),
        source: std::io::Error::other(e),
    })?
}

#[cfg(test)]
async fn sha256_of(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_of(&path).await.unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
