//! git-lfs objects at `P/lfs/<oid>`. Uploads skip what the bucket has, let S3 verify content
//! (the oid is the SHA-256 S3 checks), and go up in parallel parts read straight from the file;
//! downloads come in parallel ranges into the repository's LFS temp dir and are verified before
//! git-lfs sees them. Every request goes through the daemon-wide scheduler.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::primitives::{ByteStream, Length};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::bucket::{Bucket, EncryptedWith, S3Error};
use crate::git::{Git, GitError};
use crate::layout::{Layout, is_lfs_oid};
use crate::scheduler::Scheduler;
use crate::transfer::{MultipartUpload, TransferError, join_part, part_size_for};

/// Objects up to this size go in one request.
pub const SINGLE_REQUEST_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Buffer for hashing a downloaded file.
const HASH_BUFFER_BYTES: usize = 256 * 1024;
/// Buffer for writing downloads to disk.
const WRITE_BUFFER_BYTES: usize = 128 * 1024;
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
}

/// A repository's LFS objects in the bucket, and where its LFS files live locally.
pub struct LfsStore {
    pub bucket: Bucket,
    pub layout: Layout,
    pub scheduler: Arc<Scheduler>,
    /// The git directory shared by all worktrees: uploads must come from inside it.
    git_common_dir: PathBuf,
    /// Where git-lfs keeps objects (`lfs.storage`, else `<common dir>/lfs`).
    storage_dir: PathBuf,
}

impl LfsStore {
    pub async fn open(bucket: Bucket, layout: Layout, scheduler: Arc<Scheduler>, git: &Git) -> Result<Self, LfsError> {
        let git_common_dir =
            PathBuf::from(git.run(&["rev-parse", "--path-format=absolute", "--git-common-dir"]).await?);
        let storage_dir = match git.run(&["config", "--get", "lfs.storage"]).await {
            Ok(storage) if !storage.is_empty() => git_common_dir.join(storage),
            _ => git_common_dir.join("lfs"),
        };
        Ok(Self { bucket, layout, scheduler, git_common_dir, storage_dir })
    }

    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LfsError + 'a {
        move |source| LfsError::Io { what, path: path.to_path_buf(), source }
    }

    /// Where git-lfs keeps object `oid` (`objects/<2>/<2>/<oid>` in its storage).
    pub fn object_path(&self, oid: &str) -> PathBuf {
        let (first, second) = (oid.get(..2).unwrap_or_default(), oid.get(2..4).unwrap_or_default());
        self.storage_dir.join("objects").join(first).join(second).join(oid)
    }

    /// Moves a verified download into place where git-lfs looks for object `oid` (a rename:
    /// git-lfs never sees half an object).
    pub async fn place(&self, oid: &str, verified: &Path) -> Result<(), LfsError> {
        let target = self.object_path(oid);
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(Self::io("cannot create", dir))?;
        }
        let placed = tokio::fs::rename(verified, &target).await.map_err(Self::io("cannot move into place", &target));
        if placed.is_err() {
            let _ = tokio::fs::remove_file(verified).await;
        }
        placed
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
        self.upload_parts(&key, &path, size, sent).await
    }

    /// One PUT carrying the SHA-256 of the content: S3 itself refuses content that is not `oid`.
    async fn upload_whole(&self, oid: &str, key: &str, path: &Path, size: u64) -> Result<(), LfsError> {
        let _admission = self.scheduler.admit(size).await;
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

    async fn upload_parts(&self, key: &str, path: &Path, size: u64, sent: &AtomicU64) -> Result<(), LfsError> {
        let part_size = part_size_for(size);
        let upload = MultipartUpload::create(&self.bucket, key, Vec::new()).await?;
        let mut tasks: JoinSet<Result<aws_sdk_s3::types::CompletedPart, S3Error>> = JoinSet::new();
        let mut completed = Vec::new();
        let shared_sent = Arc::new(AtomicU64::new(0));
        let mut reported = 0;
        let mut report = |sent: &AtomicU64| {
            let now = shared_sent.load(Ordering::Relaxed);
            sent.fetch_add(now - reported, Ordering::Relaxed);
            reported = now;
        };
        let mut offset = 0;
        let mut part_number = 1;
        while offset < size {
            let len = part_size.min(size - offset);
            // Admission before spawning: at most the scheduler's worth of parts exist at once.
            let admission = self.scheduler.admit(len).await;
            let (parts, path, counter) = (upload.parts(), path.to_path_buf(), Arc::clone(&shared_sent));
            tasks.spawn(async move {
                let _admission = admission;
                let body = ByteStream::read_from()
                    .path(&path)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| S3Error::Other {
                        op: "UploadPart",
                        key: path.display().to_string(),
                        detail: e.to_string(),
                    })?;
                let part = parts.upload(part_number, body).await?;
                counter.fetch_add(len, Ordering::Relaxed);
                Ok(part)
            });
            while let Some(done) = tasks.try_join_next() {
                completed.push(done.map_err(|e| TransferError::Refused(e.to_string()))??);
            }
            report(sent);
            offset += len;
            part_number += 1;
        }
        while !tasks.is_empty() {
            completed.push(join_part(&mut tasks).await?);
            report(sent);
        }
        upload.complete(completed, size).await?;
        Ok(())
    }

    /// Brings object `oid` (of `size` bytes, as git-lfs says) into a temp file under the LFS
    /// storage dir, verified; returns its path.
    pub async fn download(&self, oid: &str, size: u64, received: &AtomicU64) -> Result<PathBuf, LfsError> {
        check_oid(oid)?;
        let key = self.layout.lfs_object(oid);
        let tmp_dir = self.storage_dir.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(Self::io("cannot create", &tmp_dir))?;
        let file = tempfile::Builder::new()
            .prefix(&format!("{oid}-s3-"))
            .tempfile_in(&tmp_dir)
            .map_err(Self::io("cannot create a temp file in", &tmp_dir))?;
        let path = file.path().to_path_buf();
        // The temp file is removed on every error path until it is verified and kept.
        let actual = if size <= SINGLE_REQUEST_MAX_BYTES {
            // One stream, hashed as it arrives.
            let mut hasher = Sha256::new();
            self.download_range(oid, &key, &path, 0, None, received, Some(&mut hasher)).await?;
            hex::encode(hasher.finalize())
        } else {
            self.download_ranges(oid, &key, &path, size, received).await?
        };
        if actual != oid {
            return Err(LfsError::Corrupt { oid: oid.into(), actual });
        }
        let kept = file.into_temp_path().keep().map_err(|e| LfsError::Io {
            what: "cannot keep",
            path: path.clone(),
            source: e.error,
        })?;
        Ok(kept)
    }

    /// Downloads ranges in parallel and hashes the file in order while later ranges still
    /// arrive (SHA-256 is sequential; reading back a range just written comes from the page
    /// cache). Returns the hex digest.
    async fn download_ranges(
        &self,
        oid: &str,
        key: &str,
        path: &Path,
        size: u64,
        received: &AtomicU64,
    ) -> Result<String, LfsError> {
        let file = tokio::fs::OpenOptions::new().write(true).open(path).await.map_err(Self::io("cannot open", path))?;
        file.set_len(size).await.map_err(Self::io("cannot size", path))?;
        let part_size = part_size_for(size);
        let ranges: Vec<(u64, u64)> =
            (0..size).step_by(part_size as usize).map(|offset| (offset, part_size.min(size - offset))).collect();
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let downloads: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(index, &(offset, len))| {
                let done_tx = done_tx.clone();
                async move {
                    self.download_range(oid, key, path, offset, Some(len), received, None).await?;
                    let _ = done_tx.send(index);
                    Ok::<(), LfsError>(())
                }
            })
            .collect();
        // Only the downloads hold senders now: the hasher sees the channel close if one fails.
        drop(done_tx);
        let (downloaded, digest) =
            tokio::join!(futures::future::try_join_all(downloads), hash_in_order(path, &ranges, done_rx));
        downloaded?;
        digest.map_err(Self::io("cannot read", path))
    }

    /// Writes bytes `offset..offset+len` of the object (all of it when `len` is `None`) at the
    /// same place in `path`, feeding `hasher` when given.
    #[allow(clippy::too_many_arguments)]
    async fn download_range(
        &self,
        oid: &str,
        key: &str,
        path: &Path,
        offset: u64,
        len: Option<u64>,
        received: &AtomicU64,
        mut hasher: Option<&mut Sha256>,
    ) -> Result<(), LfsError> {
        let _admission = self.scheduler.admit(len.unwrap_or(SINGLE_REQUEST_MAX_BYTES)).await;
        let range = len.filter(|len| *len > 0).map(|len| format!("bytes={offset}-{}", offset + len - 1));
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
        let Some(out) = answer else {
            return Err(LfsError::Missing { oid: oid.into(), key: key.into() });
        };
        let file = tokio::fs::OpenOptions::new().write(true).open(path).await.map_err(Self::io("cannot open", path))?;
        // Buffered: each unbuffered write would be its own trip to the blocking thread pool.
        let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(Self::io("cannot seek", path))?;
        let mut body = out.body;
        while let Some(chunk) = body.try_next().await.map_err(|e| S3Error::Other {
            op: "GetObject",
            key: key.into(),
            detail: e.to_string(),
        })? {
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&chunk);
            }
            file.write_all(&chunk).await.map_err(Self::io("cannot write", path))?;
            received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        file.flush().await.map_err(Self::io("cannot write", path))?;
        Ok(())
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

/// Hashes `path` range by range, each as soon as it and all before it are complete.
async fn hash_in_order(
    path: &Path,
    ranges: &[(u64, u64)],
    mut done: tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut complete = vec![false; ranges.len()];
    let mut next = 0;
    let mut hasher = Sha256::new();
    let mut file = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; HASH_BUFFER_BYTES];
    while next < ranges.len() {
        // A closed channel with ranges missing means a download failed; that error wins.
        let Some(index) = done.recv().await else { return Ok(String::new()) };
        complete[index] = true;
        while next < ranges.len() && complete[next] {
            let (offset, len) = ranges[next];
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut left = len;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                file.read_exact(&mut buf[..want]).await?;
                hasher.update(&buf[..want]);
                left -= want as u64;
            }
            next += 1;
        }
    }
    Ok(hex::encode(hasher.finalize()))
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
