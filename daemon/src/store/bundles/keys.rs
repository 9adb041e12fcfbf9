//! The keys of the layout shared with awslabs/git-remote-s3 (see shared/s3-layout.md): a folder
//! per ref, `P/<ref>/`, holding its bundle, lock, protection mark and zip. The only place that
//! spells them; `P/HEAD` and `P/lfs/` are every format's (`crate::layout`).

use crate::layout::{Layout, ZIP_FILE};
use crate::object_format::ObjectFormat;

pub const LOCK_FILE: &str = "LOCK#.lock";
pub const PROTECTED_FILE: &str = "PROTECTED#";
const BUNDLE_SUFFIX: &str = ".bundle";

/// What a key under `refs_prefix()` is.
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

/// The ref folders' keys under a repository's prefix.
pub trait BundleKeys {
    /// Lists every ref folder (and nothing of LFS).
    fn refs_prefix(&self) -> String;
    fn ref_dir(&self, refname: &str) -> String;
    fn bundle(&self, refname: &str, oid: &str) -> String;
    fn lock(&self, refname: &str) -> String;
    fn protected(&self, refname: &str) -> String;
    /// Classifies a key listed under `refs_prefix()`. Bundles follow the Python tool's rule:
    /// the ref has at least three path segments and the file is `<40 hex>.bundle` (or
    /// `<64 hex>.bundle` in a SHA-256 repository, which the Python tool does not read).
    fn classify(&self, key: &str) -> RefKey;
}

impl BundleKeys for Layout {
    fn refs_prefix(&self) -> String {
        self.key("refs/")
    }

    fn ref_dir(&self, refname: &str) -> String {
        self.key(&format!("{refname}/"))
    }

    fn bundle(&self, refname: &str, oid: &str) -> String {
        self.key(&format!("{refname}/{oid}{BUNDLE_SUFFIX}"))
    }

    fn lock(&self, refname: &str) -> String {
        self.key(&format!("{refname}/{LOCK_FILE}"))
    }

    fn protected(&self, refname: &str) -> String {
        self.key(&format!("{refname}/{PROTECTED_FILE}"))
    }

    fn classify(&self, key: &str) -> RefKey {
        let Some(rest) = key.strip_prefix(&self.root()) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn keys_match_the_python_layout() {
        let layout = Layout::new("/team/repo/");
        assert_eq!(layout.bundle("refs/heads/main", OID), format!("team/repo/refs/heads/main/{OID}.bundle"));
        assert_eq!(layout.lock("refs/heads/main"), "team/repo/refs/heads/main/LOCK#.lock");
        assert_eq!(layout.protected("refs/heads/main"), "team/repo/refs/heads/main/PROTECTED#");
        assert_eq!(layout.zip("refs/tags/v1"), "team/repo/refs/tags/v1/repo.zip");
        assert_eq!(layout.refs_prefix(), "team/repo/refs/");
        assert_eq!(layout.ref_dir("refs/heads/main"), "team/repo/refs/heads/main/");
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
        assert_eq!(layout.classify("pp/refs/heads/main/LOCK#.lock"), RefKey::Other);
        assert_eq!(layout.classify("p/lfs/abc"), RefKey::Other);
    }
}
