//! Everything that shapes a running server: address, limits, batching, auth, CORS and costs.

use std::net::SocketAddr;
use std::time::Duration;

use bestiary_dataset::decode::DecodeLimits;
use bestiary_storage::StoreOptions;

/// Public on-demand price of an ml.m5.xlarge real-time inference instance in us-east-1
/// (USD 0.23 per hour for 4 vCPUs), per vCPU-hour: the default of `--cost-per-vcpu-hour`.
/// Source: the Amazon SageMaker AI pricing page (on-demand, real-time inference), as recorded
/// in November 2026 and not re-checked since; prices change, so users pass their own.
pub const DEFAULT_COST_PER_VCPU_HOUR: f64 = 0.23 / 4.0;

/// How a server runs. `Default` gives the documented defaults of `bestiary serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Images per inference batch, at most; `None` lets each model's engine choose (one image
    /// on CPU engines, where larger batches are slower per image).
    pub max_batch_size: Option<usize>,
    /// How long the first image of a batch waits for others to join it.
    pub max_batch_delay: Duration,
    /// Images admitted (pre-processing, waiting or in inference) at once; beyond it 429.
    pub max_queue: usize,
    /// Requests handled at once on the inference routes; beyond it 429.
    pub max_concurrent_requests: usize,
    /// Largest request body, in bytes (URIs in JSON name objects of any size).
    pub max_body_bytes: usize,
    /// Client connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (or sit idle between
    /// keep-alive requests) before its connection is closed.
    pub header_read_timeout: Duration,
    /// A request that takes longer fails with 503 `timeout`.
    pub request_timeout: Duration,
    /// How long a shutdown waits for in-flight requests before it gives up on them.
    pub shutdown_timeout: Duration,
    /// Accepted Bearer tokens; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Lets callers without a key use `/admin/*` when `api_keys` is empty; off by default, so a
    /// keyless server cannot be reloaded or re-pointed by whoever reaches its port.
    pub open_admin: bool,
    /// Origins allowed by CORS (`*` for any); empty means no CORS headers.
    pub cors_allow_origins: Vec<String>,
    /// How often a `latest` pointer is checked for a new version; `None` never polls.
    pub model_poll_interval: Option<Duration>,
    /// Price of one vCPU-hour, for the cost estimates.
    pub cost_per_vcpu_hour: f64,
    /// Period of the CloudWatch Embedded Metric Format lines on stdout; `None` writes none.
    pub cloudwatch_emf_interval: Option<Duration>,
    /// The bucket that relative keys in `{"uris": [...]}` are read from.
    pub bucket: String,
    /// Object-store URL prefixes outside the bucket that `{"uris": [...]}` may name; anything
    /// else is refused (403) before a request leaves the server.
    pub allowed_uri_prefixes: Vec<String>,
    /// How stores (the bucket, `s3://` URIs, model folders) are opened.
    pub store: StoreOptions,
    /// Ceilings applied to every photo before its pixels are decoded.
    pub decode_limits: DecodeLimits,
    /// `top_k` when the request does not say.
    pub default_top_k: usize,
    /// A photo the model's detector rejects keeps its best class as the label (not `unknown`).
    pub keep_label_when_unknown: bool,
    /// SageMaker batch-transform settings from the environment (none outside SageMaker).
    pub sagemaker_batch: crate::routes::sagemaker::BatchEnvironment,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_batch_size: None,
            // Short: under load the inference thread is busy and batches fill while it works;
            // the delay only holds back a lone request, which it costs latency.
            max_batch_delay: Duration::from_millis(2),
            max_queue: 1024,
            max_concurrent_requests: 512,
            max_body_bytes: 32 * 1024 * 1024,
            // Far above the 512 requests handled at once, far below a default 1,024-descriptor
            // limit's worth of sockets once files and the store's connections are counted.
            max_connections: 768,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            // SageMaker allows 30 s between SIGTERM and SIGKILL.
            shutdown_timeout: Duration::from_secs(25),
            api_keys: Vec::new(),
            open_admin: false,
            cors_allow_origins: Vec::new(),
            model_poll_interval: Some(Duration::from_secs(30)),
            cost_per_vcpu_hour: DEFAULT_COST_PER_VCPU_HOUR,
            cloudwatch_emf_interval: None,
            bucket: "./bucket".into(),
            allowed_uri_prefixes: Vec::new(),
            store: StoreOptions::default(),
            decode_limits: DecodeLimits {
                max_pixels: 50_000_000,
                ..DecodeLimits::default()
            },
            default_top_k: 5,
            keep_label_when_unknown: false,
            sagemaker_batch: Default::default(),
        }
    }
}

impl ServeConfig {
    /// Checks the settings that would make the server unusable.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max batch size", self.max_batch_size.unwrap_or(1)),
            ("max queue", self.max_queue),
            ("max concurrent requests", self.max_concurrent_requests),
            ("max body size", self.max_body_bytes),
            ("max connections", self.max_connections),
            ("default top-k", self.default_top_k),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("the {name} must be at least 1"));
            }
        }
        if !(self.cost_per_vcpu_hour.is_finite() && self.cost_per_vcpu_hour >= 0.0) {
            return Err("the cost per vCPU-hour must be a non-negative number".into());
        }
        if self.header_read_timeout.is_zero() {
            return Err("the header read timeout must be positive".into());
        }
        if self.model_poll_interval == Some(Duration::ZERO) {
            return Err("the model poll interval must be positive (or off)".into());
        }
        Ok(())
    }
}
