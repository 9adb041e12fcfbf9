//! Keeps warm S3 clients: one per effective configuration, so credentials and connections are
//! reused across git commands but never shared between callers whose settings differ.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::config::{ChecksumMode, S3Settings};

/// Used when neither the caller's environment, its profile nor git config names a region (S3
/// names the bucket's own at the first request, and it is followed from then on).
pub const FALLBACK_REGION: &str = "us-east-1";
/// A client unused this long is dropped (with the credentials it cached).
const CLIENT_IDLE_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Attempts at each request; with the timeouts below, an endpoint that never answers fails a
/// command within about half a minute.
pub const MAX_ATTEMPTS: u32 = 4;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait from sending a small request to the start of its answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for requests that carry a part or make S3 copy one: the wait includes sending the
/// body (up to 64 MiB on a slow uplink) or S3 copying up to 5 GiB.
const BULK_READ_TIMEOUT: Duration = Duration::from_secs(600);

/// Overrides the client's timeouts for one request that moves a lot of bytes.
pub fn bulk_transfer() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(
        TimeoutConfig::builder().connect_timeout(CONNECT_TIMEOUT).read_timeout(BULK_READ_TIMEOUT).build(),
    )
}

struct CachedClient {
    client: aws_sdk_s3::Client,
    last_used: Instant,
}

#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<[u8; 32], CachedClient>>,
    /// Regions S3 named for buckets whose requests went to another one, for the daemon's life:
    /// the redirect costs one round trip per bucket, not one per command.
    regions: std::sync::Mutex<BTreeMap<(String, String), FoundRegion>>,
}

/// A bucket's region as S3 named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRegion {
    pub bucket: String,
    /// The endpoint asked (empty: AWS's own).
    pub endpoint: String,
    pub region: String,
    /// The region requests went to before (configured, or the default).
    pub asked: String,
}

impl ClientCache {
    pub async fn get(&self, settings: &S3Settings) -> aws_sdk_s3::Client {
        let key = cache_key(settings);
        let mut clients = self.clients.lock().await;
        clients.retain(|_, cached| cached.last_used.elapsed() < CLIENT_IDLE_LIMIT);
        if let Some(cached) = clients.get_mut(&key) {
            cached.last_used = Instant::now();
            return cached.client.clone();
        }
        let client = build_client(settings).await;
        clients.insert(key, CachedClient { client: client.clone(), last_used: Instant::now() });
        tracing::debug!(clients = clients.len(), ?settings, "built a new S3 client");
        client
    }

    /// How many clients are warm.
    pub async fn count(&self) -> usize {
        self.clients.lock().await.len()
    }

    /// The region S3 named for `bucket` at `endpoint` earlier in this daemon's life.
    pub fn bucket_region(&self, endpoint: Option<&str>, bucket: &str) -> Option<String> {
        let regions = self.regions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (endpoint.unwrap_or_default().to_string(), bucket.to_string());
        regions.get(&key).map(|found| found.region.clone())
    }

    pub fn remember_region(&self, found: FoundRegion) {
        let mut regions = self.regions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        regions.insert((found.endpoint.clone(), found.bucket.clone()), found);
    }

    /// Every bucket region found so far, for `git s3 daemon status`.
    pub fn found_regions(&self) -> Vec<FoundRegion> {
        let regions = self.regions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        regions.values().cloned().collect()
    }
}

/// A digest rather than the settings themselves, so the map holds no secrets in plain text.
/// The AWS config and credentials files' timestamps are part of it: editing them (e.g. after
/// `aws sso login` or rotating keys) gets a fresh client.
fn cache_key(settings: &S3Settings) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |s: &str| {
        hasher.update((s.len() as u64).to_le_bytes());
        hasher.update(s.as_bytes());
    };
    field(settings.profile.as_deref().unwrap_or("\0"));
    field(settings.region.as_deref().unwrap_or("\0"));
    field(settings.endpoint.as_deref().unwrap_or("\0"));
    field(if settings.path_style { "path" } else { "vhost" });
    field(match settings.checksums {
        ChecksumMode::WhenSupported => "supported",
        ChecksumMode::WhenRequired => "required",
    });
    for (k, v) in &settings.aws_env {
        field(k);
        field(v);
    }
    for file in aws_files(settings) {
        let stamp = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_default();
        field(&stamp);
    }
    hasher.finalize().into()
}

fn aws_files(settings: &S3Settings) -> Vec<String> {
    let env = |key: &str| settings.aws_env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let home = env("HOME").unwrap_or_default();
    vec![
        env("AWS_CONFIG_FILE").unwrap_or_else(|| format!("{home}/.aws/config")),
        env("AWS_SHARED_CREDENTIALS_FILE").unwrap_or_else(|| format!("{home}/.aws/credentials")),
    ]
}

async fn build_client(settings: &S3Settings) -> aws_sdk_s3::Client {
    let env: HashMap<String, String> = settings.aws_env.iter().cloned().collect();
    // The SDK's default chain (env, profiles with SSO and credential_process, web identity,
    // container, IMDS), evaluated against the caller's environment instead of the daemon's.
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .env(aws_types::os_shim_internal::Env::from(env))
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(TimeoutConfig::builder().connect_timeout(CONNECT_TIMEOUT).read_timeout(READ_TIMEOUT).build());
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let sdk_config = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config).force_path_style(settings.path_style);
    if sdk_config.region().is_none() {
        builder = builder.region(aws_config::Region::new(FALLBACK_REGION));
    }
    if settings.checksums == ChecksumMode::WhenRequired {
        builder = builder
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}
