//! The audit as a person reads it in a terminal: the cross-validated accuracy first, then the
//! findings, the per-class table and the suspects, most suspect first.

use std::fmt::Write as _;

use super::report::AuditReport;

/// The report, with at most `top` suspects in the table.
pub fn to_text(report: &AuditReport, top: usize) -> String {
    let s = &report.summary;
    let mut out = String::new();
    let percent = |v: f64| format!("{:.1}%", v * 100.0);
    let _ = writeln!(out, "Dataset audit of {}", report.dataset);
    let _ = writeln!(
        out,
        "Photos      {} listed, {} audited, {} bad",
        s.photos, s.audited, s.bad_files
    );
    let _ = writeln!(
        out,
        "Cross-validated accuracy  {}  ({}-fold, a new head per fold on frozen EfficientNet-Lite0 \
         features: the honest estimate for a frozen-head model of these photos)",
        percent(s.cross_validated_accuracy),
        s.folds
    );
    if let (Some(before), Some(after), Some(t)) = (s.ece_before, s.ece_after, s.temperature) {
        let _ = writeln!(
            out,
            "Calibration expected calibration error {} before, {} after temperature {t:.2}",
            percent(before),
            percent(after)
        );
    }
    let _ = writeln!(out, "Detector    {}", s.detector);
    let imbalance = &report.imbalance;
    let ratio = imbalance
        .max_min_ratio
        .map_or("a class has no photos".to_string(), |r| format!("{r:.1}"));
    let small = if imbalance.underrepresented.is_empty() {
        "none".to_string()
    } else {
        imbalance.underrepresented.join(", ")
    };
    let _ = writeln!(
        out,
        "Imbalance   largest/smallest class {ratio}, median {} photos; far below the median: {small}",
        imbalance.median
    );
    let near = s
        .near_duplicate_similarity
        .map_or(" (not searched: too many photos)".to_string(), |t| {
            format!(" (cosine ≥ {t:.2})")
        });
    let _ = writeln!(
        out,
        "Found       {} wrong labels, {} of none of the classes, {} leakage groups, {} exact and {} \
         near duplicate groups{near}, {} bad files, {} size outliers",
        s.label_issues,
        s.unknown,
        s.leakage_groups,
        s.exact_duplicate_groups,
        s.near_duplicate_groups,
        s.bad_files,
        s.size_outliers
    );
    let cached = if s.features_computed == 0 {
        " (all cached)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "Work        {} features computed{cached}, {} photos read, {:.1} s",
        s.features_computed, s.photos_read, s.seconds
    );

    let width = report
        .per_class
        .iter()
        .map(|c| c.class.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "\n  {:<width$}  photos  cv accuracy  wrong labels",
        "class"
    );
    for class in &report.per_class {
        let accuracy = class
            .cross_validated_accuracy
            .map_or("-".to_string(), percent);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>6}  {:>11}  {:>12}",
            class.class, class.photos, accuracy, class.label_issues
        );
    }

    if report.suspects.is_empty() {
        let _ = writeln!(out, "\nNo suspects.");
        return out;
    }
    let shown = report.suspects.len().min(top);
    let _ = writeln!(
        out,
        "\nSuspects, most suspect first ({shown} of {}; --json lists all):",
        report.suspects.len()
    );
    let key_width = report.suspects[..shown]
        .iter()
        .map(|s| s.key.chars().count())
        .max()
        .unwrap_or(3)
        .clamp(3, 48);
    let _ = writeln!(
        out,
        "  {:>3}  {:<19}  {:>5}  {:<key_width$}  {:<12}  {:<12}  detail",
        "#", "reason", "score", "key", "label", "suggested"
    );
    for (rank, suspect) in report.suspects[..shown].iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:>3}  {:<19}  {:>5.3}  {:<key_width$}  {:<12}  {:<12}  {}",
            rank + 1,
            suspect.reason.as_str(),
            suspect.score,
            suspect.key,
            suspect.label,
            suspect.suggested_label.as_deref().unwrap_or("-"),
            suspect.detail
        );
    }
    out
}
