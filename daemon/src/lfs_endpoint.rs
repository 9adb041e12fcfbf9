//! Where git-lfs sends a remote's LFS objects, found by git-lfs's own endpoint rules: git-lfs
//! tells an agent the remote's name and the direction, never the endpoint it chose, and the
//! agent must move objects to the place git-lfs believes they are.

use std::collections::HashMap;

use git_s3_proto::url::parse_lfs_alias;

use crate::git::Git;

/// git config key naming the S3 home of a repository's LFS objects when its code lives
/// elsewhere (`git-lfs-s3 install --url`).
pub const LFS_URL_KEY: &str = "s3.lfsurl";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Download,
    Upload,
}

impl Operation {
    /// The operation of git-lfs's agent protocol ("upload" or "download").
    pub fn from_git_lfs(operation: &str) -> Self {
        if operation == "upload" { Self::Upload } else { Self::Download }
    }
}

/// One git config file's entries: key (as `git config --list` spells it) to its last value.
pub type Entries = HashMap<String, String>;

/// The endpoint git-lfs uses, and the setting it came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub from: String,
}

impl Endpoint {
    /// The S3 location the endpoint names: an `s3://` URL as it is, an alias URL mapped back;
    /// `None` for any other place (an LFS server, a code host).
    pub fn s3_location(&self) -> Option<String> {
        if is_s3_url(&self.url) {
            Some(self.url.clone())
        } else {
            parse_lfs_alias(&self.url).map(|url| url.to_string())
        }
    }
}

pub fn is_s3_url(url: &str) -> bool {
    url.starts_with("s3://") || url.starts_with("s3+zip://")
}

/// The keys that name the endpoint of `remote`, in git-lfs's order (`lfsapi/endpoint_finder.go`),
/// each with whether a committed `.lfsconfig` may set it (git-lfs reads only a few keys there).
/// `s3.lfsurl` is an `lfs.url` that names S3 directly, so it ranks just above `lfs.url`.
fn endpoint_keys(remote: &str, operation: Operation) -> Vec<(String, bool)> {
    let upload = operation == Operation::Upload;
    let mut keys = Vec::new();
    if upload {
        keys.push(("lfs.pushurl".to_string(), true));
    }
    keys.push((LFS_URL_KEY.to_string(), false));
    keys.push(("lfs.url".to_string(), true));
    if upload {
        keys.push((format!("remote.{remote}.lfspushurl"), false));
    }
    keys.push((format!("remote.{remote}.lfsurl"), true));
    keys
}

/// The endpoint that settings name for `remote`, if any: the first key of git-lfs's order that
/// is set, each key looked up in git config before `.lfsconfig` (git config overrides it). An
/// empty value names nothing: it is how a user sets aside a committed `.lfsconfig` locally.
pub fn configured(remote: &str, operation: Operation, git_config: &Entries, lfsconfig: &Entries) -> Option<Endpoint> {
    endpoint_keys(remote, operation).into_iter().find_map(|(key, lfsconfig_may_set)| {
        let (url, file) = match git_config.get(&key) {
            Some(url) => (url, "git config"),
            None => (lfsconfig.get(&key).filter(|_| lfsconfig_may_set)?, ".lfsconfig"),
        };
        (!url.is_empty()).then(|| Endpoint { url: url.clone(), from: format!("{key} in {file}") })
    })
}

/// Entries of `git config --null --list` (`key\nvalue\0` each; a key alone when it has no value).
pub fn parse_config_list(listed: &[u8]) -> Entries {
    String::from_utf8_lossy(listed)
        .split('\0')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (key, value) = entry.split_once('\n').unwrap_or((entry, ""));
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// The endpoint git-lfs uses for `remote` (a remote's name or a URL) in the caller's
/// repository; `None` when nothing names one and `remote` is neither a remote nor a URL.
pub async fn find(git: &Git, remote: &str, operation: Operation) -> Option<Endpoint> {
    let git_config = git.run_bytes(&["config", "--null", "--list"]).await.map(|l| parse_config_list(&l));
    let lfsconfig = lfsconfig(git).await;
    if let Some(endpoint) = configured(remote, operation, &git_config.unwrap_or_default(), &lfsconfig) {
        return Some(endpoint);
    }
    // Last, the remote's own URL (its push URL for uploads), as git-lfs falls back to it.
    let mut get_url = vec!["remote", "get-url"];
    if operation == Operation::Upload {
        get_url.push("--push");
    }
    get_url.extend(["--", remote]);
    match git.run(&get_url).await {
        Ok(url) => Some(Endpoint { url, from: format!("the URL of remote '{remote}'") }),
        Err(_) if remote.contains("://") => Some(Endpoint { url: remote.to_string(), from: "the URL given".into() }),
        Err(_) => None,
    }
}

/// The repository's `.lfsconfig` as git-lfs reads it: the work tree's file, else the index's,
/// else `HEAD`'s (a clone's first checkout has only `HEAD`'s; a bare repository only `HEAD`'s).
async fn lfsconfig(git: &Git) -> Entries {
    let top = git.run(&["rev-parse", "--show-toplevel"]).await.ok().filter(|top| !top.is_empty());
    let mut sources: Vec<Vec<String>> = Vec::new();
    if let Some(top) = top {
        let file = format!("{top}/.lfsconfig");
        if tokio::fs::try_exists(&file).await.unwrap_or(false) {
            sources.push(vec!["--file".into(), file]);
        } else {
            sources.push(vec!["--blob".into(), ":.lfsconfig".into()]);
        }
    }
    sources.push(vec!["--blob".into(), "HEAD:.lfsconfig".into()]);
    for source in sources {
        let args: Vec<&str> =
            ["config"].into_iter().chain(source.iter().map(String::as_str)).chain(["--null", "--list"]).collect();
        if let Ok(listed) = git.run_bytes(&args).await {
            return parse_config_list(&listed);
        }
    }
    Entries::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Entries {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn chosen(operation: Operation, git_config: &[(&str, &str)], lfsconfig: &[(&str, &str)]) -> Option<String> {
        configured("origin", operation, &entries(git_config), &entries(lfsconfig))
            .map(|e| format!("{} {}", e.url, e.from))
    }

    #[test]
    fn downloads_follow_lfs_url_then_the_remote_setting() {
        use Operation::Download;
        let everything = [
            ("lfs.pushurl", "s3://b/push"),
            ("remote.origin.lfspushurl", "s3://b/remote-push"),
            ("remote.origin.lfsurl", "s3://b/remote"),
            ("lfs.url", "s3://b/all"),
        ];
        assert_eq!(chosen(Download, &everything, &[]).as_deref(), Some("s3://b/all lfs.url in git config"));
        assert_eq!(
            chosen(Download, &everything[..3], &[]).as_deref(),
            Some("s3://b/remote remote.origin.lfsurl in git config")
        );
        assert_eq!(chosen(Download, &everything[..2], &[]), None, "push URLs are for uploads only");
        assert_eq!(
            chosen(Download, &[("remote.origin.lfsurl", "s3://b/remote")], &[("lfs.url", "s3://b/committed")])
                .as_deref(),
            Some("s3://b/committed lfs.url in .lfsconfig"),
            "each key in turn, in git config then in .lfsconfig: git-lfs merges them before it looks"
        );
        assert_eq!(chosen(Download, &[("remote.other.lfsurl", "s3://b/other")], &[]), None);
    }

    #[test]
    fn uploads_prefer_push_urls_in_git_lfs_order() {
        use Operation::Upload;
        let git_config = [
            ("remote.origin.lfsurl", "s3://b/remote"),
            ("remote.origin.lfspushurl", "s3://b/remote-push"),
            ("lfs.url", "s3://b/all"),
            ("lfs.pushurl", "s3://b/push"),
        ];
        assert_eq!(chosen(Upload, &git_config, &[]).as_deref(), Some("s3://b/push lfs.pushurl in git config"));
        assert_eq!(chosen(Upload, &git_config[..3], &[]).as_deref(), Some("s3://b/all lfs.url in git config"));
        assert_eq!(
            chosen(Upload, &git_config[..2], &[]).as_deref(),
            Some("s3://b/remote-push remote.origin.lfspushurl in git config")
        );
        assert_eq!(
            chosen(Upload, &[], &[("lfs.pushurl", "s3://b/committed")]).as_deref(),
            Some("s3://b/committed lfs.pushurl in .lfsconfig")
        );
    }

    #[test]
    fn s3_lfsurl_is_an_lfs_url_that_names_s3_and_lfsconfig_sets_only_what_git_lfs_reads_there() {
        let ours = [("s3.lfsurl", "s3://b/ours"), ("lfs.url", "s3://b/all")];
        assert_eq!(chosen(Operation::Download, &ours, &[]).as_deref(), Some("s3://b/ours s3.lfsurl in git config"));
        assert_eq!(
            chosen(Operation::Upload, &[ours[0], ("lfs.pushurl", "s3://b/push")], &[]).as_deref(),
            Some("s3://b/push lfs.pushurl in git config")
        );
        let committed = [("s3.lfsurl", "s3://b/x"), ("remote.origin.lfspushurl", "s3://b/y")];
        assert_eq!(chosen(Operation::Upload, &[], &committed), None);
        assert_eq!(
            chosen(
                Operation::Download,
                &[("lfs.url", ""), ("remote.origin.lfsurl", "s3://b/r")],
                &[("lfs.url", "s3://b/c")]
            )
            .as_deref(),
            Some("s3://b/r remote.origin.lfsurl in git config"),
            "an empty lfs.url in git config sets the committed one aside"
        );
    }

    #[test]
    fn endpoints_name_s3_directly_or_through_an_alias() {
        let at = |url: &str| Endpoint { url: url.into(), from: String::new() }.s3_location();
        assert_eq!(at("s3://bucket/team/repo").as_deref(), Some("s3://bucket/team/repo"));
        let alias = git_s3_proto::url::lfs_alias_url("bucket", "assets");
        assert_eq!(at(&alias).as_deref(), Some("s3://bucket/assets"));
        assert_eq!(at("https://lfs.example.com/repo.git/info/lfs"), None);
    }

    #[test]
    fn config_listings_are_read() {
        let listed =
            b"lfs.url\ns3://b/p\0core.bare\nfalse\0remote.origin.lfsurl\nfirst\0remote.origin.lfsurl\nlast\0flag\0";
        let parsed = parse_config_list(listed);
        assert_eq!(parsed["lfs.url"], "s3://b/p");
        assert_eq!(parsed["remote.origin.lfsurl"], "last", "the last value wins, as git config --get says");
        assert_eq!(parsed["flag"], "");
    }
}
