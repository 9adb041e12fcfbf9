//! One bucket reached through one S3 client: the S3 calls this project makes, each turning the
//! SDK's errors into a typed error that says what the user should check.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::copy_object::builders::CopyObjectFluentBuilder;
use aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder;
use aws_sdk_s3::operation::list_multipart_uploads::ListMultipartUploadsOutput;
use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{EncodingType, ServerSideEncryption};
use aws_smithy_types::date_time::Format;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::clients::{ClientCache, FALLBACK_REGION, FoundRegion, MAX_ATTEMPTS, READ_TIMEOUT};
use crate::config::{ChecksumMode, RemoteConfig, S3Settings};
use crate::scheduler::{Admission, STREAMED_BODY_BYTES, Scheduler};

#[derive(Debug, Clone, thiserror::Error)]
pub enum S3Error {
    #[error("bucket '{bucket}' does not exist; check the URL and the region (git config s3.region, or AWS_REGION)")]
    NoSuchBucket { bucket: String },
    #[error(
        "access denied: {} on s3://{bucket}/{key} ({op}); check which credentials are in use (AWS_PROFILE, or s3://profile@bucket/...) and that their policy allows it (README: IAM policy)",
        iam_action(op)
    )]
    AccessDenied { bucket: String, op: &'static str, key: String },
    #[error(
        "S3 could not use the KMS key {} for {op} of '{key}' ({detail}); the credentials need kms:GenerateDataKey on it to write and kms:Decrypt to read",
        match (kms_key, *op) {
            (_, "GetObject" | "HeadObject") => "the object was written with".to_string(),
            (Some(key), _) => format!("'{key}'"),
            (None, _) => "of the bucket's default encryption".to_string(),
        }
    )]
    Kms { op: &'static str, key: String, kms_key: Option<String>, detail: String },
    #[error("bucket '{bucket}' is in region {region}, not {asked}; set it with 'git config s3.region {region}'")]
    WrongRegion { bucket: String, region: String, asked: String },
    #[error(
        "no AWS credentials found; set AWS_PROFILE, run 'aws configure' or 'aws sso login', or name a profile in the URL (s3://profile@bucket/prefix)"
    )]
    NoCredentials,
    #[error("S3 rejected the credentials ({code}); refresh them (e.g. 'aws sso login') or check AWS_PROFILE")]
    BadCredentials { code: String },
    #[error(
        "cannot reach S3 at {endpoint} ({detail}); check git config s3.endpoint or AWS_ENDPOINT_URL, and the network"
    )]
    Unreachable { endpoint: String, detail: String },
    #[error("S3 is throttling requests (SlowDown) and retries did not help; try again in a minute")]
    Throttled,
    #[error("this S3 store does not implement {op}")]
    NotImplemented { op: &'static str },
    #[error(
        "the listing of {prefix} cannot be read, even URL-encoded ({detail}); if a key there{} holds characters XML cannot carry, delete it",
        last_readable.as_ref().map(|k| format!(" after '{k}'")).unwrap_or_default()
    )]
    UnreadableListing { prefix: String, last_readable: Option<String>, detail: String },
    #[error("'{key}' is larger than the {limit} bytes expected of it; delete it or write it anew")]
    TooLarge { key: String, limit: usize },
    #[error(
        "S3 stopped sending '{key}' (nothing for {}s after {received} bytes); check the network, then try again",
        idle.as_secs()
    )]
    Stalled { key: String, received: u64, idle: Duration },
    #[error("S3 {op} of '{key}' failed: {detail}")]
    Other { op: &'static str, key: String, detail: String },
}

enum ListFailure {
    /// S3 answered with a listing that cannot be parsed: the last key read before it, if any,
    /// and why.
    Unreadable {
        last_readable: Option<String>,
        detail: String,
    },
    S3(S3Error),
}

/// A listed object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

/// What HEAD tells about one object.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    pub etag: Option<String>,
    pub metadata: HashMap<String, String>,
}

/// The result of a conditional write.
#[derive(Debug)]
pub enum Conditional {
    Written,
    /// The condition did not hold (412, or 409 for a concurrent conditional write). The server's
    /// clock at that moment, from the response's `Date`, when it sent one.
    Refused {
        server_time: Option<SystemTime>,
    },
}

/// An object's body being received, admitted by the scheduler until it is dropped.
pub struct Body {
    body: ByteStream,
    /// Bytes this answer carries.
    pub len: u64,
    pub etag: Option<String>,
    key: String,
    received: u64,
    idle: Duration,
    _admission: Admission,
}

impl Body {
    /// The next piece of the body, `None` at its end. A body that sends nothing for the remote's
    /// idle limit fails (`S3Error::Stalled`): a slow one goes on, a stalled one cannot hang a command.
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, S3Error> {
        let chunk = next_chunk_within(&mut self.body, self.idle, &self.key, self.received).await?;
        self.received += chunk.as_ref().map_or(0, |c| c.len() as u64);
        Ok(chunk)
    }
}

/// The next piece of `body`, failing when none comes within `idle`; `received` says how far the
/// body had come, for the message.
pub async fn next_chunk_within(
    body: &mut ByteStream,
    idle: Duration,
    key: &str,
    received: u64,
) -> Result<Option<bytes::Bytes>, S3Error> {
    match tokio::time::timeout(idle, body.next()).await {
        Err(_) => Err(S3Error::Stalled { key: key.to_string(), received, idle }),
        Ok(None) => Ok(None),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(e))) => Err(S3Error::Other { op: "GetObject", key: key.to_string(), detail: e.to_string() }),
    }
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

#[derive(Debug, Default)]
pub struct PutOptions {
    pub if_none_match_any: bool,
    pub if_match: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub content_disposition: Option<String>,
}

#[derive(Clone)]
pub struct Bucket {
    /// Moves to the bucket's region when S3 names another one; clones move with it.
    client: Arc<RwLock<Client>>,
    clients: Arc<ClientCache>,
    /// What the client was built from; its region may be replaced by the bucket's own.
    settings: S3Settings,
    name: String,
    checksums: ChecksumMode,
    /// Every object written is encrypted with this KMS key, when set.
    kms_key_id: Option<String>,
    /// Admits every request that moves data, across all of the daemon's clients.
    scheduler: Arc<Scheduler>,
    /// How long a body may send nothing before it counts as stalled.
    body_idle: Duration,
}

impl Bucket {
    /// The remote's bucket, reached through a warm client: in the region S3 named for it
    /// earlier in this daemon's life, if it did.
    pub async fn open(clients: &Arc<ClientCache>, scheduler: &Arc<Scheduler>, config: &RemoteConfig) -> Self {
        let name = config.url.bucket.clone();
        let mut settings = config.s3.clone();
        if let Some(region) = clients.bucket_region(settings.endpoint.as_deref(), &name) {
            settings.region = Some(region);
        }
        let client = clients.get(&settings).await;
        Self {
            client: Arc::new(RwLock::new(client)),
            clients: clients.clone(),
            checksums: settings.checksums,
            settings,
            name,
            kms_key_id: config.kms_key_id.clone(),
            scheduler: scheduler.clone(),
            body_idle: config.body_idle,
        }
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// How long a body may send nothing before it counts as stalled.
    pub fn body_idle(&self) -> Duration {
        self.body_idle
    }

    pub fn checksums(&self) -> ChecksumMode {
        self.checksums
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> Client {
        self.client.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The KMS key objects are written with, if one is configured.
    pub fn kms_key_id(&self) -> Option<&str> {
        self.kms_key_id.as_deref()
    }

    /// The region requests are signed for now.
    fn region(&self) -> String {
        self.client().config().region().map_or(FALLBACK_REGION.to_string(), |r| r.to_string())
    }

    /// Runs `request` (whose S3 calls go through `self.client()`); when S3 answers that the
    /// bucket lives in another region, moves there (remembered by the daemon, so later commands
    /// start there) and runs it once more. With AWS's endpoints the requests go to that region's
    /// endpoint; an explicit endpoint stays, and only the signing region follows.
    pub async fn follow<T, F, Fut>(&self, request: F) -> Result<T, S3Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, S3Error>>,
    {
        // The region this request is signed for: a request running beside it may move the
        // client before this one's answer is read.
        let asked = self.region();
        let region = match request().await {
            Err(S3Error::WrongRegion { region, .. }) if region != asked => region,
            other => return other,
        };
        if self.region() != region {
            self.move_to(&region).await;
        }
        let retried = request().await;
        // Remembered only once S3 took a request there: a region that does not work is not
        // kept over the user's configuration.
        if !matches!(retried, Err(S3Error::WrongRegion { .. })) {
            let endpoint = self.settings.endpoint.clone().unwrap_or_default();
            self.clients.remember_region(FoundRegion { bucket: self.name.clone(), endpoint, region, asked });
        }
        retried
    }

    async fn move_to(&self, region: &str) {
        tracing::info!(bucket = %self.name, %region, "S3 names another region for the bucket; following it");
        let mut settings = self.settings.clone();
        settings.region = Some(region.to_string());
        let client = self.clients.get(&settings).await;
        *self.client.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = client;
    }

    /// Every key under `prefix`, all pages. Keys are listed as they are; a listing S3 cannot send
    /// as XML (a key holding a control character) is asked for again URL-encoded, as the Python
    /// tool always asks, and decoded the way S3 encodes (`+` is a space, everything else `%XX`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        self.follow(|| self.list_once(prefix)).await
    }

    async fn list_once(&self, prefix: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        read_listing(prefix, "the listing", |url_encoded| self.list_pages(prefix, url_encoded)).await
    }

    async fn list_pages(&self, prefix: &str, url_encoded: bool) -> Result<Vec<ObjectInfo>, ListFailure> {
        let mut request = self.client().list_objects_v2().bucket(&self.name).prefix(prefix);
        if url_encoded {
            request = request.encoding_type(EncodingType::Url);
        }
        let mut pages = request.into_paginator().send();
        let mut objects = Vec::new();
        loop {
            let admission = self.scheduler.admit_request().await;
            let Some(page) = pages.next().await else { break };
            drop(admission);
            let page = match page {
                Ok(page) => page,
                // A 200 whose body could not be read.
                Err(e) if status_of(&e) == Some(200) => {
                    let last_readable = objects.last().map(|o: &ObjectInfo| o.key.clone());
                    return Err(ListFailure::Unreadable { last_readable, detail: innermost_cause(&e) });
                }
                Err(e) => return Err(ListFailure::S3(self.classify("ListObjectsV2", prefix, e))),
            };
            let decode = page.encoding_type() == Some(&EncodingType::Url);
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                objects.push(ObjectInfo {
                    key: if decode { url_decode_key(key) } else { key.to_string() },
                    size: object.size().unwrap_or(0).max(0) as u64,
                    last_modified: object.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
                });
            }
        }
        Ok(objects)
    }

    /// Whether anything is stored under `prefix` (one request, one key; asked again URL-encoded
    /// when the key cannot be sent as XML, as `list` does).
    pub async fn has_any(&self, prefix: &str) -> Result<bool, S3Error> {
        let _admission = self.scheduler.admit_request().await;
        let page = self
            .follow(|| async move {
                let request = || self.client().list_objects_v2().bucket(&self.name).prefix(prefix).max_keys(1);
                match request().send().await {
                    Err(e) if status_of(&e) == Some(200) => request().encoding_type(EncodingType::Url).send().await,
                    answer => answer,
                }
                .map_err(|e| self.classify("ListObjectsV2", prefix, e))
            })
            .await?;
        Ok(!page.contents().is_empty())
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, S3Error> {
        self.follow(|| self.head_once(key)).await
    }

    async fn head_once(&self, key: &str) -> Result<Option<ObjectMeta>, S3Error> {
        match self.client().head_object().bucket(&self.name).key(key).send().await {
            Ok(out) => Ok(Some(ObjectMeta {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                last_modified: out.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
                etag: out.e_tag().map(str::to_string),
                metadata: out.metadata().cloned().unwrap_or_default(),
            })),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.classify("HeadObject", key, e)),
        }
    }

    /// The body of a small object, or `None` when it does not exist. Whoever can write to the
    /// bucket decides how large an object is: past `limit` bytes this stops reading and fails.
    pub async fn get_small(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, S3Error> {
        match self.get(key, 0, None, None, limit as u64).await? {
            Some(object) => read_bounded(key, object, limit).await.map(Some),
            None => Ok(None),
        }
    }

    /// `get_small`, with the version (ETag) the bytes are of: what a conditional write of the
    /// object names as the one it replaces.
    pub async fn get_small_tagged(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, S3Error> {
        match self.get(key, 0, None, None, limit as u64).await? {
            Some(object) => {
                let etag = object.etag.clone();
                Ok(Some((read_bounded(key, object, limit).await?, etag)))
            }
            None => Ok(None),
        }
    }

    /// The object from byte `start` on (a streaming body), or `None` when it does not exist;
    /// with `if_match`, only while it is still that version
    /// (a changed object is an error, not a silently different body).
    pub async fn get_from(&self, key: &str, start: u64, if_match: Option<&str>) -> Result<Option<Body>, S3Error> {
        self.get(key, start, None, if_match, STREAMED_BODY_BYTES).await
    }

    /// The bytes of `range` of an object, or `None` when it does not exist; with `if_match`, only
    /// while it is still that version.
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Option<Vec<u8>>, S3Error> {
        let limit = (range.end - range.start) as usize;
        match self.get(key, range.start, Some(range.end), if_match, limit as u64).await? {
            // A store that ignores `Range` would send the whole object.
            Some(object) => read_bounded(key, object, limit).await.map(Some),
            None => Ok(None),
        }
    }

    /// GetObject of bytes `start..end` (`end` absent: to the last byte), admitted as holding
    /// `held` bytes in memory until the body is dropped.
    async fn get(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
        if_match: Option<&str>,
        held: u64,
    ) -> Result<Option<Body>, S3Error> {
        let admission = self.scheduler.admit(held).await;
        let answer = self.follow(|| self.get_once(key, start, end, if_match)).await?;
        Ok(answer.map(|(body, len, etag)| Body {
            body,
            len,
            etag,
            key: key.to_string(),
            received: 0,
            idle: self.body_idle,
            _admission: admission,
        }))
    }

    async fn get_once(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
        if_match: Option<&str>,
    ) -> Result<Option<(ByteStream, u64, Option<String>)>, S3Error> {
        let range = match (start, end) {
            (0, None) => None,
            (start, None) => Some(format!("bytes={start}-")),
            (start, Some(end)) => Some(format!("bytes={start}-{}", end.saturating_sub(1))),
        };
        let request = self
            .client()
            .get_object()
            .bucket(&self.name)
            .key(key)
            .set_if_match(if_match.map(str::to_string))
            .set_range(range);
        match request.send().await {
            Ok(out) => {
                let len = out.content_length().unwrap_or(0).max(0) as u64;
                let etag = out.e_tag().map(str::to_string);
                Ok(Some((out.body, len, etag)))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.classify("GetObject", key, e)),
        }
    }

    /// Writes `body` to `key`. An empty body (a lock, a mark) is never queued behind data.
    pub async fn put_bytes(&self, key: &str, body: Vec<u8>, options: PutOptions) -> Result<Conditional, S3Error> {
        let admission = match body.len() {
            0 => None,
            len => Some(self.scheduler.admit(len as u64).await),
        };
        self.put_admitted(key, body, options, admission).await
    }

    /// `put_bytes` of a body whose memory was admitted before it was read.
    pub async fn put_admitted(
        &self,
        key: &str,
        body: Vec<u8>,
        options: PutOptions,
        _admission: Option<Admission>,
    ) -> Result<Conditional, S3Error> {
        let body = bytes::Bytes::from(body);
        let options = &options;
        self.follow(|| self.put_once(key, body.clone(), options)).await
    }

    async fn put_once(&self, key: &str, body: bytes::Bytes, options: &PutOptions) -> Result<Conditional, S3Error> {
        let large = body.len() > SMALL_BODY_BYTES;
        let mut request = self.client().put_object().bucket(&self.name).key(key).body(ByteStream::from(body));
        if options.if_none_match_any {
            request = request.if_none_match("*");
        }
        if let Some(etag) = &options.if_match {
            request = request.if_match(etag);
        }
        for (k, v) in &options.metadata {
            request = request.metadata(k, v);
        }
        if let Some(disposition) = &options.content_disposition {
            request = request.content_disposition(disposition);
        }
        let request = request.encrypted_with(self.kms_key_id()).customize();
        let request = if large { request.config_override(crate::clients::bulk_transfer()) } else { request };
        match request.send().await {
            Ok(_) => Ok(Conditional::Written),
            Err(e)
                if matches!(status_of(&e), Some(412 | 409))
                    || (status_of(&e) == Some(404) && e.code() == Some("NoSuchKey")) =>
            {
                Ok(Conditional::Refused { server_time: server_time(&e) })
            }
            Err(e) => Err(self.classify("PutObject", key, e)),
        }
    }

    /// Copies an object within the bucket (S3 copies up to 5 GiB this way).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), S3Error> {
        let _admission = self.scheduler.admit_request().await;
        self.follow(|| async move {
            let mut request =
                self.client().copy_object().bucket(&self.name).key(to).copy_source(self.copy_source(from));
            if self.checksums == ChecksumMode::WhenSupported {
                // A whole-object checksum of the copy: a multipart source's composite one does not
                // describe it (moto copies it anyway, and reads of the copy then fail).
                request = request.checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32);
            }
            request
                .encrypted_with(self.kms_key_id())
                .customize()
                .config_override(crate::clients::bulk_transfer())
                .send()
                .await
                .map_err(|e| self.classify("CopyObject", to, e))
        })
        .await?;
        Ok(())
    }

    /// `x-amz-copy-source` naming `key` in this bucket.
    pub fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.name, percent_encode_key(key))
    }

    /// Multipart uploads in progress under `prefix`, all pages. As with `list`, a listing S3
    /// cannot send as XML (a key holding a control character) is asked for again URL-encoded.
    pub async fn open_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, S3Error> {
        read_listing(prefix, "the listing of uploads", |url_encoded| self.upload_pages(prefix, url_encoded)).await
    }

    async fn upload_pages(&self, prefix: &str, url_encoded: bool) -> Result<Vec<OpenUpload>, ListFailure> {
        let mut uploads = Vec::new();
        let mut markers: Option<UploadMarkers> = None;
        loop {
            let marker = markers.take();
            let _admission = self.scheduler.admit_request().await;
            let page = self
                .follow(|| async {
                    let request = self
                        .client()
                        .list_multipart_uploads()
                        .bucket(&self.name)
                        .prefix(prefix)
                        .set_encoding_type(url_encoded.then_some(EncodingType::Url))
                        .set_key_marker(marker.as_ref().map(|m| m.key.clone()))
                        .set_upload_id_marker(marker.as_ref().and_then(|m| m.upload_id.clone()));
                    match request.send().await {
                        Ok(page) => Ok(Ok(page)),
                        // A 200 whose body could not be read.
                        Err(e) if status_of(&e) == Some(200) => Ok(Err(innermost_cause(&e))),
                        Err(e) => Err(self.classify("ListMultipartUploads", prefix, e)),
                    }
                })
                .await
                .map_err(ListFailure::S3)?;
            let page = match page {
                Ok(page) => page,
                Err(detail) => {
                    let last_readable = uploads.last().map(|u: &OpenUpload| u.key.clone());
                    return Err(ListFailure::Unreadable { last_readable, detail });
                }
            };
            let (read, next) = read_upload_page(&page);
            uploads.extend(read);
            match next {
                Some(next) => markers = Some(next),
                None => return Ok(uploads),
            }
        }
    }

    /// When an upload last made progress: its newest part, or its start when it has none (or
    /// when the server cannot list the parts).
    pub async fn last_activity(&self, upload: &OpenUpload) -> Option<SystemTime> {
        match self.newest_part(upload).await {
            Ok(newest) => newest.max(upload.initiated),
            Err(e) => {
                tracing::debug!(key = %upload.key, error = %e, "cannot list the parts of an upload");
                upload.initiated
            }
        }
    }

    async fn newest_part(&self, upload: &OpenUpload) -> Result<Option<SystemTime>, S3Error> {
        let mut latest = None;
        let mut marker = None::<String>;
        loop {
            let _admission = self.scheduler.admit_request().await;
            let page = self
                .client()
                .list_parts()
                .bucket(&self.name)
                .key(&upload.key)
                .upload_id(&upload.upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(|e| self.classify("ListParts", &upload.key, e))?;
            for part in page.parts() {
                let modified = part.last_modified().and_then(|t| SystemTime::try_from(*t).ok());
                latest = latest.max(modified);
            }
            if page.is_truncated() != Some(true) || page.next_part_number_marker().is_none() {
                return Ok(latest);
            }
            marker = page.next_part_number_marker().map(str::to_string);
        }
    }

    /// Aborts a multipart upload; one that is already gone counts as aborted.
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let result =
            self.client().abort_multipart_upload().bucket(&self.name).key(key).upload_id(upload_id).send().await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.classify("AbortMultipartUpload", key, e)),
        }
    }

    /// Deletes `key`; deleting what is already gone succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.follow(|| async move {
            match self.client().delete_object().bucket(&self.name).key(key).send().await {
                Ok(_) => Ok(()),
                Err(e) if status_of(&e) == Some(404) => Ok(()),
                Err(e) => Err(self.classify("DeleteObject", key, e)),
            }
        })
        .await
    }

    fn unreachable(&self, detail: String) -> S3Error {
        let endpoint = self.settings.endpoint.clone().unwrap_or_else(|| "AWS S3".into());
        S3Error::Unreachable { endpoint, detail }
    }

    pub fn classify<E>(
        &self,
        op: &'static str,
        key: &str,
        err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = err.code().map(str::to_string);
        let status = status_of(&err);
        // Always a redirect, even when the client moved there meanwhile: `follow` tells.
        if let Some(region) = redirected_region(&err) {
            return S3Error::WrongRegion { bucket: self.name.clone(), region, asked: self.region() };
        }
        let message = err.message().unwrap_or_default();
        if code.as_deref().is_some_and(|c| c.starts_with("KMS.")) || message.contains("kms:") {
            let detail = format!("{}: {message}", code.as_deref().unwrap_or("AccessDenied"));
            return S3Error::Kms { op, key: key.to_string(), kms_key: self.kms_key_id.clone(), detail };
        }
        match (&err, code.as_deref(), status) {
            (_, Some("NoSuchBucket"), _) => S3Error::NoSuchBucket { bucket: self.name.clone() },
            (_, Some("AccessDenied" | "AllAccessDisabled"), _) | (_, None, Some(403)) => {
                S3Error::AccessDenied { bucket: self.name.clone(), op, key: key.to_string() }
            }
            (
                _,
                Some(
                    code @ ("InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken"
                    | "TokenRefreshRequired"),
                ),
                _,
            ) => S3Error::BadCredentials { code: code.to_string() },
            (_, Some("NotImplemented"), _) | (_, _, Some(501)) => S3Error::NotImplemented { op },
            (_, Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded"), _)
            | (_, _, Some(503)) => S3Error::Throttled,
            (SdkError::TimeoutError(_), _, _) => self.unreachable(no_answer()),
            (SdkError::DispatchFailure(failure), _, _) => {
                let detail = DisplayErrorContext(&err).to_string();
                if detail.contains("credentials") || detail.contains("identity") {
                    S3Error::NoCredentials
                } else if failure.is_timeout() {
                    self.unreachable(no_answer())
                } else {
                    self.unreachable(innermost_cause(&err))
                }
            }
            _ => {
                let detail = DisplayErrorContext(&err).to_string();
                if detail.contains("no credentials")
                    || detail.contains("failed to load credentials")
                    || detail.contains("identity")
                {
                    return S3Error::NoCredentials;
                }
                let detail = match (code, status) {
                    (Some(code), _) => format!("{code}: {}", err.message().unwrap_or("")),
                    (None, Some(status)) => format!("HTTP {status}"),
                    (None, None) => innermost_cause(&err),
                };
                S3Error::Other { op, key: key.to_string(), detail }
            }
        }
    }
}

/// The IAM action S3 checks for an operation, as a policy names it.
fn iam_action(op: &str) -> &'static str {
    match op {
        "ListObjectsV2" => "s3:ListBucket",
        "HeadObject" | "GetObject" => "s3:GetObject",
        "DeleteObject" => "s3:DeleteObject",
        // A copy reads its source (in the same bucket and prefix) and writes its target.
        "CopyObject" | "UploadPartCopy" => "s3:PutObject (and s3:GetObject on its source)",
        "AbortMultipartUpload" => "s3:AbortMultipartUpload",
        "ListMultipartUploads" => "s3:ListBucketMultipartUploads",
        "ListParts" => "s3:ListMultipartUploadParts",
        _ => "s3:PutObject",
    }
}

/// The region S3 names when a request went to the wrong one: `x-amz-bucket-region` on a
/// redirect (301, 307) or an `AuthorizationHeaderMalformed` (400, signed for another region),
/// whose error body also names it as `<Region>`.
fn redirected_region<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<String>
where
    E: ProvideErrorMetadata,
{
    let response = err.raw_response()?;
    let wrong_signature = response.status().as_u16() == 400 && err.code() == Some("AuthorizationHeaderMalformed");
    if !matches!(response.status().as_u16(), 301 | 307) && !wrong_signature {
        return None;
    }
    let in_body = || {
        let body = std::str::from_utf8(response.body().bytes()?).ok()?;
        let start = body.find("<Region>")? + "<Region>".len();
        let end = start + body[start..].find("</Region>")?;
        Some(body[start..end].to_string())
    };
    let header = response.headers().get("x-amz-bucket-region").map(str::to_string);
    let named = header.or_else(|| if wrong_signature { in_body() } else { None })?;
    let valid = !named.is_empty() && named.len() <= 32 && named.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then_some(named)
}

/// Server-side encryption with a KMS key (and an S3 Bucket Key, which spares most KMS calls)
/// for every request that writes an object.
pub trait EncryptedWith: Sized {
    fn encrypted_with(self, kms_key_id: Option<&str>) -> Self;
}

macro_rules! encrypted_with {
    ($($builder:ty),*) => {$(
        impl EncryptedWith for $builder {
            fn encrypted_with(self, kms_key_id: Option<&str>) -> Self {
                match kms_key_id {
                    Some(key) => self
                        .server_side_encryption(ServerSideEncryption::AwsKms)
                        .ssekms_key_id(key)
                        .bucket_key_enabled(true),
                    None => self,
                }
            }
        }
    )*};
}

encrypted_with!(PutObjectFluentBuilder, CopyObjectFluentBuilder, CreateMultipartUploadFluentBuilder);

/// Characters `x-amz-copy-source` carries as they are: RFC 3986's unreserved ones and `/`.
const COPY_SOURCE_ESCAPED: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// `x-amz-copy-source` is URL-encoded; keys here may hold `#` and other reserved characters.
fn percent_encode_key(key: &str) -> String {
    utf8_percent_encode(key, COPY_SOURCE_ESCAPED).to_string()
}

/// Where the next page of a listing of uploads starts.
#[derive(Debug, PartialEq, Eq)]
struct UploadMarkers {
    key: String,
    upload_id: Option<String>,
}

/// The uploads of one page of `ListMultipartUploads`, and where the next page starts (`None`:
/// this was the last). Keys and the key marker of a URL-encoded page are decoded: the marker
/// goes back to S3 as the key it names.
fn read_upload_page(page: &ListMultipartUploadsOutput) -> (Vec<OpenUpload>, Option<UploadMarkers>) {
    let decode = |text: &str| {
        if page.encoding_type() == Some(&EncodingType::Url) { url_decode_key(text) } else { text.to_string() }
    };
    let uploads = page
        .uploads()
        .iter()
        .filter_map(|upload| {
            Some(OpenUpload {
                key: decode(upload.key()?),
                upload_id: upload.upload_id()?.to_string(),
                initiated: upload.initiated().and_then(|t| SystemTime::try_from(*t).ok()),
            })
        })
        .collect();
    let next = match (page.is_truncated(), page.next_key_marker()) {
        (Some(true), Some(key)) => {
            Some(UploadMarkers { key: decode(key), upload_id: page.next_upload_id_marker().map(str::to_string) })
        }
        _ => None,
    };
    (uploads, next)
}

/// A key of a listing asked for with `encoding-type=url`.
fn url_decode_key(key: &str) -> String {
    percent_decode_str(&key.replace('+', " ")).decode_utf8_lossy().into_owned()
}

fn status_of<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn server_time<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<SystemTime> {
    let date = err.raw_response()?.headers().get("date")?;
    let parsed = aws_smithy_types::DateTime::from_str(date, Format::HttpDate).ok()?;
    SystemTime::try_from(parsed).ok()
}

/// A listing's pages (`pages(url_encoded)`); when S3's answer cannot be read (a key XML cannot
/// carry), the same listing asked for again URL-encoded.
async fn read_listing<T, Fut>(prefix: &str, what: &str, pages: impl Fn(bool) -> Fut) -> Result<T, S3Error>
where
    Fut: Future<Output = Result<T, ListFailure>>,
{
    match pages(false).await {
        Err(ListFailure::Unreadable { detail, .. }) => {
            tracing::warn!(%prefix, %detail, "{what} cannot be read; asking for it URL-encoded");
            pages(true).await.map_err(|failure| match failure {
                ListFailure::Unreadable { last_readable, detail } => {
                    S3Error::UnreadableListing { prefix: prefix.to_string(), last_readable, detail }
                }
                ListFailure::S3(e) => e,
            })
        }
        Err(ListFailure::S3(e)) => Err(e),
        Ok(found) => Ok(found),
    }
}

/// At most `limit` bytes of an object's body; past that, reading stops with an error.
async fn read_bounded(key: &str, mut object: Body, limit: usize) -> Result<Vec<u8>, S3Error> {
    let too_large = || S3Error::TooLarge { key: key.to_string(), limit };
    if object.len > limit as u64 {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(object.len as usize);
    while let Some(chunk) = object.next_chunk().await? {
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Bodies up to this size are sent within the short timeout of small requests.
const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Why an endpoint that accepts no request or sends no answer was given up on.
fn no_answer() -> String {
    format!("no answer within {}s, {} attempts", READ_TIMEOUT.as_secs(), MAX_ATTEMPTS)
}

/// The innermost cause of an error chain: "Connection refused (os error 111)" rather than four
/// nested wrappers.
fn innermost_cause(err: &dyn std::error::Error) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::types::MultipartUpload;

    fn upload(key: &str, id: &str) -> MultipartUpload {
        MultipartUpload::builder().key(key).upload_id(id).build()
    }

    #[test]
    fn a_url_encoded_page_of_uploads_is_decoded_and_its_marker_goes_back_decoded() {
        let page = ListMultipartUploadsOutput::builder()
            .encoding_type(EncodingType::Url)
            .uploads(upload("p/refs/heads/a%01b/x.bundle", "1"))
            .uploads(upload("p/lfs/with+space%23", "2"))
            .is_truncated(true)
            .next_key_marker("p/lfs/with+space%23")
            .next_upload_id_marker("2")
            .build();
        let (uploads, next) = read_upload_page(&page);
        let keys: Vec<&str> = uploads.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(keys, ["p/refs/heads/a\u{1}b/x.bundle", "p/lfs/with space#"]);
        assert_eq!(next, Some(UploadMarkers { key: "p/lfs/with space#".into(), upload_id: Some("2".into()) }));
    }

    #[test]
    fn a_plain_page_is_read_as_it_is_and_the_last_page_has_no_next() {
        let page = ListMultipartUploadsOutput::builder()
            .uploads(upload("p/lfs/a+b%41", "1"))
            .is_truncated(false)
            .next_key_marker("p/lfs/a+b%41")
            .build();
        let (uploads, next) = read_upload_page(&page);
        assert_eq!(uploads[0].key, "p/lfs/a+b%41");
        assert_eq!(next, None);
    }
}
