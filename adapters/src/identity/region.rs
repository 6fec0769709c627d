//! Which region an agent belongs to: the `-agent.region` flag, else `PROBER_REGION`, else the
//! cloud's metadata service, else `cn-shanghai` (the Go system's order and default).
//!
//! The six metadata services are asked at once, each with a short timeout, and the first
//! *valid* answer wins: HTTP 200, trimmed, and a valid [`Region`] name, so an error page or a
//! blank line never becomes a region (Go took curl's output verbatim). The whole detection is
//! bounded; when it returns, the queries still running are aborted, so a late answer is
//! dropped (Go panicked on one). AWS is asked with an IMDSv2 token, and plainly (IMDSv1) when
//! the token request fails.

use std::fmt;
use std::time::Duration;

use hyper::Method;
use probermesh_core::model::{Region, RegionError};
use tokio::task::JoinSet;

use super::fetch::{FetchError, fetch};

/// The region used when nothing else names one (the Go system's default).
pub const DEFAULT_REGION: &str = "cn-shanghai";

/// The environment variable consulted when the flag is empty.
pub const REGION_ENV: &str = "PROBER_REGION";

/// Longest plain metadata answer read, in bytes (a region or zone name is far shorter).
pub const MAX_METADATA_ANSWER: usize = 4 * 1024;

/// Longest OpenStack `meta_data.json` read (Huawei), in bytes: the document also holds SSH
/// keys and user metadata, so it gets more room than a bare name.
pub const MAX_METADATA_JSON: usize = 64 * 1024;

/// The cloud providers whose metadata service names a region (or a zone).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum CloudProvider {
    /// Alibaba Cloud: `/latest/meta-data/region-id`.
    Aliyun,
    /// Tencent Cloud: `/latest/meta-data/placement/zone`, a zone kept as is (as Go did).
    Tencent,
    /// Google Cloud: `/computeMetadata/v1/instance/zone` (`Metadata-Flavor: Google`); the
    /// last `/` segment, a zone.
    Gcp,
    /// Huawei Cloud: `/openstack/latest/meta_data.json`, field `availability_zone`.
    Huawei,
    /// Volcengine: `/latest/region_id`.
    Volcengine,
    /// AWS: `/latest/meta-data/placement/region`, with an IMDSv2 token when one is granted.
    Aws,
}

impl CloudProvider {
    /// Every provider, in the Go system's order.
    pub const ALL: [Self; 6] = [
        Self::Aliyun,
        Self::Tencent,
        Self::Gcp,
        Self::Huawei,
        Self::Volcengine,
        Self::Aws,
    ];

    /// A short lowercase name, for logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Aliyun => "aliyun",
            Self::Tencent => "tencent",
            Self::Gcp => "gcp",
            Self::Huawei => "huawei",
            Self::Volcengine => "volcengine",
            Self::Aws => "aws",
        }
    }

    /// The real metadata service's base URL (scheme and host, no path).
    #[must_use]
    pub fn production_base_url(self) -> &'static str {
        match self {
            Self::Aliyun => "http://100.100.100.200",
            Self::Tencent => "http://metadata.tencentyun.com",
            Self::Gcp => "http://metadata.google.internal",
            Self::Huawei | Self::Aws => "http://169.254.169.254",
            Self::Volcengine => "http://100.96.0.96",
        }
    }

    /// The path of the answer, appended to the base URL.
    #[must_use]
    pub fn path(self) -> &'static str {
        match self {
            Self::Aliyun => "/latest/meta-data/region-id",
            Self::Tencent => "/latest/meta-data/placement/zone",
            Self::Gcp => "/computeMetadata/v1/instance/zone",
            Self::Huawei => "/openstack/latest/meta_data.json",
            Self::Volcengine => "/latest/region_id",
            Self::Aws => "/latest/meta-data/placement/region",
        }
    }
}

impl fmt::Display for CloudProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata service to ask: a provider's protocol at a base URL (`http://host[:port]`).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct MetadataEndpoint {
    /// Whose protocol the service speaks.
    pub provider: CloudProvider,
    /// Scheme, host and optional port, without a trailing path.
    pub base_url: String,
}

impl MetadataEndpoint {
    /// `provider`'s protocol at `base_url` (tests use `http://127.0.0.1:<port>`).
    #[must_use]
    pub fn new(provider: CloudProvider, base_url: impl Into<String>) -> Self {
        Self {
            provider,
            base_url: base_url.into(),
        }
    }

    /// The real service of every provider. Only the agent's start-up uses this list: it
    /// sends traffic to the cloud's link-local and internal addresses.
    #[must_use]
    pub fn production() -> Vec<Self> {
        CloudProvider::ALL
            .into_iter()
            .map(|provider| Self::new(provider, provider.production_base_url()))
            .collect()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }
}

/// Time limits of metadata detection.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct DetectionTimeouts {
    /// Each HTTP request (AWS's token request and its question are two).
    pub per_request: Duration,
    /// The whole metadata step; what has not answered by then is dropped.
    pub overall: Duration,
}

impl Default for DetectionTimeouts {
    /// 1 s per request (as Go), 2 s in all.
    fn default() -> Self {
        Self {
            per_request: Duration::from_secs(1),
            overall: Duration::from_secs(2),
        }
    }
}

/// Where the agent's region came from.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RegionSource {
    /// The `-agent.region` flag.
    Flag,
    /// The `PROBER_REGION` environment variable.
    Env,
    /// A cloud metadata service.
    Metadata {
        /// The provider that answered first with a valid name.
        provider: CloudProvider,
    },
    /// Nothing answered: [`DEFAULT_REGION`].
    Default,
}

impl fmt::Display for RegionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => f.write_str("the -agent.region flag"),
            Self::Env => write!(f, "the {REGION_ENV} environment variable"),
            Self::Metadata { provider } => write!(f, "the {provider} metadata service"),
            Self::Default => f.write_str("the default"),
        }
    }
}

/// The agent's region and where it came from.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct DetectedRegion {
    /// The region.
    pub region: Region,
    /// Its source.
    pub source: RegionSource,
}

/// An explicitly given region (flag or environment) is not a valid name.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{origin} is {value:?}, which is not a region name: {cause}")]
pub struct RegionConfigError {
    /// Where the value came from (`-agent.region` or `PROBER_REGION`).
    pub origin: &'static str,
    /// The value as given.
    pub value: String,
    /// Why it is not a region name (in the message, not a `source`: a chain says it once).
    pub cause: RegionError,
}

/// Works out the agent's region: `flag` when non-blank, else `env` (the value of
/// [`REGION_ENV`], passed in by the caller) when non-blank, else the first valid answer of
/// `endpoints` within `timeouts.overall`, else [`DEFAULT_REGION`]. Flag and environment
/// values are trimmed.
///
/// Production passes [`MetadataEndpoint::production`]; tests pass loopback fakes.
///
/// # Errors
/// [`RegionConfigError`] when the flag or the environment value is given but is not a valid
/// region name (a typo should stop the agent, not send it to another region).
pub async fn detect_region(
    flag: Option<&str>,
    env: Option<String>,
    endpoints: &[MetadataEndpoint],
    timeouts: DetectionTimeouts,
) -> Result<DetectedRegion, RegionConfigError> {
    let explicit = |value: &str, origin: &'static str, source: RegionSource| {
        Region::new(value.trim())
            .map(|region| DetectedRegion { region, source })
            .map_err(|cause| RegionConfigError {
                origin,
                value: value.to_owned(),
                cause,
            })
    };
    if let Some(flag) = flag.filter(|f| !f.trim().is_empty()) {
        return explicit(flag, "-agent.region", RegionSource::Flag);
    }
    if let Some(env) = env.filter(|e| !e.trim().is_empty()) {
        return explicit(&env, REGION_ENV, RegionSource::Env);
    }
    if let Some((region, provider)) = ask_metadata(endpoints, timeouts).await {
        return Ok(DetectedRegion {
            region,
            source: RegionSource::Metadata { provider },
        });
    }
    Ok(DetectedRegion {
        region: default_region(),
        source: RegionSource::Default,
    })
}

/// [`DEFAULT_REGION`] as a [`Region`].
///
/// # Panics
/// Never: the constant is a valid name (checked by a test).
#[must_use]
pub fn default_region() -> Region {
    Region::new(DEFAULT_REGION).expect("the default region is a valid name")
}

/// Asks every endpoint at once; the first valid answer within `timeouts.overall` wins.
/// Returning drops the [`JoinSet`], which aborts the queries still running.
async fn ask_metadata(
    endpoints: &[MetadataEndpoint],
    timeouts: DetectionTimeouts,
) -> Option<(Region, CloudProvider)> {
    if endpoints.is_empty() {
        return None;
    }
    let mut queries = JoinSet::new();
    for endpoint in endpoints {
        let endpoint = endpoint.clone();
        queries.spawn(async move {
            let answer = query(&endpoint, timeouts.per_request).await;
            (endpoint, answer)
        });
    }
    let first_valid = async {
        while let Some(joined) = queries.join_next().await {
            match joined {
                Ok((endpoint, Ok(region))) => {
                    tracing::debug!(provider = %endpoint.provider, %region, "metadata answered");
                    return Some((region, endpoint.provider));
                }
                Ok((endpoint, Err(error))) => {
                    tracing::debug!(
                        provider = %endpoint.provider,
                        base_url = %endpoint.base_url,
                        %error,
                        "no region from this metadata service"
                    );
                }
                Err(error) => tracing::debug!(%error, "a metadata query task failed"),
            }
        }
        None
    };
    tokio::time::timeout(timeouts.overall, first_valid)
        .await
        .unwrap_or_else(|_| {
            tracing::debug!(bound = ?timeouts.overall, "metadata detection timed out");
            None
        })
}

/// Why one metadata service gave no region.
#[derive(Debug, thiserror::Error)]
enum MetadataError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered with bytes that are not UTF-8")]
    NotUtf8 { url: String },
    #[error("{url} answered JSON without a string \"availability_zone\": {reason}")]
    Json { url: String, reason: String },
    #[error("{url} answered something that is not a region name: {cause}")]
    NotARegion { url: String, cause: RegionError },
}

/// Asks one service and validates its answer.
async fn query(endpoint: &MetadataEndpoint, timeout: Duration) -> Result<Region, MetadataError> {
    let provider = endpoint.provider;
    let url = endpoint.url(provider.path());
    let text = match provider {
        CloudProvider::Aws => aws_region(endpoint, &url, timeout).await?,
        CloudProvider::Gcp => {
            let text = get_text(&url, &[("metadata-flavor", "Google")], timeout).await?;
            last_segment(&text).to_owned()
        }
        CloudProvider::Huawei => {
            let text = get_text_limited(&url, &[], MAX_METADATA_JSON, timeout).await?;
            availability_zone(&text).map_err(|reason| MetadataError::Json {
                url: url.clone(),
                reason,
            })?
        }
        CloudProvider::Aliyun | CloudProvider::Tencent | CloudProvider::Volcengine => {
            get_text(&url, &[], timeout).await?
        }
    };
    Region::new(text.trim()).map_err(|cause| MetadataError::NotARegion { url, cause })
}

/// AWS: an IMDSv2 session token, then the question with it; without a token (the PUT failed
/// or was refused), the question alone (IMDSv1).
async fn aws_region(
    endpoint: &MetadataEndpoint,
    url: &str,
    timeout: Duration,
) -> Result<String, MetadataError> {
    let token_url = endpoint.url("/latest/api/token");
    let token = match fetch(
        Method::PUT,
        &token_url,
        &[("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
        MAX_METADATA_ANSWER,
        timeout,
    )
    .await
    {
        Ok(answer) if answer.status == 200 => std::str::from_utf8(&answer.body)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
        Ok(answer) => {
            tracing::debug!(
                status = answer.status,
                "IMDSv2 token refused; trying IMDSv1"
            );
            None
        }
        Err(error) => {
            tracing::debug!(%error, "IMDSv2 token request failed; trying IMDSv1");
            None
        }
    };
    match token {
        Some(token) => get_text(url, &[("x-aws-ec2-metadata-token", &token)], timeout).await,
        None => get_text(url, &[], timeout).await,
    }
}

async fn get_text(
    url: &str,
    headers: &[(&'static str, &str)],
    timeout: Duration,
) -> Result<String, MetadataError> {
    get_text_limited(url, headers, MAX_METADATA_ANSWER, timeout).await
}

/// GETs `url`; only an HTTP 200 with a UTF-8 body counts.
async fn get_text_limited(
    url: &str,
    headers: &[(&'static str, &str)],
    limit: usize,
    timeout: Duration,
) -> Result<String, MetadataError> {
    let answer = fetch(Method::GET, url, headers, limit, timeout).await?;
    if answer.status != 200 {
        return Err(MetadataError::Status {
            url: url.to_owned(),
            status: answer.status,
        });
    }
    String::from_utf8(answer.body.to_vec()).map_err(|_| MetadataError::NotUtf8 {
        url: url.to_owned(),
    })
}

/// GCP's zone is `projects/<number>/zones/<zone>`: the zone is the last segment.
fn last_segment(text: &str) -> &str {
    let text = text.trim();
    text.rsplit('/').next().unwrap_or(text)
}

/// OpenStack's `meta_data.json`: the string field `availability_zone`.
fn availability_zone(text: &str) -> Result<String, String> {
    let document: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    document
        .get("availability_zone")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "the field is missing or not a string".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_region_is_valid() {
        assert_eq!(default_region().as_str(), "cn-shanghai");
    }

    #[test]
    fn the_production_list_names_the_six_services() {
        let urls: Vec<String> = MetadataEndpoint::production()
            .iter()
            .map(|e| e.url(e.provider.path()))
            .collect();
        assert_eq!(
            urls,
            [
                "http://100.100.100.200/latest/meta-data/region-id",
                "http://metadata.tencentyun.com/latest/meta-data/placement/zone",
                "http://metadata.google.internal/computeMetadata/v1/instance/zone",
                "http://169.254.169.254/openstack/latest/meta_data.json",
                "http://100.96.0.96/latest/region_id",
                "http://169.254.169.254/latest/meta-data/placement/region",
            ]
        );
    }

    #[test]
    fn gcp_zone_is_the_last_segment() {
        assert_eq!(
            last_segment("projects/123456/zones/us-central1-a\n"),
            "us-central1-a"
        );
        assert_eq!(last_segment("europe-west1-b"), "europe-west1-b");
    }

    #[test]
    fn huawei_zone_comes_from_the_json_field() {
        assert_eq!(
            availability_zone(r#"{"uuid":"x","availability_zone":"cn-north-4a"}"#).unwrap(),
            "cn-north-4a"
        );
        assert!(availability_zone(r#"{"availability_zone":4}"#).is_err());
        assert!(availability_zone("<html>").is_err());
    }

    #[test]
    fn a_bad_explicit_region_names_its_origin() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime
            .block_on(detect_region(
                None,
                Some("eu west".into()),
                &[],
                DetectionTimeouts::default(),
            ))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("PROBER_REGION") && error.contains("\"eu west\""),
            "{error}"
        );
    }
}
