//! `bestiary serve`: an HTTP API that classifies photos with a stored model — Bestiary's own JSON
//! API, the SageMaker hosting contract and the Open Inference Protocol v2 — with dynamic
//! batching, API keys, CORS, Prometheus metrics, usage and cost accounting, hot model swap, and a
//! web console.

pub mod auth;
pub mod batcher;
pub mod classify;
pub mod config;
pub mod connections;
pub mod console;
pub mod emf;
pub mod error;
pub mod gallery;
pub mod input;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod server;
pub mod state;
pub mod thumbnail;
pub mod usage;

pub use auth::collect_keys;
pub use config::{DEFAULT_COST_PER_VCPU_HOUR, ServeConfig};
pub use error::{ApiError, ErrorResponse};
pub use model::{EngineSettings, ModelSource, ReloadOutcome, ServedModel, load_model};
pub use routes::sagemaker::{
    BatchEnvironment, SAGEMAKER_DEFAULT_PORT, SAGEMAKER_MODEL_DIR, detect_sagemaker,
    model_in_artifact, sagemaker_address,
};
pub use server::{ServeError, Server};
pub use usage::UsageReport;
