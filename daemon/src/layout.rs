//! Key spelling every storage format shares: the repository's prefix `P`, `P/HEAD` (the default
//! branch, which the Python tool reads too), `P/<ref>/repo.zip` (what `s3+zip://` publishes) and
//! `P/lfs/<oid>` (git-lfs objects, whatever holds the refs). Each format spells its own keys in its folder under `store/`.

use std::fmt;

pub const HEAD_FILE: &str = "HEAD";
/// The archive an `s3+zip://` remote publishes beside each ref (for AWS CodePipeline).
pub const ZIP_FILE: &str = "repo.zip";

/// The repository's prefix `P`; every key is `P/…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.trim_matches('/').to_string() }
    }

    /// `P/<rest>`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    pub fn head(&self) -> String {
        self.key(HEAD_FILE)
    }

    /// Everything the remote stores is under this.
    pub fn root(&self) -> String {
        self.key("")
    }

    /// `P/<ref>/repo.zip`: the zip of a ref's tree that `s3+zip://` remotes publish.
    pub fn zip(&self, refname: &str) -> String {
        self.key(&format!("{refname}/{ZIP_FILE}"))
    }

    pub fn lfs_object(&self, oid: &str) -> String {
        self.key(&format!("lfs/{oid}"))
    }

    pub fn lfs_prefix(&self) -> String {
        self.key("lfs/")
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

    #[test]
    fn shared_keys_match_the_python_layout() {
        let layout = Layout::new("/team/repo/");
        assert_eq!(layout.head(), "team/repo/HEAD");
        assert_eq!(layout.root(), "team/repo/");
        assert_eq!(layout.lfs_object("ab"), "team/repo/lfs/ab");
        assert_eq!(layout.lfs_prefix(), "team/repo/lfs/");
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
