//! The S3 key layout shared with awslabs/git-remote-s3 (see shared/s3-layout.md). This is the
//! only place that spells key names.

use std::fmt;

use crate::object_format::ObjectFormat;

pub const HEAD_FILE: &str = "HEAD";
pub const LOCK_FILE: &str = "LOCK#.lock";
pub const PROTECTED_FILE: &str = "PROTECTED#";
pub const ZIP_FILE: &str = "repo.zip";
const BUNDLE_SUFFIX: &str = ".bundle";

/// The repository's prefix `P`; every key is `P/…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    prefix: String,
}

/// What a key under `P/refs/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefKey {
    Bundle {
        refname: String,
        oid: String,
    },
    Lock {
        refname: String,
    },
    Protected {
        refname: String,
    },
    Zip {
        refname: String,
    },
    /// Not ours to interpret (another tool's key, or a future format's).
    Other,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.trim_matches('/').to_string() }
    }

    pub fn head(&self) -> String {
        format!("{}/{HEAD_FILE}", self.prefix)
    }

    /// Everything the remote stores is under this.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Lists every ref folder (and nothing of LFS).
    pub fn refs_prefix(&self) -> String {
        format!("{}/refs/", self.prefix)
    }

    pub fn ref_dir(&self, refname: &str) -> String {
        format!("{}/{refname}/", self.prefix)
    }

    pub fn bundle(&self, refname: &str, oid: &str) -> String {
        format!("{}/{refname}/{oid}{BUNDLE_SUFFIX}", self.prefix)
    }

    pub fn lock(&self, refname: &str) -> String {
        format!("{}/{refname}/{LOCK_FILE}", self.prefix)
    }

    pub fn protected(&self, refname: &str) -> String {
        format!("{}/{refname}/{PROTECTED_FILE}", self.prefix)
    }

    pub fn lfs_object(&self, oid: &str) -> String {
        format!("{}/lfs/{oid}", self.prefix)
    }

    pub fn lfs_prefix(&self) -> String {
        format!("{}/lfs/", self.prefix)
    }

    pub fn zip(&self, refname: &str) -> String {
        format!("{}/{refname}/{ZIP_FILE}", self.prefix)
    }

    /// Classifies a key listed under `refs_prefix()`. Bundles follow the Python tool's rule:
    /// the ref has at least three path segments and the file is `<40 hex>.bundle` (or
    /// `<64 hex>.bundle` in a SHA-256 repository, which the Python tool does not read).
    pub fn classify(&self, key: &str) -> RefKey {
        let Some(rest) = key.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix('/')) else {
            return RefKey::Other;
        };
        let Some((refname, file)) = rest.rsplit_once('/') else {
            return RefKey::Other;
        };
        if !refname.starts_with("refs/") || refname.len() <= "refs/".len() {
            return RefKey::Other;
        }
        let refname = refname.to_string();
        match file {
            LOCK_FILE => RefKey::Lock { refname },
            PROTECTED_FILE => RefKey::Protected { refname },
            ZIP_FILE => RefKey::Zip { refname },
            _ => match file.strip_suffix(BUNDLE_SUFFIX) {
                Some(oid) if ObjectFormat::of_hex(oid).is_some() && refname.matches('/').count() >= 2 => {
                    RefKey::Bundle { refname, oid: oid.to_string() }
                }
                _ => RefKey::Other,
            },
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}

/// A git-lfs object id: SHA-256, 64 lowercase hex digits.
pub fn is_lfs_oid(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A ref name this layout can hold: one `git check-ref-format` accepts, under `refs/` with at
/// least three components (the Python tool lists only those). Names with `#` or a component
/// ending in `.bundle` are fine: a key is read from its end, so no ref folder can be mistaken for
/// one of the layout's own files.
pub fn check_refname(name: &str) -> Result<(), &'static str> {
    if !name.starts_with("refs/") || name.split('/').count() < 3 {
        return Err("ref names must have at least three components, like refs/heads/<name>");
    }
    if name.ends_with('/') || name.ends_with('.') || name.contains("//") {
        return Err("ref names must not end with '/' or '.', nor contain '//'");
    }
    if name.contains("..") || name.contains("@{") {
        return Err("ref names must not contain '..' or '@{'");
    }
    // git refuses ASCII controls; C1 controls (U+0080..U+009F) are refused too, as a terminal
    // obeys them.
    if name.bytes().any(|b| b" ~^:?*[\\".contains(&b)) || name.chars().any(char::is_control) {
        return Err("ref names must not contain spaces, control characters or any of ~^:?*[\\");
    }
    if name.split('/').any(|component| component.starts_with('.') || component.ends_with(".lock")) {
        return Err("ref name components must not start with '.' or end with '.lock'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn keys_match_the_python_layout() {
        let layout = Layout::new("/team/repo/");
        assert_eq!(layout.head(), "team/repo/HEAD");
        assert_eq!(layout.bundle("refs/heads/main", OID), format!("team/repo/refs/heads/main/{OID}.bundle"));
        assert_eq!(layout.lock("refs/heads/main"), "team/repo/refs/heads/main/LOCK#.lock");
        assert_eq!(layout.protected("refs/heads/main"), "team/repo/refs/heads/main/PROTECTED#");
        assert_eq!(layout.zip("refs/tags/v1"), "team/repo/refs/tags/v1/repo.zip");
        assert_eq!(layout.refs_prefix(), "team/repo/refs/");
        assert_eq!(layout.lfs_object("ab"), "team/repo/lfs/ab");
    }

    #[test]
    fn classifies_listed_keys() {
        let layout = Layout::new("p");
        assert_eq!(
            layout.classify(&format!("p/refs/heads/feature/x/{OID}.bundle")),
            RefKey::Bundle { refname: "refs/heads/feature/x".into(), oid: OID.into() }
        );
        assert_eq!(layout.classify("p/refs/heads/main/LOCK#.lock"), RefKey::Lock { refname: "refs/heads/main".into() });
        assert_eq!(
            layout.classify("p/refs/heads/main/PROTECTED#"),
            RefKey::Protected { refname: "refs/heads/main".into() }
        );
        assert_eq!(layout.classify("p/refs/heads/main/notes.txt"), RefKey::Other);
        assert_eq!(layout.classify("p/refs/heads/main/ABC.bundle"), RefKey::Other);
        let sha256 = OID.to_string() + "0123456789abcdef01234567";
        assert_eq!(
            layout.classify(&format!("p/refs/heads/main/{sha256}.bundle")),
            RefKey::Bundle { refname: "refs/heads/main".into(), oid: sha256.clone() }
        );
        assert_eq!(layout.classify(&format!("p/refs/heads/main/{}.bundle", &sha256[..50])), RefKey::Other);
        assert_eq!(layout.classify("other/refs/heads/main/LOCK#.lock"), RefKey::Other);
        assert_eq!(layout.classify("p/lfs/abc"), RefKey::Other);
    }

    #[test]
    fn refname_rules() {
        assert!(check_refname("refs/heads/main").is_ok());
        assert!(check_refname("refs/tags/v1.0").is_ok());
        assert!(check_refname("main").is_err());
        assert!(check_refname("refs/heads/a..b").is_err());
        assert!(check_refname("refs/heads/x.lock").is_err());
        assert!(check_refname("refs/heads/a b").is_err());
        assert!(check_refname("refs/heads/tab\there").is_err());
        assert!(check_refname("refs/heads/esc\u{1b}]0;x").is_err());
        assert!(check_refname("refs/heads/csi\u{9b}2J").is_err());
        assert!(check_refname("refs/stash").is_err());
        assert!(check_refname("refs/heads/.hidden").is_err());
        assert!(check_refname("refs/heads/a/").is_err());
        // What the Python tool pushes, and git accepts.
        assert!(check_refname("refs/heads/fix#123").is_ok());
        assert!(check_refname("refs/heads/v1.bundle").is_ok());
        assert!(check_refname("refs/heads/PROTECTED#").is_ok());
        assert!(check_refname("refs/heads/caf\u{e9}").is_ok());
    }
}
