//! What fetches of every format share: bodies that survive broken connections, and
//! `git index-pack` fed from them.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};

use crate::bucket::{Body, Bucket};
use crate::git::{Git, GitError};
use crate::progress::Meter;

/// Pipe buffer towards `git index-pack` (Linux allows up to 1 MiB for unprivileged users).
const INDEX_PACK_PIPE_BYTES: usize = 1024 * 1024;
/// What `feed_rest` collects before it writes to index-pack.
const FEED_BATCH_BYTES: usize = 256 * 1024;

/// The `--keep` option of `git index-pack` for what a fetch of `what` brings.
pub(crate) fn keep_option(what: &str) -> String {
    format!("--keep=git-remote-s3 fetch {what}")
}

/// `git index-pack --stdin --keep` into `git`'s repository (`fix_thin`: deltas may refer to
/// objects it already has), and its stdin with the pipe enlarged.
pub(crate) fn index_pack(git: &Git, what: &str, fix_thin: bool) -> Result<(Child, ChildStdin), GitError> {
    let keep = keep_option(what);
    let mut args = vec!["index-pack", "--stdin", keep.as_str()];
    if fix_thin {
        args.push("--fix-thin");
    }
    let mut child = git
        .command(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GitError::Spawn)?;
    let stdin =
        child.stdin.take().ok_or_else(|| GitError::Spawn(std::io::Error::other("git index-pack has no stdin")))?;
    // index-pack reads in small pieces; a larger pipe means far fewer wake-ups of both sides.
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(&stdin, INDEX_PACK_PIPE_BYTES) {
        tracing::debug!(error = %e, "could not enlarge the pipe to index-pack");
    }
    Ok((child, stdin))
}

/// Writes the rest of `body` into `stdin` (index-pack's), counting it on `meter`, and closes it.
/// Chunks are written in batches of at least `FEED_BATCH_BYTES`: index-pack reads 4 KiB at a
/// time and sleeps whenever the pipe is empty, so a write per network chunk (often 16 KiB) cost
/// a wake-up of each side per chunk.
pub(crate) async fn feed_rest(
    body: &mut ResumingBody<'_>,
    mut stdin: ChildStdin,
    meter: &Meter,
) -> std::io::Result<()> {
    let mut batch = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await.map_err(std::io::Error::other)? {
        meter.add(chunk.len() as u64);
        if batch.is_empty() && chunk.len() >= FEED_BATCH_BYTES {
            stdin.write_all(&chunk).await?;
            continue;
        }
        batch.extend_from_slice(&chunk);
        if batch.len() >= FEED_BATCH_BYTES {
            stdin.write_all(&batch).await?;
            batch.clear();
        }
    }
    stdin.write_all(&batch).await?;
    stdin.shutdown().await
}

/// The `.keep` file `git index-pack --keep` left (it prints `keep\t<hash>`), and the pack's hash.
pub(crate) fn keep_file(stdout: &[u8], pack_dir: &Path) -> (Option<PathBuf>, Option<String>) {
    let stdout = String::from_utf8_lossy(stdout);
    let hash = stdout.lines().find_map(|line| line.strip_prefix("keep\t")).map(|h| h.trim().to_string());
    (hash.as_ref().map(|h| pack_dir.join(format!("pack-{h}.keep"))), hash)
}

/// Runs `work` on every item, at most `limit` at once, each in a task of its own: a body
/// streamed into `git index-pack` from a future polled among others (a `FuturesUnordered`) cost
/// the daemon twice the CPU (0.65 s against 0.35 s for 200 MB). Dropping this future aborts them
/// all, which kills their children, as cancellation needs. Once one fails nothing new starts,
/// and its failure stands when the running ones have ended. Results come in the order they end.
pub(crate) async fn in_tasks<I, T, E, F, Fut>(items: I, limit: usize, mut work: F) -> Result<Vec<T>, E>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let mut waiting = items.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let (mut done, mut failure) = (Vec::new(), None);
    loop {
        while running.len() < limit && failure.is_none() {
            let Some(item) = waiting.next() else { break };
            running.spawn(work(item));
        }
        let Some(ended) = running.join_next().await else { break };
        match ended {
            Ok(Ok(result)) => done.push(result),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            // Tasks are aborted only when this future is dropped; a panic is this code's own.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    failure.map_or(Ok(done), Err)
}

/// Times one download picks up where a broken connection left it.
const DOWNLOAD_RESUMES: u32 = 3;

/// An object's body that survives broken connections and stalls: it asks again for the rest (of
/// the same version, by ETag) and goes on from there.
pub(crate) struct ResumingBody<'a> {
    bucket: &'a Bucket,
    key: &'a str,
    etag: Option<String>,
    body: Option<Body>,
    size: u64,
    received: u64,
    resumes: u32,
}

impl<'a> ResumingBody<'a> {
    pub(crate) fn new(bucket: &'a Bucket, key: &'a str, body: Body) -> Self {
        let (etag, size) = (body.etag.clone(), body.len);
        Self { bucket, key, etag, body: Some(body), size, received: 0, resumes: 0 }
    }
}

impl ResumingBody<'_> {
    pub(crate) async fn next(&mut self) -> Result<Option<bytes::Bytes>, String> {
        loop {
            let Some(body) = self.body.as_mut() else { return Err("the download was given up".into()) };
            match body.next_chunk().await {
                Ok(Some(chunk)) => {
                    self.received += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                Ok(None) => return Ok(None),
                // Past the last byte there is nothing to resume (a checksum that did not match).
                Err(e) if self.resumes < DOWNLOAD_RESUMES && self.etag.is_some() && self.received < self.size => {
                    self.resumes += 1;
                    tracing::info!(key = %self.key, at = self.received, error = %e, "download broke off; resuming");
                    // The broken body's admission goes back before the rest is asked for.
                    self.body = None;
                    let rest = self
                        .bucket
                        .get_from(self.key, self.received, self.etag.as_deref())
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("the object disappeared during the download")?;
                    if rest.len != self.size - self.received.min(self.size) {
                        return Err(format!("{e} (and the server did not resume at byte {})", self.received));
                    }
                    self.body = Some(rest);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
