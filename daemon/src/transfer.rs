//! Streams data to and from S3 with bounded memory: uploads of unknown length become multipart
//! uploads with parallel parts, and the object appears only when the upload completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use crate::bucket::{Bucket, PutOptions, S3Error};

/// S3 allows 5 MiB; larger parts mean fewer requests for big bundles.
pub const MIN_PART_SIZE_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploaded at once by one upload; memory is about this many parts.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Part sizes double every this many parts, so S3's 10,000-part limit is never reached.
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
    let first = read_part(reader, MIN_PART_SIZE_BYTES).await?;
    if first.len() < MIN_PART_SIZE_BYTES {
        let len = first.len() as u64;
        before_commit().await.map_err(TransferError::Refused)?;
        bucket.put_bytes(key, first, PutOptions::default()).await?;
        uploaded.fetch_add(len, Ordering::Relaxed);
        return Ok(len);
    }
    let created = bucket
        .client()
        .create_multipart_upload()
        .bucket(bucket.name())
        .key(key)
        .send()
        .await
        .map_err(|e| bucket.classify("CreateMultipartUpload", key, e))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let result = upload_parts(
        bucket,
        key,
        &upload_id,
        first,
        reader,
        uploaded,
        before_commit,
    )
    .await;
    if result.is_err() {
        let abort = bucket
            .client()
            .abort_multipart_upload()
            .bucket(bucket.name())
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
        if let Err(e) = abort {
            tracing::warn!(%key, error = %bucket.classify("AbortMultipartUpload", key, e), "could not abort a failed upload");
        }
    }
    result
}

async fn upload_parts<R, F>(
    bucket: &Bucket,
    key: &str,
    upload_id: &str,
    first: Vec<u8>,
    reader: &mut R,
    uploaded: Arc<AtomicU64>,
    before_commit: F,
) -> Result<u64, TransferError>
where
    R: AsyncRead + Unpin,
    F: AsyncFnOnce() -> Result<(), String>,
{
    let mut in_flight: JoinSet<Result<CompletedPart, S3Error>> = JoinSet::new();
    let mut completed = Vec::new();
    let mut part_number = 1;
    let mut total = 0u64;
    let mut next = first;
    loop {
        total += next.len() as u64;
        in_flight.spawn(upload_part(
            bucket.clone(),
            key.to_string(),
            upload_id.to_string(),
            part_number,
            next,
            uploaded.clone(),
        ));
        if in_flight.len() >= PARTS_IN_FLIGHT {
            completed.push(join_part(&mut in_flight).await?);
        }
        part_number += 1;
        let part_size = MIN_PART_SIZE_BYTES << ((part_number - 1) / PARTS_PER_SIZE_STEP).min(8);
        next = read_part(reader, part_size).await?;
        if next.is_empty() {
            break;
        }
    }
    while !in_flight.is_empty() {
        completed.push(join_part(&mut in_flight).await?);
    }
    completed.sort_by_key(|p| p.part_number());
    before_commit().await.map_err(TransferError::Refused)?;
    bucket
        .client()
        .complete_multipart_upload()
        .bucket(bucket.name())
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .map_err(|e| bucket.classify("CompleteMultipartUpload", key, e))?;
    Ok(total)
}

async fn join_part(
    in_flight: &mut JoinSet<Result<CompletedPart, S3Error>>,
) -> Result<CompletedPart, TransferError> {
    match in_flight.join_next().await {
        Some(Ok(part)) => Ok(part?),
        Some(Err(join)) => Err(TransferError::Refused(format!(
            "an upload task failed: {join}"
        ))),
        None => Err(TransferError::Refused("no upload task to wait for".into())),
    }
}

async fn upload_part(
    bucket: Bucket,
    key: String,
    upload_id: String,
    part_number: i32,
    body: Vec<u8>,
    uploaded: Arc<AtomicU64>,
) -> Result<CompletedPart, S3Error> {
    let len = body.len() as u64;
    let out = bucket
        .client()
        .upload_part()
        .bucket(bucket.name())
        .key(&key)
        .upload_id(&upload_id)
        .part_number(part_number)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| bucket.classify("UploadPart", &key, e))?;
    uploaded.fetch_add(len, Ordering::Relaxed);
    Ok(CompletedPart::builder()
        .part_number(part_number)
        .set_e_tag(out.e_tag().map(str::to_string))
        .build())
}

/// Reads until `size` bytes or the end of input.
async fn read_part<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
) -> Result<Vec<u8>, TransferError> {
    let mut buf = Vec::with_capacity(size);
    let mut limited = reader.take(size as u64);
    limited
        .read_to_end(&mut buf)
        .await
        .map_err(TransferError::Read)?;
    Ok(buf)
}
