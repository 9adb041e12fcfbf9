//! Streams data to S3 with bounded memory. Uploads of unknown length become multipart uploads
//! with parallel parts; an object appears only when its upload completes, and an upload that
//! fails or is dropped half-way is aborted, leaving no parts behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use crate::bucket::{Bucket, EncryptedWith, PutOptions, S3Error};
use crate::clients::bulk_transfer;
use crate::config::ChecksumMode;
use crate::scheduler::{Admission, STREAMED_BODY_BYTES};

/// S3 allows 5 MiB; larger parts mean fewer requests for big uploads.
pub const MIN_PART_SIZE_BYTES: u64 = 8 * 1024 * 1024;
/// S3's limit on the parts of one upload.
pub const MAX_PARTS: u64 = 10_000;
/// Parts one streamed upload keeps in memory and in flight.
pub const STREAM_PARTS_IN_FLIGHT: usize = 4;
/// Part sizes of a streamed upload double every this many parts, so an input of unknown
/// length never reaches the part limit.
const PARTS_PER_SIZE_STEP: i32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("reading the data to upload failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// A multipart upload in progress. Dropped before `complete`, it is aborted in the background.
pub struct MultipartUpload {
    parts: PartUploader,
    finished: bool,
}

/// What a part task needs; cheap to clone into each task.
#[derive(Clone)]
pub struct PartUploader {
    bucket: Bucket,
    key: String,
    upload_id: String,
}

impl MultipartUpload {
    /// Starts an upload. Safe to cancel: the request runs in a task of its own, and when the
    /// caller is gone by the time S3 answers (its client was killed), the new upload is dropped
    /// there, which aborts it, instead of being left open with nobody knowing its id.
    /// `metadata` becomes the object's user metadata.
    pub async fn create(bucket: &Bucket, key: &str, metadata: Vec<(String, String)>) -> Result<Self, S3Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (task_bucket, task_key) = (bucket.clone(), key.to_string());
        tokio::spawn(async move {
            let _ = tx.send(Self::start(&task_bucket, &task_key, metadata).await);
        });
        rx.await.unwrap_or_else(|_| {
            Err(S3Error::Other {
                op: "CreateMultipartUpload",
                key: key.into(),
                detail: "the request was cancelled".into(),
            })
        })
    }

    async fn start(bucket: &Bucket, key: &str, metadata: Vec<(String, String)>) -> Result<Self, S3Error> {
        let metadata = &metadata;
        let created = bucket
            .follow(|| async move {
                let mut request = bucket.client().create_multipart_upload().bucket(bucket.name()).key(key);
                for (k, v) in metadata {
                    request = request.metadata(k, v);
                }
                if bucket.checksums() == ChecksumMode::WhenSupported {
                    // The SDK checksums every part with CRC32; the upload must say so to be completed.
                    request = request.checksum_algorithm(ChecksumAlgorithm::Crc32);
                }
                // Parts, copied ones included, are encrypted as the upload says.
                let request = request.encrypted_with(bucket.kms_key_id());
                request.send().await.map_err(|e| bucket.classify("CreateMultipartUpload", key, e))
            })
            .await?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| S3Error::Other {
                op: "CreateMultipartUpload",
                key: key.into(),
                detail: "no upload id in the answer".into(),
            })?
            .to_string();
        Ok(Self { parts: PartUploader { bucket: bucket.clone(), key: key.to_string(), upload_id }, finished: false })
    }

    pub fn parts(&self) -> PartUploader {
        self.parts.clone()
    }

    /// Makes the object visible. `size` is the sum of the parts: when a retried completion finds
    /// the upload gone because the first attempt went through, an object of that size under this
    /// content-addressed key is ours.
    pub async fn complete(mut self, mut parts: Vec<CompletedPart>, size: u64) -> Result<(), S3Error> {
        parts.sort_by_key(|p| p.part_number());
        let PartUploader { bucket, key, upload_id } = &self.parts;
        let result = bucket
            .client()
            .complete_multipart_upload()
            .bucket(bucket.name())
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .customize()
            .config_override(bulk_transfer())
            .send()
            .await;
        self.finished = true;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchUpload") => match bucket.head(key).await? {
                Some(meta) if meta.size == size => Ok(()),
                _ => Err(bucket.classify("CompleteMultipartUpload", key, e)),
            },
            Err(e) => {
                self.finished = false;
                Err(bucket.classify("CompleteMultipartUpload", key, e))
            }
        }
    }

    pub async fn abort(mut self) {
        self.finished = true;
        self.parts.abort().await;
    }
}

impl Drop for MultipartUpload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let parts = self.parts.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { parts.abort().await });
        }
    }
}

impl PartUploader {
    /// Waits until a part of `bytes` may be read into memory and sent.
    pub async fn admit(&self, bytes: u64) -> Admission {
        self.bucket.scheduler().admit(bytes).await
    }

    /// Sends one part; `_admission` (from `admit`, taken before the part was read) is held
    /// until S3 has it.
    pub async fn upload(
        &self,
        part_number: i32,
        body: ByteStream,
        _admission: Admission,
    ) -> Result<CompletedPart, S3Error> {
        let out = self
            .bucket
            .client()
            .upload_part()
            .bucket(self.bucket.name())
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(part_number)
            .body(body)
            .customize()
            .config_override(bulk_transfer())
            .send()
            .await
            .map_err(|e| self.bucket.classify("UploadPart", &self.key, e))?;
        Ok(CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
            .build())
    }

    /// Copies `range` of `source` (while it is still version `if_match`) inside S3 as a part.
    pub async fn copy(
        &self,
        part_number: i32,
        source: &str,
        range: std::ops::Range<u64>,
        if_match: &str,
    ) -> Result<CompletedPart, S3Error> {
        let _admission = self.bucket.scheduler().admit_request().await;
        let out = self
            .bucket
            .client()
            .upload_part_copy()
            .bucket(self.bucket.name())
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(part_number)
            .copy_source(self.bucket.copy_source(source))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .copy_source_if_match(if_match)
            .customize()
            .config_override(bulk_transfer())
            .send()
            .await
            .map_err(|e| self.bucket.classify("UploadPartCopy", &self.key, e))?;
        let result = out.copy_part_result();
        Ok(CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(result.and_then(|r| r.e_tag()).map(str::to_string))
            .set_checksum_crc32(result.and_then(|r| r.checksum_crc32()).map(str::to_string))
            .build())
    }

    async fn abort(&self) {
        if let Err(e) = self.bucket.abort_upload(&self.key, &self.upload_id).await {
            tracing::warn!(key = %self.key, error = %e, "could not abort an unfinished upload");
        }
    }
}

/// Part size for an object of `size` bytes: at least the minimum, and large enough that the
/// object fits in S3's part limit.
pub fn part_size_for(size: u64) -> u64 {
    MIN_PART_SIZE_BYTES.max(size.div_ceil(MAX_PARTS))
}

/// Uploads the file at `path`, of `size` bytes, to `key`: one PUT below the part size, else a
/// multipart upload whose parts are read from the file and sent at once, as many as the
/// scheduler admits. `sent` counts the bytes S3 has.
pub async fn upload_file(
    bucket: &Bucket,
    key: &str,
    path: &std::path::Path,
    size: u64,
    sent: &AtomicU64,
) -> Result<(), TransferError> {
    upload_file_with(bucket, key, path, size, sent, Vec::new(), async || Ok(())).await
}

/// `upload_file` with user metadata on the object, and `before_commit` run once every byte is
/// sent, right before the object would become visible: an error there abandons the upload and
/// leaves nothing behind.
pub async fn upload_file_with<F>(
    bucket: &Bucket,
    key: &str,
    path: &std::path::Path,
    size: u64,
    sent: &AtomicU64,
    metadata: Vec<(String, String)>,
    before_commit: F,
) -> Result<(), TransferError>
where
    F: AsyncFnOnce() -> Result<(), String>,
{
    let body = |offset: u64, len: u64| async move {
        ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(aws_sdk_s3::primitives::Length::Exact(len))
            .build()
            .await
            .map_err(|e| TransferError::Read(std::io::Error::other(e)))
    };
    if size < MIN_PART_SIZE_BYTES {
        let admission = bucket.scheduler().admit(size).await;
        let bytes = tokio::fs::read(path).await.map_err(TransferError::Read)?;
        if bytes.len() as u64 != size {
            return Err(TransferError::Refused(format!("{} changed while it was uploaded", path.display())));
        }
        before_commit().await.map_err(TransferError::Refused)?;
        let options = PutOptions { metadata, ..Default::default() };
        bucket.put_admitted(key, bytes, options, Some(admission)).await?;
        sent.fetch_add(size, Ordering::Relaxed);
        return Ok(());
    }
    let part_size = part_size_for(size);
    let upload = MultipartUpload::create(bucket, key, metadata).await?;
    let mut tasks: JoinSet<Result<CompletedPart, S3Error>> = JoinSet::new();
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
        let admission = bucket.scheduler().admit(len.min(STREAMED_BODY_BYTES)).await;
        let (parts, part, counter) = (upload.parts(), body(offset, len).await?, Arc::clone(&shared_sent));
        tasks.spawn(async move {
            let part = parts.upload(part_number, part, admission).await?;
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
    if let Err(why) = before_commit().await {
        upload.abort().await;
        return Err(TransferError::Refused(why));
    }
    upload.complete(completed, size).await?;
    Ok(())
}

/// Uploads everything `reader` yields to `key`. `before_commit` runs once the input has ended,
/// right before the object would become visible; an error there abandons the upload and leaves
/// nothing behind.
pub async fn upload_stream<R, F>(
    bucket: &Bucket,
    key: &str,
    reader: &mut R,
    uploaded: Arc<AtomicU64>,
    before_commit: F,
) -> Result<u64, TransferError>
where
    R: AsyncRead + Unpin,
    F: AsyncFnOnce() -> Result<(), String>,
{
    // Every part's memory is admitted before it is read, and held until S3 has the part.
    let scheduler = bucket.scheduler();
    let admission = scheduler.admit(MIN_PART_SIZE_BYTES).await;
    let first = read_part(reader, MIN_PART_SIZE_BYTES).await?;
    if (first.len() as u64) < MIN_PART_SIZE_BYTES {
        let len = first.len() as u64;
        before_commit().await.map_err(TransferError::Refused)?;
        bucket.put_admitted(key, first, PutOptions::default(), Some(admission)).await?;
        uploaded.fetch_add(len, Ordering::Relaxed);
        return Ok(len);
    }
    let upload = MultipartUpload::create(bucket, key, Vec::new()).await?;
    let parts = upload.parts();
    let mut in_flight: JoinSet<Result<CompletedPart, S3Error>> = JoinSet::new();
    let mut completed = Vec::new();
    let mut part_number = 1;
    let mut total = 0u64;
    let (mut next, mut admission) = (first, admission);
    loop {
        let len = next.len() as u64;
        total += len;
        let (parts, uploaded) = (parts.clone(), uploaded.clone());
        in_flight.spawn(async move {
            let part = parts.upload(part_number, ByteStream::from(next), admission).await?;
            uploaded.fetch_add(len, Ordering::Relaxed);
            Ok(part)
        });
        if in_flight.len() >= STREAM_PARTS_IN_FLIGHT {
            completed.push(join_part(&mut in_flight).await?);
        }
        part_number += 1;
        let part_size = MIN_PART_SIZE_BYTES << ((part_number - 1) / PARTS_PER_SIZE_STEP).min(8);
        admission = scheduler.admit(part_size).await;
        next = read_part(reader, part_size).await?;
        if next.is_empty() {
            drop(admission);
            break;
        }
    }
    while !in_flight.is_empty() {
        completed.push(join_part(&mut in_flight).await?);
    }
    if let Err(why) = before_commit().await {
        upload.abort().await;
        return Err(TransferError::Refused(why));
    }
    upload.complete(completed, total).await?;
    Ok(total)
}

pub async fn join_part(
    in_flight: &mut JoinSet<Result<CompletedPart, S3Error>>,
) -> Result<CompletedPart, TransferError> {
    match in_flight.join_next().await {
        Some(Ok(part)) => Ok(part?),
        Some(Err(join)) => Err(TransferError::Refused(format!("an upload task failed: {join}"))),
        None => Err(TransferError::Refused("no upload task to wait for".into())),
    }
}

/// Reads until `size` bytes or the end of input.
async fn read_part<R: AsyncRead + Unpin>(reader: &mut R, size: u64) -> Result<Vec<u8>, TransferError> {
    let mut buf = Vec::with_capacity(size as usize);
    reader.take(size).read_to_end(&mut buf).await.map_err(TransferError::Read)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_respect_the_part_limit() {
        assert_eq!(part_size_for(1), MIN_PART_SIZE_BYTES);
        assert_eq!(part_size_for(300 * 1024 * 1024), MIN_PART_SIZE_BYTES);
        let huge = 200 * 1024 * 1024 * 1024u64;
        assert!(part_size_for(huge) * MAX_PARTS >= huge);
    }
}
