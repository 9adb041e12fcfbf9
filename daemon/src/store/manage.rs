//! What `git s3` asks of a remote whatever its format: protect or delete a branch, show it, and
//! find and repair what crashed pushes or other tools left behind (`doctor`).

use std::time::{Duration, SystemTime};

use super::StoreError;
use crate::bucket::S3Error;
use crate::layout::check_refname;

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("'{0}' is not a branch name git accepts here: {1}")]
    BadName(String, &'static str),
    #[error("{0} does not exist on the remote")]
    NoSuchRef(String),
    #[error("{0} is protected; unprotect it first ('git s3 unprotect') or use --force")]
    Protected(String),
    #[error(
        "{what} belongs to native remotes; this one is in the shared layout (move it with 'git s3 migrate <remote> --to native')"
    )]
    NativeOnly { what: &'static str },
    #[error("the remote is empty; its first push records the grace period of 'git config s3.gcGraceSeconds'")]
    EmptyRemote,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<S3Error> for ManageError {
    fn from(e: S3Error) -> Self {
        Self::Store(StoreError::S3(e))
    }
}

/// `main` → `refs/heads/main`; full ref names stay as they are.
pub fn branch_ref(branch: &str) -> Result<String, ManageError> {
    let refname = if branch.starts_with("refs/") { branch.to_string() } else { format!("refs/heads/{branch}") };
    check_refname(&refname).map_err(|why| ManageError::BadName(branch.to_string(), why))?;
    Ok(refname)
}

#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// Delete a ref's extra values instead of keeping each as a branch of its own.
    pub delete_bundles: bool,
    /// Where a ref has several values, keep this one (an object id or a prefix of one).
    pub keep: String,
    pub delete_stale_locks: bool,
    pub lock_ttl: Option<Duration>,
    /// An upload that is not a push's (LFS objects) counts as abandoned after this long without a new part.
    pub upload_idle: Duration,
    pub dry_run: bool,
    /// Download and index what the refs need instead of checking headers.
    pub thorough: bool,
}

/// S3 keeps the parts of an unfinished upload (and bills them) until someone aborts it.
pub const DEFAULT_UPLOAD_IDLE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub subject: String,
    pub problem: String,
    pub action: String,
    pub fixed: bool,
}

/// Seconds from `then` to now by this machine's clock (listings carry no server time).
pub fn age_s(then: Option<SystemTime>) -> u64 {
    then.and_then(|t| SystemTime::now().duration_since(t).ok()).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_become_refs() {
        assert_eq!(branch_ref("main").unwrap(), "refs/heads/main");
        assert_eq!(branch_ref("refs/tags/v1").unwrap(), "refs/tags/v1");
        assert!(branch_ref("a..b").is_err());
    }
}
