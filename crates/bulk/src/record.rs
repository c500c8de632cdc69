//! One result per photo, and how results are written to and read back from JSON Lines and CSV
//! parts.

use serde::{Deserialize, Serialize};

use crate::config::OutputFormat;
use crate::error::{BulkError, Result};

/// A label and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

/// Why a photo got no label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    /// Stable identifier: the decoder's `empty`, `not-an-image`, `too-large`, `corrupt`, or
    /// `not-found` (the object vanished after it was listed), or what an endpoint said.
    pub code: String,
    pub message: String,
}

/// What a run says about one object. Every field is always present (null when not
/// applicable), so that the JSON Lines have one shape for tools that infer a schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// The key relative to the classified prefix.
    pub key: String,
    /// The object's full URL.
    pub url: String,
    /// The ETag the listing gave: which content of the key was classified.
    pub etag: Option<String>,
    pub size: u64,
    /// The most probable label, `uncertain` below `--min-score`, null for an error.
    pub label: Option<String>,
    /// The most probable label's probability.
    pub score: Option<f32>,
    /// Whether the model's detector found the photo none of its classes (then `label` is
    /// `unknown`); null for a model without one.
    #[serde(default)]
    pub unknown: Option<bool>,
    /// The detector's score: higher is more like the training photos.
    #[serde(default)]
    pub unknown_score: Option<f32>,
    /// The most probable labels, best first (the model's own ranking, even when `label` is
    /// `uncertain`).
    pub top_k: Vec<LabelScore>,
    pub model: String,
    pub model_version: String,
    /// The photo's size as decoded, when known.
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub error: Option<RecordError>,
    /// When it was classified (RFC 3339, UTC).
    pub classified_at: String,
}

impl ResultRecord {
    /// The label results are counted under: the label, or `error:<code>`.
    pub fn outcome(&self) -> Outcome<'_> {
        match (&self.label, &self.error) {
            (_, Some(error)) => Outcome::Error(&error.code),
            (Some(label), None) => Outcome::Label(label),
            (None, None) => Outcome::Error("unlabelled"),
        }
    }
}

/// A result, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    Label(&'a str),
    Error(&'a str),
}

/// The columns of CSV parts.
pub const CSV_HEADER: [&str; 16] = [
    "key",
    "url",
    "etag",
    "size",
    "label",
    "score",
    "top_k",
    "model",
    "model_version",
    "width",
    "height",
    "error_code",
    "error_message",
    "classified_at",
    "unknown",
    "unknown_score",
];

/// Appends `record` to `out` as one line of `format`; CSV's `top_k` is `label:score` pairs
/// separated by `;`.
pub fn encode(record: &ResultRecord, format: OutputFormat, out: &mut Vec<u8>) {
    match format {
        OutputFormat::Jsonl => {
            serde_json::to_writer(&mut *out, record).expect("records serialise");
            out.push(b'\n');
        }
        OutputFormat::Csv => {
            let top_k: Vec<String> = record
                .top_k
                .iter()
                .map(|s| format!("{}:{}", s.label, s.score))
                .collect();
            let optional = |value: Option<String>| value.unwrap_or_default();
            let row = [
                record.key.clone(),
                record.url.clone(),
                optional(record.etag.clone()),
                record.size.to_string(),
                optional(record.label.clone()),
                optional(record.score.map(|s| s.to_string())),
                top_k.join(";"),
                record.model.clone(),
                record.model_version.clone(),
                optional(record.width.map(|w| w.to_string())),
                optional(record.height.map(|h| h.to_string())),
                optional(record.error.as_ref().map(|e| e.code.clone())),
                optional(record.error.as_ref().map(|e| e.message.clone())),
                record.classified_at.clone(),
                optional(record.unknown.map(|u| u.to_string())),
                optional(record.unknown_score.map(|s| s.to_string())),
            ];
            write_csv_row(&row, out);
        }
    }
}

/// The header line a CSV part starts with; nothing for JSON Lines.
pub fn header(format: OutputFormat) -> Vec<u8> {
    let mut out = Vec::new();
    if format == OutputFormat::Csv {
        write_csv_row(&CSV_HEADER, &mut out);
    }
    out
}

fn write_csv_row<S: AsRef<[u8]>>(row: &[S], out: &mut Vec<u8>) {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(row).expect("writing to memory");
    writer.flush().expect("writing to memory");
}

/// The key and ETag of every result in a part, in order: what watch needs to know what it has
/// classified.
///
/// # Errors
/// When the part is not a part of `format`.
pub fn read_keys(
    bytes: &[u8],
    format: OutputFormat,
    url: &str,
) -> Result<Vec<(String, Option<String>)>> {
    let unreadable = |reason: String| BulkError::Output {
        url: url.to_owned(),
        reason,
    };
    match format {
        OutputFormat::Jsonl => {
            #[derive(Deserialize)]
            struct KeyAndEtag {
                key: String,
                etag: Option<String>,
            }
            bytes
                .split(|&b| b == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| {
                    serde_json::from_slice::<KeyAndEtag>(line)
                        .map(|r| (r.key, r.etag))
                        .map_err(|e| unreadable(format!("not a result line: {e}")))
                })
                .collect()
        }
        OutputFormat::Csv => {
            let mut reader = csv::Reader::from_reader(bytes);
            reader
                .records()
                .map(|row| {
                    let row = row.map_err(|e| unreadable(format!("not a result row: {e}")))?;
                    let key = row.get(0).unwrap_or_default().to_owned();
                    let etag = row.get(2).filter(|e| !e.is_empty()).map(str::to_owned);
                    Ok((key, etag))
                })
                .collect()
        }
    }
}

/// Now, as RFC 3339 UTC with seconds.
pub fn timestamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, error: bool) -> ResultRecord {
        ResultRecord {
            key: key.to_owned(),
            url: format!("s3://b/{key}"),
            etag: Some("\"abc\"".to_owned()),
            size: 12,
            label: (!error).then(|| "cat".to_owned()),
            score: (!error).then_some(0.75),
            unknown: (!error).then_some(false),
            unknown_score: (!error).then_some(4.5),
            top_k: if error {
                vec![]
            } else {
                vec![
                    LabelScore {
                        label: "cat".into(),
                        score: 0.75,
                    },
                    LabelScore {
                        label: "dog".into(),
                        score: 0.25,
                    },
                ]
            },
            model: "animals".into(),
            model_version: "v1".into(),
            width: (!error).then_some(64),
            height: (!error).then_some(48),
            error: error.then(|| RecordError {
                code: "corrupt".into(),
                message: "truncated, \"really\"".into(),
            }),
            classified_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn json_lines_round_trip_with_every_field() {
        let mut out = Vec::new();
        encode(&record("a, b.jpg", false), OutputFormat::Jsonl, &mut out);
        encode(&record("c.jpg", true), OutputFormat::Jsonl, &mut out);
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["label"], "cat");
        assert!(lines[1]["label"].is_null() && lines[1]["error"]["code"] == "corrupt");
        assert_eq!(
            lines[0].as_object().unwrap().len(),
            lines[1].as_object().unwrap().len()
        );
        let back: ResultRecord = serde_json::from_value(lines[1].clone()).unwrap();
        assert_eq!(back, record("c.jpg", true));
        assert_eq!(
            read_keys(&out, OutputFormat::Jsonl, "p").unwrap(),
            [
                ("a, b.jpg".to_owned(), Some("\"abc\"".to_owned())),
                ("c.jpg".to_owned(), Some("\"abc\"".to_owned()))
            ]
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut out = header(OutputFormat::Csv);
        encode(&record("a, b.jpg", false), OutputFormat::Csv, &mut out);
        encode(&record("c.jpg", true), OutputFormat::Csv, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with("key,url,etag,size,label,score,top_k,"),
            "{text}"
        );
        assert!(text.contains("cat:0.75;dog:0.25"), "{text}");
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(&rows[0][0], "a, b.jpg");
        assert_eq!(&rows[1][11], "corrupt");
        assert_eq!(&rows[1][12], "truncated, \"really\"");
        assert_eq!(read_keys(&out, OutputFormat::Csv, "p").unwrap().len(), 2);
    }
}
