//! What a listing of the bucket says about each ref: its bundles (its value), protection and lock.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::bucket::ObjectInfo;
use crate::layout::{Layout, RefKey};

/// What one ref folder holds.
#[derive(Debug, Clone, Default)]
pub struct RefState {
    pub bundles: Vec<BundleObject>,
    pub protected: bool,
    pub lock: Option<ObjectInfo>,
}

#[derive(Debug, Clone)]
pub struct BundleObject {
    pub oid: String,
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

impl RefState {
    /// The ref's value. A push uploads the new bundle before deleting the old one, so when two
    /// are left (a push cut short), the newer one is what that push committed to.
    pub fn current(&self) -> Option<&BundleObject> {
        self.bundles.iter().max_by(|a, b| a.last_modified.cmp(&b.last_modified).then_with(|| a.key.cmp(&b.key)))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub refs: BTreeMap<String, RefState>,
    /// What `HEAD` names, as stored (it may name a ref that has no bundle).
    pub head: Option<String>,
}

impl Listing {
    /// `(refname, oid)` of every ref that has a value.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.refs.iter().filter_map(|(name, state)| state.current().map(|b| (name.as_str(), b.oid.as_str())))
    }
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

/// The branch HEAD should name among the listed branches other than `excluding`.
pub fn default_branch<'a>(listing: &'a Listing, excluding: &str) -> Option<&'a str> {
    let branches: Vec<&str> =
        listing.values().map(|(name, _)| name).filter(|n| n.starts_with("refs/heads/") && *n != excluding).collect();
    choose_head(&branches, None)
}

pub fn parse_listing(layout: &Layout, objects: Vec<ObjectInfo>) -> BTreeMap<String, RefState> {
    let mut refs: BTreeMap<String, RefState> = BTreeMap::new();
    for object in objects {
        match layout.classify(&object.key) {
            RefKey::Bundle { refname, oid } => refs.entry(refname).or_default().bundles.push(BundleObject {
                oid,
                key: object.key,
                size: object.size,
                last_modified: object.last_modified,
            }),
            RefKey::Protected { refname } => refs.entry(refname).or_default().protected = true,
            RefKey::Lock { refname } => refs.entry(refname).or_default().lock = Some(object),
            RefKey::Zip { .. } | RefKey::Other => {}
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn object(key: &str, secs: u64) -> ObjectInfo {
        ObjectInfo { key: key.into(), size: 1, last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)) }
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn head_prefers_the_named_branch_then_main_then_master() {
        let branches = ["refs/heads/a", "refs/heads/master", "refs/heads/main"];
        assert_eq!(choose_head(&branches, Some("refs/heads/a")), Some("refs/heads/a"));
        assert_eq!(choose_head(&branches, Some("refs/heads/gone")), Some("refs/heads/main"));
        assert_eq!(choose_head(&branches[..2], None), Some("refs/heads/master"));
        assert_eq!(choose_head(&branches[..1], None), Some("refs/heads/a"));
        assert_eq!(choose_head(&[], None), None);
    }

    #[test]
    fn newest_bundle_is_the_value() {
        let layout = Layout::new("p");
        let refs = parse_listing(
            &layout,
            vec![
                object(&format!("p/refs/heads/main/{A}.bundle"), 10),
                object(&format!("p/refs/heads/main/{B}.bundle"), 20),
                object("p/refs/heads/main/PROTECTED#", 5),
                object("p/refs/heads/main/LOCK#.lock", 5),
                object("p/refs/heads/main/repo.zip", 5),
            ],
        );
        let main = &refs["refs/heads/main"];
        assert_eq!(main.bundles.len(), 2);
        assert_eq!(main.current().map(|b| b.oid.as_str()), Some(B));
        assert!(main.protected);
        assert!(main.lock.is_some());
    }

    #[test]
    fn a_ref_with_only_a_lock_has_no_value() {
        let layout = Layout::new("p");
        let listing =
            Listing { refs: parse_listing(&layout, vec![object("p/refs/heads/x/LOCK#.lock", 1)]), head: None };
        assert_eq!(listing.values().count(), 0);
    }
}
