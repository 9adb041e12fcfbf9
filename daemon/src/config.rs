//! Resolves, once per request and at the edge, everything that decides how to reach a remote:
//! its URL, git config (`remote.<name>.s3*`, `s3.*`) and the caller's environment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::git::Git;
use git_s3_proto::url::{S3Url, UrlError};

/// Python tool's default, and its variable: both tools must agree on when a lock is stale.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(60);
pub const LOCK_TTL_ENV: &str = "GIT_REMOTE_S3_LOCK_TTL_SECONDS";
/// A body that sends nothing for this long has stalled: S3 streams steadily, and a resumed
/// download costs one request.
pub const DEFAULT_BODY_IDLE: Duration = Duration::from_secs(30);
pub const BODY_IDLE_ENV: &str = "GIT_REMOTE_S3_BODY_IDLE_SECONDS";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("'{0}' is neither an s3:// URL nor a remote of this repository (see 'git remote -v')")]
    UnknownRemote(String),
    #[error("{key} = '{value}' is not valid: {why}")]
    BadValue { key: String, value: String, why: &'static str },
    #[error(
        "AWS profile '{profile}' (named in the URL) is not in the AWS config or credentials files; fix the URL (s3://profile@bucket/prefix) or add that profile"
    )]
    UrlProfileNotFound { profile: String },
    #[error(
        "AWS profile '{profile}' (from AWS_PROFILE) is not in the AWS config or credentials files; set AWS_PROFILE to one that is, or unset it"
    )]
    EnvProfileNotFound { profile: String },
    #[error("cannot read the AWS config or credentials files: {0}; fix the file it names")]
    AwsFiles(String),
}

/// Credentials in the environment that would otherwise win over the profile a URL names.
const ENV_CREDENTIALS: [&str; 3] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// Whether the SDK adds its default CRC checksums to every request, or only where S3 requires
/// one. Some S3-compatible stores reject the trailers of the former.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumMode {
    WhenSupported,
    WhenRequired,
}

/// How a push builds a ref's new bundle (`remote.<name>.s3compose`, `s3.compose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeMode {
    /// From an old bundle's bytes where that pays, copying them inside S3.
    Auto,
    /// The same, with every part but the last of one size, as Cloudflare R2 demands.
    EqualParts,
    /// Always upload whole bundles.
    Off,
}

/// Everything that selects an S3 client. Two callers with equal settings share a client; any
/// difference (including credentials in the environment) gets its own.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct S3Settings {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub checksums: ChecksumMode,
    /// The caller's AWS_* variables and HOME: the SDK resolves credentials from them.
    pub aws_env: Vec<(String, String)>,
}

impl std::fmt::Debug for S3Settings {
    // Hand-written so that credentials in `aws_env` can never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("profile", &self.profile)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("checksums", &self.checksums)
            .finish_non_exhaustive()
    }
}

/// One remote, fully resolved.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub url: S3Url,
    pub s3: S3Settings,
    pub lock_ttl: Duration,
    /// How long a body may send nothing before it counts as stalled.
    pub body_idle: Duration,
    pub compose: ComposeMode,
    /// KMS key (id, ARN or alias) every object written is encrypted with; `None`: the bucket's
    /// default encryption.
    pub kms_key_id: Option<String>,
    /// The storage format a push to an empty prefix creates (`s3.format`); a prefix that holds
    /// a repository is read in the format it holds, whatever this says.
    pub format: NewRemoteFormat,
    /// `s3.gcGraceSeconds`: the grace period a new native remote records.
    pub gc_grace: Option<Duration>,
}

/// `s3.format` / `remote.<name>.s3format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NewRemoteFormat {
    /// The layout shared with the Python tool: a bundle per ref.
    #[default]
    Bundles,
    /// Packs and one manifest: one copy of history, atomic pushes.
    Native,
}

/// Reads git config in the caller's repository and combines it with the URL and environment.
pub async fn resolve(
    remote_name: &str,
    url: &str,
    env: &Arc<HashMap<String, String>>,
    git: &Git,
) -> Result<RemoteConfig, ConfigError> {
    let url = S3Url::parse(url)?;
    let config = git.config_list().await.unwrap_or_default();
    let resolved = resolve_from(remote_name, url, env, &config)?;
    if let Some(profile) = &resolved.s3.profile
        && !profile_exists(profile, &resolved.s3.aws_env).await?
    {
        return Err(match resolved.url.profile {
            Some(_) => ConfigError::UrlProfileNotFound { profile: profile.clone() },
            None => ConfigError::EnvProfileNotFound { profile: profile.clone() },
        });
    }
    Ok(resolved)
}

/// Whether the AWS config or credentials files (as the caller's environment locates them)
/// define `profile`.
async fn profile_exists(profile: &str, aws_env: &[(String, String)]) -> Result<bool, ConfigError> {
    let env: HashMap<String, String> = aws_env.iter().cloned().collect();
    let env = aws_types::os_shim_internal::Env::from(env);
    let fs = aws_types::os_shim_internal::Fs::real();
    let files = aws_runtime::env_config::file::EnvConfigFiles::default();
    match aws_config::profile::load(&fs, &env, &files, None).await {
        Ok(profiles) => Ok(profiles.get_profile(profile).is_some()),
        Err(e) => Err(ConfigError::AwsFiles(e.to_string())),
    }
}

fn resolve_from(
    remote_name: &str,
    url: S3Url,
    env: &HashMap<String, String>,
    config: &[(String, String)],
) -> Result<RemoteConfig, ConfigError> {
    let remote_prefix = format!("remote.{}.s3", remote_name.to_ascii_lowercase());
    // Last one wins, as in git; the remote's own key beats the global one.
    let lookup = |name: &str| -> Option<(String, String)> {
        let remote_key = format!("{remote_prefix}{name}");
        let global_key = format!("s3.{name}");
        config
            .iter()
            .rev()
            .find(|(k, _)| *k == remote_key)
            .or_else(|| config.iter().rev().find(|(k, _)| *k == global_key))
            .map(|(k, v)| (k.clone(), v.clone()))
    };
    let non_empty_env = |key: &str| env.get(key).filter(|v| !v.is_empty()).cloned();

    let endpoint = lookup("endpoint")
        .map(|(_, v)| v)
        .or_else(|| non_empty_env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| non_empty_env("AWS_ENDPOINT_URL"));
    let region = lookup("region").map(|(_, v)| v).filter(|v| !v.is_empty());
    let kms_key_id = lookup("kmskeyid").map(|(_, v)| v).filter(|v| !v.is_empty());
    let path_style = match lookup("pathstyle") {
        Some((key, value)) => parse_bool(&key, &value)?,
        // Virtual-host addressing needs DNS for `bucket.host`; a local server has none.
        None => endpoint.as_deref().is_some_and(is_local_endpoint),
    };
    let checksums = match lookup("checksums") {
        None => ChecksumMode::WhenSupported,
        Some((_, v)) if v.eq_ignore_ascii_case("when-supported") => ChecksumMode::WhenSupported,
        Some((_, v)) if v.eq_ignore_ascii_case("when-required") => ChecksumMode::WhenRequired,
        Some((key, value)) => {
            return Err(ConfigError::BadValue { key, value, why: "use when-supported or when-required" });
        }
    };
    let compose = match lookup("compose") {
        None => ComposeMode::Auto,
        Some((_, v)) if v.eq_ignore_ascii_case("auto") => ComposeMode::Auto,
        Some((_, v)) if v.eq_ignore_ascii_case("equal-parts") => ComposeMode::EqualParts,
        Some((_, v)) if v.eq_ignore_ascii_case("off") => ComposeMode::Off,
        Some((key, value)) => {
            return Err(ConfigError::BadValue { key, value, why: "use auto, equal-parts or off" });
        }
    };
    // R2 refuses uploads whose parts differ in size (all but the last).
    let compose = match (compose, endpoint.as_deref()) {
        (ComposeMode::Auto, Some(endpoint)) if endpoint.contains(".r2.cloudflarestorage.com") => {
            ComposeMode::EqualParts
        }
        (mode, _) => mode,
    };
    let format = match lookup("format") {
        None => NewRemoteFormat::Bundles,
        Some((_, v)) if v.eq_ignore_ascii_case("bundles") => NewRemoteFormat::Bundles,
        Some((_, v)) if v.eq_ignore_ascii_case("native") => NewRemoteFormat::Native,
        Some((key, value)) => {
            return Err(ConfigError::BadValue {
                key,
                value,
                why: "use bundles (shared with the Python tool) or native",
            });
        }
    };
    let seconds = |name: &str, default: Duration| match non_empty_env(name) {
        None => Ok(default),
        Some(value) => match value.parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
            _ => Err(ConfigError::BadValue { key: name.into(), value, why: "use a whole number of seconds above 0" }),
        },
    };
    let gc_grace = match lookup("gcgraceseconds") {
        None => None,
        Some((key, value)) => match value.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => return Err(ConfigError::BadValue { key, value, why: "use a whole number of seconds" }),
        },
    };
    let lock_ttl = seconds(LOCK_TTL_ENV, DEFAULT_LOCK_TTL)?;
    let body_idle = seconds(BODY_IDLE_ENV, DEFAULT_BODY_IDLE)?;
    // The profile a URL names is the user's explicit choice: it beats keys in the environment.
    let mut aws_env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("AWS_") || *k == "HOME")
        .filter(|(k, _)| url.profile.is_none() || !ENV_CREDENTIALS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    aws_env.sort();
    let profile = url.profile.clone().or_else(|| non_empty_env("AWS_PROFILE"));
    Ok(RemoteConfig {
        s3: S3Settings { profile, region, endpoint, path_style, checksums, aws_env },
        url,
        lock_ttl,
        body_idle,
        compose,
        kms_key_id,
        format,
        gc_grace,
    })
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(ConfigError::BadValue { key: key.into(), value: value.into(), why: "use true or false" }),
    }
}

fn is_local_endpoint(endpoint: &str) -> bool {
    let host = endpoint.split("://").nth(1).unwrap_or(endpoint);
    let host = host.split('/').next().unwrap_or(host);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(env: &[(&str, &str)], config: &[(&str, &str)]) -> Result<RemoteConfig, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let config: Vec<_> = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve_from("origin", S3Url::parse("s3://bucket/repo").unwrap(), &env, &config)
    }

    #[test]
    fn env_endpoint_alone_reaches_a_local_server() {
        let config = resolve_with(&[("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")], &[]).unwrap();
        assert_eq!(config.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(config.s3.path_style);
        assert_eq!(config.lock_ttl, DEFAULT_LOCK_TTL);
    }

    #[test]
    fn remote_key_beats_global_key() {
        let config = resolve_with(
            &[],
            &[
                ("s3.endpoint", "https://global.example"),
                ("remote.origin.s3endpoint", "https://mine.example"),
                ("s3.checksums", "when-required"),
            ],
        )
        .unwrap();
        assert_eq!(config.s3.endpoint.as_deref(), Some("https://mine.example"));
        assert!(!config.s3.path_style);
        assert_eq!(config.s3.checksums, ChecksumMode::WhenRequired);
        assert_eq!(config.kms_key_id, None);
        // git config lists keys lower-cased.
        let kms = [("s3.kmskeyid", "alias/team"), ("remote.origin.s3kmskeyid", "alias/mine")];
        assert_eq!(resolve_with(&[], &kms).unwrap().kms_key_id.as_deref(), Some("alias/mine"));
    }

    #[test]
    fn composed_pushes_use_equal_parts_on_r2() {
        assert_eq!(resolve_with(&[], &[]).unwrap().compose, ComposeMode::Auto);
        let r2 = [("s3.endpoint", "https://acct.r2.cloudflarestorage.com")];
        assert_eq!(resolve_with(&[], &r2).unwrap().compose, ComposeMode::EqualParts);
        assert_eq!(resolve_with(&[], &[("s3.compose", "off")]).unwrap().compose, ComposeMode::Off);
        let err = resolve_with(&[], &[("remote.origin.s3compose", "sometimes")]).unwrap_err().to_string();
        assert!(err.contains("remote.origin.s3compose") && err.contains("equal-parts"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = resolve_with(&[], &[("s3.pathstyle", "maybe")]).unwrap_err().to_string();
        assert!(err.contains("s3.pathstyle") && err.contains("true or false"), "{err}");
        let err = resolve_with(&[(LOCK_TTL_ENV, "soon")], &[]).unwrap_err().to_string();
        assert!(err.contains(LOCK_TTL_ENV), "{err}");
        let err = resolve_with(&[(BODY_IDLE_ENV, "0")], &[]).unwrap_err().to_string();
        assert!(err.contains(BODY_IDLE_ENV) && err.contains("above 0"), "{err}");
        assert_eq!(resolve_with(&[(BODY_IDLE_ENV, "2")], &[]).unwrap().body_idle, Duration::from_secs(2));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = resolve_with(&[("AWS_SECRET_ACCESS_KEY", "hunter2")], &[]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn local_endpoints() {
        assert!(is_local_endpoint("http://127.0.0.1:9000"));
        assert!(is_local_endpoint("http://localhost:9000/"));
        assert!(is_local_endpoint("http://[::1]:9000"));
        assert!(!is_local_endpoint("https://s3.eu-west-1.amazonaws.com"));
    }
}
