//! What a remote's refs look like from the outside, whatever the storage format: what `list`
//! advertises to git, and what `git s3 ls` shows of each ref.

use crate::object_format::ObjectFormat;

use super::Format;

/// What `list` tells git.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteRefs {
    /// `(refname, oid)` of every ref that has a value in the remote's object format (git reads
    /// every id of a listing in one format), by name.
    pub refs: Vec<(String, String)>,
    /// The ref HEAD names, when that ref has a value.
    pub head: Option<String>,
    /// The object format of the remote's refs; `None` when it has none.
    pub object_format: Option<ObjectFormat>,
    /// One line for each thing in the bucket the listing had to leave out.
    pub warnings: Vec<String>,
}

/// What `git s3 ls` shows.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub format: Format,
    pub refs: Vec<RefSummary>,
    /// The ref HEAD names, as stored (it may name a ref that has no value).
    pub head: Option<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RefSummary {
    pub name: String,
    /// What the remote holds as the ref's value, newest first; more than one means a push was
    /// cut short or tools disagreed.
    pub values: Vec<StoredValue>,
    pub protected: bool,
    /// Age of a push lock on the ref; `None` when unlocked.
    pub lock_age_s: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct StoredValue {
    pub oid: String,
    /// Bytes stored for this value.
    pub size: u64,
    pub age_s: u64,
}

/// The branch a remote's HEAD should name, among `branches`: `preferred` if it is one of them,
/// else `main`, else `master`, else the first.
pub fn choose_head<'a>(branches: &[&'a str], preferred: Option<&str>) -> Option<&'a str> {
    let find = |wanted: &str| branches.iter().copied().find(|b| *b == wanted);
    preferred
        .and_then(find)
        .or_else(|| find("refs/heads/main"))
        .or_else(|| find("refs/heads/master"))
        .or_else(|| branches.first().copied())
}
