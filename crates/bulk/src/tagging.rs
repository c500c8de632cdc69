//! S3 object tags on photos that already exist (`--tag`).
//!
//! object_store only tags objects while writing them, so this sends S3's `PutObjectTagging`
//! (and `GetObjectTagging`, to keep an object's other tags) itself, signed by object_store's
//! public SigV4 signer with the credentials object_store resolves from the environment or the
//! instance, task or web-identity role. Static keys in `~/.aws/credentials` profiles, which
//! bestiary-storage reads for its own requests, are not consulted here: set `AWS_*` variables
//! or use a role when tagging.

use std::time::Duration;

use base64::Engine as _;
use bestiary_storage::{StoreOptions, StoreUrl};
use bytes::Bytes;
use http::Method;
use md5::Digest as _;
use object_store::aws::{AmazonS3, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::HttpRequestBody;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::error::{BulkError, Result};

/// What S3 leaves unencoded in a key's path: unreserved characters and `/`.
const KEY_ENCODING: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
const ATTEMPTS: u32 = 4;

/// Writes one tag on objects below an S3 prefix, keeping their other tags.
#[derive(Debug)]
pub struct Tagger {
    http: reqwest::Client,
    s3: AmazonS3,
    region: String,
    /// `https://bucket.s3.region.amazonaws.com` or, with a custom endpoint, `endpoint/bucket`.
    bucket_url: String,
    /// The store's prefix inside the bucket, with a trailing `/` when not empty.
    prefix: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tagging {
    #[serde(default)]
    tag_set: TagSet,
}

#[derive(Debug, Default, Deserialize)]
struct TagSet {
    #[serde(rename = "Tag", default)]
    tags: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    key: String,
    #[serde(default)]
    value: String,
}

impl Tagger {
    /// A tagger writing the tag `key` on objects below `input`, which must be an `s3://` URL.
    ///
    /// # Errors
    /// For other stores (object tags are an S3 feature) and when the S3 client cannot be set
    /// up.
    pub fn new(input: &StoreUrl, options: &StoreOptions, key: &str) -> Result<Self> {
        let StoreUrl::S3 { bucket, prefix } = input else {
            return Err(BulkError::config(format!(
                "--tag writes S3 object tags, but {} is not an s3:// prefix",
                input.display()
            )));
        };
        if key.is_empty() || key.len() > 128 {
            return Err(BulkError::config("--tag-key must have 1 to 128 characters"));
        }
        let builder = bestiary_storage::s3_builder(bucket, options);
        let endpoint = bestiary_storage::s3_endpoint(options);
        let region = builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".to_owned());
        let builder = builder.with_region(&region);
        let s3 = builder.build().map_err(|e| BulkError::Tagging {
            url: input.display(),
            reason: format!("cannot set up the S3 client: {e}"),
        })?;
        let bucket_url = match &endpoint {
            // Self-hosted servers are addressed by path, as bestiary-storage does.
            Some(endpoint) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BulkError::Tagging {
                url: input.display(),
                reason: format!("cannot set up the HTTP client: {e}"),
            })?;
        let prefix = prefix.trim_matches('/');
        Ok(Self {
            http,
            s3,
            region,
            bucket_url,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            key: key.to_owned(),
        })
    }

    /// Sets the tag on `key` (relative to the prefix) to `value`, keeping the object's other
    /// tags.
    ///
    /// # Errors
    /// When S3 refuses (no permission, more than 10 tags, an invalid value) or cannot be
    /// reached after retries.
    pub async fn tag(&self, key: &str, value: &str) -> Result<()> {
        let mut tags = self.tags(key).await?;
        match tags.iter_mut().find(|(k, _)| *k == self.key) {
            Some((_, existing)) if existing == value => return Ok(()),
            Some((_, existing)) => *existing = value.to_owned(),
            None => tags.push((self.key.clone(), value.to_owned())),
        }
        let mut body = String::from("<Tagging><TagSet>");
        for (k, v) in &tags {
            body.push_str(&format!(
                "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
                quick_xml::escape::escape(k.as_str()),
                quick_xml::escape::escape(v.as_str())
            ));
        }
        body.push_str("</TagSet></Tagging>");
        self.send(Method::PUT, key, Bytes::from(body)).await?;
        Ok(())
    }

    /// The tags of `key`, in S3's order.
    ///
    /// # Errors
    /// As [`Self::tag`].
    pub async fn tags(&self, key: &str) -> Result<Vec<(String, String)>> {
        let body = self.send(Method::GET, key, Bytes::new()).await?;
        let text = String::from_utf8_lossy(&body);
        let tagging: Tagging = quick_xml::de::from_str(&text).map_err(|e| BulkError::Tagging {
            url: self.object_url(key),
            reason: format!("unreadable GetObjectTagging answer: {e}"),
        })?;
        Ok(tagging
            .tag_set
            .tags
            .into_iter()
            .map(|t| (t.key, t.value))
            .collect())
    }

    fn object_url(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.bucket_url,
            utf8_percent_encode(&format!("{}{key}", self.prefix), KEY_ENCODING)
        )
    }

    /// Sends a signed `?tagging` request, retrying throttling, server errors and transport
    /// failures with backoff.
    async fn send(&self, method: Method, key: &str, body: Bytes) -> Result<Bytes> {
        let url = format!("{}?tagging", self.object_url(key));
        let failed = |reason: String| BulkError::Tagging {
            url: self.object_url(key),
            reason,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let credential = self
                .s3
                .credentials()
                .get_credential()
                .await
                .map_err(|e| failed(format!("no AWS credentials: {e}")))?;
            let mut request = http::Request::builder().method(method.clone()).uri(&url);
            if !body.is_empty() {
                let md5 = md5::Md5::digest(&body);
                request = request
                    .header(
                        "content-md5",
                        base64::engine::general_purpose::STANDARD.encode(md5),
                    )
                    .header("content-type", "application/xml");
            }
            let mut request = request
                .body(HttpRequestBody::from(body.clone()))
                .map_err(|e| failed(e.to_string()))?;
            AwsAuthorizer::new(&credential, "s3", &self.region)
                .try_authorize(&mut request, None)
                .map_err(|e| failed(format!("cannot sign the request: {e}")))?;
            let response = self
                .http
                .request(method.clone(), &url)
                .headers(request.headers().clone())
                .body(body.clone())
                .send()
                .await;
            let retry_reason = match response {
                Ok(response) if response.status().is_success() => {
                    return response
                        .bytes()
                        .await
                        .map_err(|e| failed(format!("reading the answer: {e}")));
                }
                Ok(response)
                    if response.status().is_server_error()
                        || response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
                {
                    format!("S3 answered {}", response.status())
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Err(failed(format!("S3 answered {status}: {}", text.trim())));
                }
                Err(error) => format!("request failed: {error}"),
            };
            if attempt >= ATTEMPTS {
                return Err(failed(format!("{retry_reason} ({attempt} attempts)")));
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagging_needs_an_s3_prefix() {
        let local = bestiary_storage::parse_store_url("/tmp/photos").unwrap();
        let error = Tagger::new(&local, &StoreOptions::default(), "label").unwrap_err();
        assert!(error.to_string().contains("not an s3:// prefix"), "{error}");
    }

    #[test]
    fn keys_are_encoded_as_s3_signs_them() {
        let url = bestiary_storage::parse_store_url("s3://bucket/in box").unwrap();
        let options = StoreOptions {
            s3_endpoint: Some("http://127.0.0.1:9".into()),
            s3_credentials: Some(("k".into(), "s".into())),
            ..StoreOptions::default()
        };
        let tagger = Tagger::new(&url, &options, "label").unwrap();
        assert_eq!(
            tagger.object_url("cats/a b+c~.jpg"),
            "http://127.0.0.1:9/bucket/in%20box/cats/a%20b%2Bc~.jpg"
        );
    }

    #[test]
    fn tag_sets_parse() {
        let text = "<?xml version=\"1.0\"?><Tagging xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><TagSet><Tag><Key>a</Key><Value>1</Value></Tag><Tag><Key>b</Key><Value></Value></Tag></TagSet></Tagging>";
        let tagging: Tagging = quick_xml::de::from_str(text).unwrap();
        assert_eq!(tagging.tag_set.tags.len(), 2);
        let empty: Tagging = quick_xml::de::from_str("<Tagging><TagSet/></Tagging>").unwrap();
        assert!(empty.tag_set.tags.is_empty());
    }
}
