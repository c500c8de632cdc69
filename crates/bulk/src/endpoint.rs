//! Classification by a running server instead of a local model (`--endpoint`): a `bestiary
//! serve` through `POST /v1/classify`, or any SageMaker-style container through
//! `POST /invocations`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::error::{BulkError, Result};
use crate::manifest::ModelIdentity;
use crate::record::LabelScore;

/// What an endpoint said about one photo.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointAnswer {
    Classified {
        label: String,
        score: f32,
        top_k: Vec<LabelScore>,
        /// The model's "unknown" verdict and score, when it has a detector.
        unknown: Option<bool>,
        unknown_score: Option<f32>,
        /// The model version that answered, when the endpoint says.
        model: Option<ModelIdentity>,
        width: Option<u32>,
        height: Option<u32>,
    },
    /// The endpoint could not use the photo (HTTP 422): a result, not a failure.
    Rejected { code: String, message: String },
}

/// Which contract the URL speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contract {
    /// `POST {base}/v1/classify?top_k=K`, and `GET {base}/v1/models` for the version.
    Bestiary,
    /// `POST <url>` answering `{"prediction": [...], "labels": [...], "predicted_label": ...}`.
    SageMaker,
}

/// A client for one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointClient {
    http: reqwest::Client,
    contract: Contract,
    /// Where photos are posted.
    classify_url: String,
    /// What the user gave, for messages.
    url: String,
    api_key: Option<String>,
    retries: usize,
    top_k: usize,
    identity: ModelIdentity,
}

#[derive(Deserialize)]
struct NativeResponse {
    predictions: Vec<NativePrediction>,
}

#[derive(Deserialize)]
struct NativePrediction {
    label: String,
    score: f32,
    top_k: Vec<LabelScore>,
    #[serde(default)]
    unknown: Option<bool>,
    #[serde(default)]
    unknown_score: Option<f32>,
    model: String,
    version: String,
    width: Option<u32>,
    height: Option<u32>,
}

#[derive(Deserialize)]
struct ModelList {
    models: Vec<ModelIdentityJson>,
}

#[derive(Deserialize)]
struct ModelIdentityJson {
    name: String,
    version: String,
}

#[derive(Deserialize)]
struct Invocation {
    prediction: Vec<f32>,
    labels: Vec<String>,
    predicted_label: String,
    #[serde(default)]
    unknown: Option<bool>,
    #[serde(default)]
    unknown_score: Option<f32>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_type: Option<String>,
    reason: Option<String>,
}

impl EndpointClient {
    /// Connects to `url`: a server root or `…/v1/classify` is a `bestiary serve`, asked for its
    /// model version first; a URL ending in `/invocations` is a SageMaker-style container,
    /// whose model version is unknown, so the endpoint URL stands for it.
    ///
    /// # Errors
    /// When the URL is not http(s), or a `bestiary serve` does not answer `/v1/models`.
    pub async fn connect(
        url: &str,
        api_key: Option<String>,
        timeout: Duration,
        retries: usize,
        top_k: usize,
    ) -> Result<Self> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| BulkError::config(format!("--endpoint {url}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BulkError::config(format!(
                "--endpoint {url}: only http:// and https:// endpoints are supported"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| BulkError::config(format!("cannot set up the HTTP client: {e}")))?;
        let path = parsed.path().trim_end_matches('/');
        let (contract, base) = if path.ends_with("/invocations") {
            (Contract::SageMaker, url.to_owned())
        } else {
            let base = url
                .trim_end_matches('/')
                .trim_end_matches("/v1/classify")
                .to_owned();
            (Contract::Bestiary, base)
        };
        let mut client = Self {
            http,
            contract,
            classify_url: match contract {
                Contract::Bestiary => format!("{base}/v1/classify?top_k={top_k}"),
                Contract::SageMaker => base.clone(),
            },
            url: url.to_owned(),
            api_key,
            retries,
            top_k,
            identity: ModelIdentity {
                name: "endpoint".into(),
                version: url.to_owned(),
            },
        };
        if contract == Contract::Bestiary {
            let body = client
                .send(client.http.get(format!("{base}/v1/models")))
                .await?
                .map_err(|(status, text)| {
                    client.refused(format!("GET /v1/models answered {status}: {text}"))
                })?;
            let list: ModelList = serde_json::from_slice(&body)
                .map_err(|e| client.failed(format!("unreadable /v1/models answer: {e}")))?;
            let served = list
                .models
                .into_iter()
                .next()
                .ok_or_else(|| client.failed("the server has no model loaded".into()))?;
            client.identity = ModelIdentity {
                name: served.name,
                version: served.version,
            };
        }
        Ok(client)
    }

    /// The model version the endpoint serves (see [`Self::connect`]).
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// Sends one photo.
    ///
    /// # Errors
    /// When the endpoint fails after retries, refuses the request itself (authentication,
    /// unknown route), or answers something unreadable.
    pub async fn classify(&self, photo: Bytes) -> Result<EndpointAnswer> {
        let photo_bytes = photo.len();
        let request = self
            .http
            .post(&self.classify_url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-image")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(photo);
        let body = match self.send(request).await? {
            Ok(body) => body,
            Err((status, text)) => return self.rejection(status, &text, photo_bytes),
        };
        let unreadable = |e: serde_json::Error| self.failed(format!("unreadable answer: {e}"));
        match self.contract {
            Contract::Bestiary => {
                let response: NativeResponse = serde_json::from_slice(&body).map_err(unreadable)?;
                let prediction = response
                    .predictions
                    .into_iter()
                    .next()
                    .ok_or_else(|| self.failed("the answer has no prediction".into()))?;
                Ok(EndpointAnswer::Classified {
                    label: prediction.label,
                    score: prediction.score,
                    top_k: prediction.top_k,
                    unknown: prediction.unknown,
                    unknown_score: prediction.unknown_score,
                    model: Some(ModelIdentity {
                        name: prediction.model,
                        version: prediction.version,
                    }),
                    width: prediction.width,
                    height: prediction.height,
                })
            }
            Contract::SageMaker => {
                let invocation: Invocation = serde_json::from_slice(&body).map_err(unreadable)?;
                if invocation.prediction.len() != invocation.labels.len() {
                    return Err(self.failed(format!(
                        "{} probabilities for {} labels",
                        invocation.prediction.len(),
                        invocation.labels.len()
                    )));
                }
                let mut ranked: Vec<LabelScore> = invocation
                    .labels
                    .into_iter()
                    .zip(invocation.prediction)
                    .map(|(label, score)| LabelScore { label, score })
                    .collect();
                ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
                // An `unknown` label is none of the classes: its score is the best class's.
                let score = ranked
                    .iter()
                    .find(|s| s.label == invocation.predicted_label)
                    .or(ranked.first())
                    .map_or(0.0, |s| s.score);
                ranked.truncate(self.top_k);
                Ok(EndpointAnswer::Classified {
                    label: invocation.predicted_label,
                    score,
                    top_k: ranked,
                    unknown: invocation.unknown,
                    unknown_score: invocation.unknown_score,
                    model: None,
                    width: None,
                    height: None,
                })
            }
        }
    }

    /// A 4xx answer: a per-photo rejection (422 undecodable) or a failure of the whole run
    /// that retrying cannot mend (anything else: wrong key, wrong URL, wrong contract, a body
    /// limit below the photo's size).
    fn rejection(
        &self,
        status: StatusCode,
        text: &str,
        photo_bytes: usize,
    ) -> Result<EndpointAnswer> {
        let body: Option<ErrorBody> = serde_json::from_str(text).ok();
        let message = body
            .as_ref()
            .and_then(|b| b.error.clone())
            .unwrap_or_else(|| text.trim().to_owned());
        match status {
            StatusCode::UNPROCESSABLE_ENTITY => Ok(EndpointAnswer::Rejected {
                code: body
                    .as_ref()
                    .and_then(|b| b.reason.clone().or_else(|| b.error_type.clone()))
                    .unwrap_or_else(|| "rejected".into()),
                message,
            }),
            // The photo is fine; the endpoint's body limit is too small for it. Committing a
            // `too-large` result would pass a configuration problem off as a verdict.
            StatusCode::PAYLOAD_TOO_LARGE => Err(self.refused(format!(
                "answered 413 for a photo of {photo_bytes} bytes: its body limit is smaller \
                 (raise `bestiary serve --max-body-mb` there, or run without --endpoint): \
                 {message}"
            ))),
            other => Err(self.refused(format!("answered {other}: {message}"))),
        }
    }

    /// Sends `request` (with the API key), retrying throttling (429), server errors and
    /// transport failures with exponential backoff; a final 4xx comes back as `Err((status,
    /// body))` for the caller to judge.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<std::result::Result<Bytes, (StatusCode, String)>> {
        let request = match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let mut attempt = 0;
        loop {
            let this_try = request
                .try_clone()
                .expect("requests with in-memory bodies can be repeated");
            let reason = match this_try.send().await {
                Ok(response) if response.status().is_success() => {
                    return response
                        .bytes()
                        .await
                        .map(Ok)
                        .map_err(|e| self.failed(format!("reading the answer: {e}")));
                }
                Ok(response)
                    if response.status() == StatusCode::TOO_MANY_REQUESTS
                        || response.status() == StatusCode::REQUEST_TIMEOUT
                        || response.status().is_server_error() =>
                {
                    format!("answered {}", response.status())
                }
                Ok(response) => {
                    let status = response.status();
                    return Ok(Err((status, response.text().await.unwrap_or_default())));
                }
                Err(error) => format!("request failed: {error}"),
            };
            if attempt >= self.retries {
                return Err(self.failed(format!("{reason} (after {} attempts)", attempt + 1)));
            }
            attempt += 1;
            let backoff =
                Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5));
            tokio::time::sleep(backoff).await;
        }
    }

    fn failed(&self, reason: String) -> BulkError {
        BulkError::Endpoint {
            url: self.url.clone(),
            reason,
        }
    }

    fn refused(&self, reason: String) -> BulkError {
        BulkError::EndpointRefused {
            url: self.url.clone(),
            reason,
        }
    }
}
