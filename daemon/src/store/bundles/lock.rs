//! Per-ref push locks, shared with the Python tool: `<ref>/LOCK#.lock`, created with
//! `If-None-Match: *`, stale once its LastModified is older than the TTL by the server's clock.
//!
//! Unlike the Python tool we keep the lease alive while a push runs (re-writing the lock every
//! quarter TTL, so nobody can take it over mid-upload), mark our lock with an owner token in user
//! metadata (invisible to the Python tool), and release only a lock that still carries our token.
//! A lease we failed to renew for half a TTL counts as lost, and the push stops before it commits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;

use crate::bucket::{Bucket, Conditional, PutOptions, S3Error};

const OWNER_METADATA: &str = "git-remote-s3-owner";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another push holds the lock on {refname} (taken {age_s}s ago; it becomes stale after {ttl_s}s); retry, or run 'git s3 doctor --delete-stale-locks' if no push is running"
    )]
    Busy { refname: String, age_s: u64, ttl_s: u64 },
    #[error("lost the lock on {refname} while pushing (it could not be renewed); nothing was changed, push again")]
    Lost { refname: String },
    #[error(transparent)]
    S3(#[from] S3Error),
}

/// A lock we hold. Renewed in the background until released or dropped.
pub struct RefLock {
    bucket: Bucket,
    key: String,
    refname: String,
    token: String,
    ttl: Duration,
    last_renewed: Arc<Mutex<Instant>>,
    renewer: JoinHandle<()>,
}

impl RefLock {
    pub async fn acquire(bucket: &Bucket, key: &str, refname: &str, ttl: Duration) -> Result<Self, LockError> {
        let token = new_token();
        // Two rounds: the second follows a takeover of a stale lock.
        for _ in 0..2 {
            match create(bucket, key, &token).await? {
                Conditional::Written => return Ok(Self::held(bucket, key, refname, token, ttl)),
                Conditional::Refused { server_time } => {
                    let Some(existing) = bucket.head(key).await? else {
                        continue; // released in between: try again
                    };
                    if existing.metadata.get(OWNER_METADATA) == Some(&token) {
                        // Our own write went through but its answer was lost, and the retry was
                        // refused (awslabs/git-remote-s3#66): the lock is ours.
                        return Ok(Self::held(bucket, key, refname, token, ttl));
                    }
                    let now = server_time.unwrap_or_else(SystemTime::now);
                    let age = existing.last_modified.and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
                    if age <= ttl {
                        return Err(LockError::Busy {
                            refname: refname.to_string(),
                            age_s: age.as_secs(),
                            ttl_s: ttl.as_secs(),
                        });
                    }
                    tracing::warn!(%refname, age_s = age.as_secs(), "taking over a stale lock");
                    bucket.delete(key).await?;
                }
            }
        }
        Err(LockError::Busy { refname: refname.to_string(), age_s: 0, ttl_s: ttl.as_secs() })
    }

    fn held(bucket: &Bucket, key: &str, refname: &str, token: String, ttl: Duration) -> Self {
        let last_renewed = Arc::new(Mutex::new(Instant::now()));
        let renewer =
            tokio::spawn(renew_forever(bucket.clone(), key.to_string(), token.clone(), ttl, last_renewed.clone()));
        Self {
            bucket: bucket.clone(),
            key: key.to_string(),
            refname: refname.to_string(),
            token,
            ttl,
            last_renewed,
            renewer,
        }
    }

    /// Fails once the lease may have lapsed: call right before anything that commits.
    pub fn ensure_held(&self) -> Result<(), LockError> {
        let since = self.last_renewed.lock().map(|t| t.elapsed()).unwrap_or(Duration::MAX);
        if self.renewer.is_finished() || since > self.ttl / 2 {
            return Err(LockError::Lost { refname: self.refname.clone() });
        }
        Ok(())
    }

    /// Checks, right before a write that commits, that the lock object still carries our token.
    /// Where conditional writes are not atomic (moto, some S3-compatible stores), two creators
    /// can both be told they won; only the last writer's token survives, and every other one
    /// stops here. The one that passes this check before the other's write landed has uploaded
    /// already, so the other sees the new value when it reads the ref, and refuses.
    pub async fn confirm(&self) -> Result<(), LockError> {
        self.ensure_held()?;
        if self.still_ours().await? { Ok(()) } else { Err(LockError::Lost { refname: self.refname.clone() }) }
    }

    /// Whether the lock object exists and carries our token.
    async fn still_ours(&self) -> Result<bool, S3Error> {
        let meta = self.bucket.head(&self.key).await?;
        Ok(meta.is_some_and(|meta| meta.metadata.get(OWNER_METADATA) == Some(&self.token)))
    }

    /// Deletes the lock if it is still ours.
    pub async fn release(self) -> Result<(), S3Error> {
        self.renewer.abort();
        if self.still_ours().await? {
            self.bucket.delete(&self.key).await?;
        } else {
            tracing::warn!(refname = %self.refname, "the lock was no longer ours at release; left it alone");
        }
        Ok(())
    }
}

impl Drop for RefLock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

async fn create(bucket: &Bucket, key: &str, token: &str) -> Result<Conditional, S3Error> {
    let options = PutOptions {
        if_none_match_any: true,
        metadata: vec![(OWNER_METADATA.into(), token.into())],
        ..Default::default()
    };
    bucket.put_bytes(key, Vec::new(), options).await
}

/// Re-writes the lock (same empty body, so the Python tool sees nothing but a fresh
/// LastModified) while it still carries our token. Stops at the first sign it is not ours.
async fn renew_forever(bucket: Bucket, key: String, token: String, ttl: Duration, last_renewed: Arc<Mutex<Instant>>) {
    let period = (ttl / 4).max(Duration::from_millis(250));
    loop {
        tokio::time::sleep(period).await;
        let meta = match bucket.head(&key).await {
            Ok(Some(meta)) => meta,
            Ok(None) => return tracing::warn!(%key, "our lock disappeared"),
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not check our lock; retrying");
                continue;
            }
        };
        if meta.metadata.get(OWNER_METADATA) != Some(&token) {
            return tracing::warn!(%key, "our lock was taken over");
        }
        let options = PutOptions {
            if_match: meta.etag,
            metadata: vec![(OWNER_METADATA.into(), token.clone())],
            ..Default::default()
        };
        match bucket.put_bytes(&key, Vec::new(), options).await {
            Ok(Conditional::Written) => {
                if let Ok(mut t) = last_renewed.lock() {
                    *t = Instant::now();
                }
            }
            Ok(Conditional::Refused { .. }) => {
                return tracing::warn!(%key, "our lock changed under us");
            }
            Err(e) => tracing::warn!(%key, error = %e, "could not renew our lock; retrying"),
        }
    }
}

fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{}-{nanos:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}
