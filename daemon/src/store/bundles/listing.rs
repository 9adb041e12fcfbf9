//! What a listing of the bucket says about each ref: its bundles (its value), protection and lock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::keys::{BundleKeys, RefKey};
use crate::bucket::ObjectInfo;
use crate::layout::{Layout, check_refname};
use crate::object_format::ObjectFormat;
use crate::store::{Format, Inventory, RefSummary, RemoteRefs, StoredValue, age_s, choose_head};

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
    /// The ref `HEAD` names, as stored (it may name a ref that has no bundle).
    pub head: Option<String>,
    /// Why `HEAD` is there but names nothing git could use (too large, not text, not a ref name).
    pub bad_head: Option<String>,
    /// Ref folders whose names git cannot use (spaces, control characters, `..`): never advertised.
    pub unusable: BTreeSet<String>,
    /// The prefix holds a native-format manifest too (`store::native`).
    pub native_beside: bool,
}

/// Ref names a warning names before it says "and N more".
const NAMED_IN_A_WARNING: usize = 5;

impl Listing {
    /// `(refname, oid)` of every ref that has a value.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.refs.iter().filter_map(|(name, state)| state.current().map(|b| (name.as_str(), b.oid.as_str())))
    }

    /// The object format of the remote's refs (`None` when it has none): that of HEAD's ref, or
    /// of the first ref when HEAD names none. Pushes refuse to mix formats, so all agree.
    pub fn object_format(&self) -> Option<ObjectFormat> {
        let head_value = self.head.as_ref().and_then(|head| self.refs.get(head)?.current());
        let value = head_value.or_else(|| self.refs.values().find_map(RefState::current))?;
        ObjectFormat::of_hex(&value.oid)
    }

    /// `(refname, oid)` of every ref that has a value in the remote's object format: git reads
    /// every id of a listing in one format.
    pub fn advertised(&self) -> impl Iterator<Item = (&str, &str)> {
        let format = self.object_format();
        self.values().filter(move |(_, oid)| ObjectFormat::of_hex(oid) == format)
    }

    /// What `list` tells git: HEAD only when it names a ref with a value.
    pub fn remote_refs(&self) -> RemoteRefs {
        let head = self.head.as_ref().filter(|head| self.values().any(|(name, _)| name == *head));
        RemoteRefs {
            refs: self.advertised().map(|(name, oid)| (name.to_string(), oid.to_string())).collect(),
            head: head.cloned(),
            object_format: self.object_format(),
            warnings: self.warnings(),
        }
    }

    /// What `git s3 ls` shows: each ref's bundles newest first.
    pub fn inventory(&self) -> Inventory {
        let refs = self
            .refs
            .iter()
            .map(|(name, state)| {
                let mut bundles: Vec<&BundleObject> = state.bundles.iter().collect();
                bundles.sort_by_key(|b| std::cmp::Reverse(b.last_modified));
                RefSummary {
                    name: name.clone(),
                    values: bundles
                        .into_iter()
                        .map(|b| StoredValue { oid: b.oid.clone(), size: b.size, age_s: age_s(b.last_modified) })
                        .collect(),
                    protected: state.protected,
                    lock_age_s: state.lock.as_ref().map(|l| age_s(l.last_modified)),
                }
            })
            .collect();
        Inventory { format: Format::Bundles, refs, head: self.head.clone(), warnings: self.warnings() }
    }

    /// One line for each thing in the bucket this listing had to leave out.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let other_format = self.values().count() - self.advertised().count();
        if let Some(format) = self.object_format().filter(|_| other_format > 0) {
            warnings.push(format!(
                "left out {other_format} ref(s) whose objects are not {format} like the rest; 'git s3 ls' lists them"
            ));
        }
        if self.native_beside {
            warnings.push(
                "this remote's prefix holds a native-format manifest beside its bundles; the next command reads the native one ('git s3 doctor' shows both)".into(),
            );
        }
        if let Some(why) = &self.bad_head {
            warnings.push(format!("the remote's HEAD {why}; ignoring it ('git s3 doctor' repairs it)"));
        }
        if !self.unusable.is_empty() {
            let mut names: Vec<String> =
                self.unusable.iter().take(NAMED_IN_A_WARNING).map(|name| format!("'{name}'")).collect();
            if self.unusable.len() > NAMED_IN_A_WARNING {
                names.push(format!("and {} more", self.unusable.len() - NAMED_IN_A_WARNING));
            }
            warnings.push(format!(
                "left out {} ref folder(s) whose names git cannot use: {}; 'git s3 doctor' lists them",
                self.unusable.len(),
                names.join(", ")
            ));
        }
        warnings
    }
}

/// The branch HEAD should name among the listed branches other than `excluding`.
pub fn default_branch<'a>(listing: &'a Listing, excluding: &str) -> Option<&'a str> {
    let branches: Vec<&str> =
        listing.values().map(|(name, _)| name).filter(|n| n.starts_with("refs/heads/") && *n != excluding).collect();
    choose_head(&branches, None)
}

/// Sorts listed keys into ref folders. Folders whose names git cannot use are left out (and
/// named in `unusable`): git would cut such a name short and then miss the ref it asked for.
pub fn parse_listing(layout: &Layout, objects: Vec<ObjectInfo>) -> Listing {
    let mut listing = Listing::default();
    let native_root = crate::store::native::root_key(layout);
    for object in objects {
        if object.key == native_root {
            listing.native_beside = true;
            continue;
        }
        let key = layout.classify(&object.key);
        let refname = match &key {
            RefKey::Bundle { refname, .. }
            | RefKey::Protected { refname }
            | RefKey::Lock { refname }
            | RefKey::Zip { refname } => refname,
            RefKey::Other => continue,
        };
        if check_refname(refname).is_err() {
            listing.unusable.insert(refname.clone());
            continue;
        }
        match key {
            RefKey::Bundle { refname, oid } => listing.refs.entry(refname).or_default().bundles.push(BundleObject {
                oid,
                key: object.key,
                size: object.size,
                last_modified: object.last_modified,
            }),
            RefKey::Protected { refname } => listing.refs.entry(refname).or_default().protected = true,
            RefKey::Lock { refname } => listing.refs.entry(refname).or_default().lock = Some(object),
            RefKey::Zip { .. } | RefKey::Other => {}
        }
    }
    listing
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
        )
        .refs;
        let main = &refs["refs/heads/main"];
        assert_eq!(main.bundles.len(), 2);
        assert_eq!(main.current().map(|b| b.oid.as_str()), Some(B));
        assert!(main.protected);
        assert!(main.lock.is_some());
    }

    #[test]
    fn the_object_format_is_heads_and_refs_of_another_are_left_out() {
        let layout = Layout::new("p");
        let c = "c".repeat(64);
        let mut listing = parse_listing(
            &layout,
            vec![
                object(&format!("p/refs/heads/main/{c}.bundle"), 1),
                object(&format!("p/refs/heads/old/{A}.bundle"), 1),
            ],
        );
        assert_eq!(listing.object_format(), Some(ObjectFormat::Sha256), "no HEAD: the first ref's");
        listing.head = Some("refs/heads/old".into());
        assert_eq!(listing.object_format(), Some(ObjectFormat::Sha1));
        let advertised: Vec<&str> = listing.advertised().map(|(name, _)| name).collect();
        assert_eq!(advertised, ["refs/heads/old"]);
        assert!(listing.warnings().iter().any(|w| w.contains("not sha1")), "{:?}", listing.warnings());
        assert_eq!(Listing::default().object_format(), None);
    }

    #[test]
    fn git_hears_of_head_only_when_it_names_a_ref_with_a_value() {
        let layout = Layout::new("p");
        let mut listing = parse_listing(&layout, vec![object(&format!("p/refs/heads/main/{A}.bundle"), 1)]);
        listing.head = Some("refs/heads/main".into());
        let refs = listing.remote_refs();
        assert_eq!(refs.refs, [("refs/heads/main".to_string(), A.to_string())]);
        assert_eq!(refs.head.as_deref(), Some("refs/heads/main"));
        assert_eq!(refs.object_format, Some(ObjectFormat::Sha1));
        listing.head = Some("refs/heads/gone".into());
        assert_eq!(listing.remote_refs().head, None);
        assert_eq!(listing.inventory().head.as_deref(), Some("refs/heads/gone"), "ls shows HEAD as stored");
    }

    #[test]
    fn a_ref_with_only_a_lock_has_no_value() {
        let layout = Layout::new("p");
        let listing = parse_listing(&layout, vec![object("p/refs/heads/x/LOCK#.lock", 1)]);
        assert_eq!(listing.values().count(), 0);
    }

    #[test]
    fn names_git_cannot_use_are_left_out_and_named_once() {
        let layout = Layout::new("p");
        let listing = parse_listing(
            &layout,
            vec![
                object(&format!("p/refs/heads/fix#123/{A}.bundle"), 1),
                object(&format!("p/refs/heads/v1.bundle/{A}.bundle"), 1),
                object(&format!("p/refs/heads/a b/{A}.bundle"), 1),
                object(&format!("p/refs/heads/x..y/{A}.bundle"), 1),
                object("p/refs/heads/a b/LOCK#.lock", 1),
                object(&format!("p/refs/heads/\u{1b}]0;pwned\u{7}/{B}.bundle"), 1),
            ],
        );
        let names: Vec<&str> = listing.values().map(|(name, _)| name).collect();
        assert_eq!(names, ["refs/heads/fix#123", "refs/heads/v1.bundle"]);
        assert_eq!(listing.unusable.len(), 3);
        let warnings = listing.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("'refs/heads/a b'") && warnings[0].contains("pwned"), "{warnings:?}");
    }
}
