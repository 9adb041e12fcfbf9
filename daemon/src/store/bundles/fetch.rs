//! Fetch: streams a ref's bundle from S3 straight into `git index-pack`, never holding it whole.

use std::path::PathBuf;
use std::process::Stdio;

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::header::{self, BundleHeader};
use super::{BundleRepo, StoreError};
use crate::bucket::{Body, Bucket};
use crate::git::{GitError, last_line};
use crate::progress::Events;

/// Pipe buffer towards `git index-pack` (Linux allows up to 1 MiB for unprivileged users).
const INDEX_PACK_PIPE_BYTES: usize = 1024 * 1024;
/// Bundles downloaded at once by one fetch.
const BUNDLES_IN_FLIGHT: usize = 4;

impl BundleRepo {
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
            match header::parse_header(&buf) {
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
