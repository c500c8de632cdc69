//! The audit as one self-contained HTML page: the summary, the per-class table, and every
//! suspect and duplicate group with a small embedded thumbnail (base64 JPEG), so the page can be
//! mailed or stored in a bucket and opened anywhere.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use bestiary_dataset::{Dataset, Sample};
use futures::StreamExt;

use super::photos::thumbnail;
use super::report::AuditReport;

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 96;
/// Photos given a thumbnail at most (the first suspects, then duplicate groups): about 4 KB
/// each, so the page stays under a few megabytes.
pub const MAX_THUMBNAILS: usize = 400;

/// The page, reading the thumbnails' photos from `dataset`.
pub async fn to_html(report: &AuditReport, dataset: &Dataset) -> String {
    let by_key: HashMap<&str, &Sample> = dataset
        .train
        .iter()
        .chain(&dataset.validation)
        .map(|s| (s.id.as_str(), s))
        .collect();
    let mut wanted: Vec<&str> = Vec::new();
    let mut seen = BTreeSet::new();
    let keys = report.suspects.iter().map(|s| s.key.as_str()).chain(
        report
            .duplicate_groups
            .iter()
            .flat_map(|g| g.photos.iter().map(|p| p.key.as_str())),
    );
    for key in keys {
        if wanted.len() < MAX_THUMBNAILS && seen.insert(key) {
            wanted.push(key);
        }
    }
    let thumbnails: HashMap<&str, String> = futures::stream::iter(wanted)
        .map(|key| {
            let sample = by_key.get(key).copied();
            async move {
                let image = thumbnail(dataset, sample?, THUMBNAIL_SIDE).await?;
                Some((key, image))
            }
        })
        .buffer_unordered(16)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    render(report, &thumbnails)
}

/// The page from the report and the thumbnails found (by key).
pub fn render(report: &AuditReport, thumbnails: &HashMap<&str, String>) -> String {
    let s = &report.summary;
    let percent = |v: f64| format!("{:.1}%", v * 100.0);
    let image = |key: &str| match thumbnails.get(key) {
        Some(data) => format!("<img src=\"data:image/jpeg;base64,{data}\" alt=\"\">"),
        None => "<span class=\"none\">no preview</span>".to_string(),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Dataset audit: {title}</title><style>{STYLE}</style></head><body>\
         <h1>Dataset audit</h1><p class=\"url\">{title}</p>",
        title = escape(&report.dataset)
    );
    let _ = write!(
        out,
        "<p class=\"headline\">Cross-validated accuracy <strong>{}</strong> \
         <span>({}-fold out-of-fold heads on frozen EfficientNet-Lite0 features, {} photos: the \
         honest estimate for a frozen-head model)</span></p><table class=\"summary\">",
        percent(s.cross_validated_accuracy),
        s.folds,
        s.audited
    );
    let mut row = |name: &str, value: String| {
        let _ = write!(out, "<tr><th>{name}</th><td>{}</td></tr>", escape(&value));
    };
    row(
        "Photos",
        format!(
            "{} listed, {} audited, {} bad",
            s.photos, s.audited, s.bad_files
        ),
    );
    if let (Some(before), Some(after), Some(t)) = (s.ece_before, s.ece_after, s.temperature) {
        row(
            "Calibration error",
            format!(
                "{} before, {} after temperature {t:.2}",
                percent(before),
                percent(after)
            ),
        );
    }
    row("Detector", s.detector.clone());
    row(
        "Found",
        format!(
            "{} wrong labels, {} of none of the classes, {} leakage groups, {} exact and {} near \
             duplicate groups, {} size outliers",
            s.label_issues,
            s.unknown,
            s.leakage_groups,
            s.exact_duplicate_groups,
            s.near_duplicate_groups,
            s.size_outliers
        ),
    );
    let imbalance = &report.imbalance;
    row(
        "Imbalance",
        format!(
            "largest/smallest class {}, median {} photos; far below the median: {}",
            imbalance
                .max_min_ratio
                .map_or("-".to_string(), |r| format!("{r:.1}")),
            imbalance.median,
            if imbalance.underrepresented.is_empty() {
                "none".to_string()
            } else {
                imbalance.underrepresented.join(", ")
            }
        ),
    );
    out.push_str("</table><h2>Classes</h2><table><tr><th>class</th><th>photos</th><th>cross-validated accuracy</th><th>wrong labels</th></tr>");
    for class in &report.per_class {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&class.class),
            class.photos,
            class
                .cross_validated_accuracy
                .map_or("-".to_string(), percent),
            class.label_issues
        );
    }
    let _ = write!(
        out,
        "</table><h2>Suspects ({})</h2><table class=\"suspects\"><tr><th>#</th><th></th>\
         <th>reason</th><th>score</th><th>photo</th><th>label</th><th>suggested</th><th>detail</th></tr>",
        report.suspects.len()
    );
    for (rank, suspect) in report.suspects.iter().enumerate() {
        let _ = write!(
            out,
            "<tr class=\"{reason}\"><td>{}</td><td>{}</td><td>{reason}</td><td>{:.3}</td>\
             <td><a href=\"{url}\">{}</a><br><small>{}</small></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            rank + 1,
            image(&suspect.key),
            suspect.score,
            escape(&suspect.key),
            suspect.split,
            escape(&suspect.label),
            escape(suspect.suggested_label.as_deref().unwrap_or("")),
            escape(&suspect.detail),
            reason = suspect.reason.as_str(),
            url = escape(&suspect.url),
        );
    }
    let _ = write!(
        out,
        "</table><h2>Duplicate groups ({})</h2>",
        report.duplicate_groups.len()
    );
    for group in &report.duplicate_groups {
        let kind = match group.kind {
            super::duplicates::DuplicateKind::Exact => "identical bytes",
            super::duplicates::DuplicateKind::Near => "near duplicates",
        };
        let leak = if group.leakage {
            " <strong>(leakage: train and validation)</strong>"
        } else {
            ""
        };
        let _ = write!(out, "<div class=\"group\"><p>{kind}{leak}</p>");
        for member in &group.photos {
            let _ = write!(
                out,
                "<figure>{}<figcaption>{}<br>{} · {} · {:.3}</figcaption></figure>",
                image(&member.key),
                escape(&member.key),
                escape(&member.label),
                member.split,
                member.similarity
            );
        }
        out.push_str("</div>");
    }
    out.push_str("</body></html>\n");
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
    .url{color:#666}.headline{font-size:1.4em}.headline span{font-size:.6em;color:#666}\
    table{border-collapse:collapse;margin:1em 0}td,th{border-bottom:1px solid #ddd;padding:4px 8px;\
    text-align:left;vertical-align:top}img{max-width:96px;max-height:96px}.none{color:#999}\
    tr.wrong-label td:nth-child(3){color:#b00}tr.leakage td:nth-child(3){color:#a50}\
    .group{border:1px solid #ddd;padding:.5em;margin:.5em 0}figure{display:inline-block;margin:4px}\
    figcaption{font-size:.8em}";

/// `text` with the HTML special characters escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
