//! `bestiary eval`: evaluates a stored model on a dataset URL and prints (or writes) the result.

use std::fmt::Write;
use std::process::ExitCode;

use bestiary_dataset::ImageCache;
use bestiary_storage::Store;
use bestiary_train::eval::training_history;
use bestiary_train::report::render_html;
use bestiary_train::{EvalReport, EvalSplit, evaluate};

use crate::args::{EvalArgs, EvalSplitArg, GlobalArgs};
use crate::progress;

pub async fn eval(global: &GlobalArgs, args: EvalArgs) -> anyhow::Result<ExitCode> {
    let hidden = global.quiet || args.json;
    let dataset = super::open_dataset(global, &args.data, &args.split, hidden).await?;
    let which = match args.which {
        EvalSplitArg::All => EvalSplit::All,
        EvalSplitArg::Validation => EvalSplit::Validation,
    };
    // The cache only saves time; evaluation works without one.
    let cache = ImageCache::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(ImageCache::default_dir),
    )
    .ok();
    let store_options = global.store_options();
    let spinner = progress::bar(None, "evaluating", hidden);
    let report = evaluate(&args.model, &dataset, which, &store_options, cache).await?;
    spinner.finish_and_clear();

    if let Some(target) = &args.report {
        let history = training_history(&args.model, &store_options).await?;
        let (store, key) = Store::open_object(target, &store_options)?;
        store.put(&key, render_html(&report, &history)).await?;
        if !hidden {
            eprintln!("report written to {}", store.url_of(&key));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The evaluation as aligned text tables.
fn summary(report: &EvalReport) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} {} on {}",
        report.model, report.version, report.dataset
    );
    let _ = writeln!(
        text,
        "Photos    {} ({} bad)",
        report.images,
        report.bad_files.len()
    );
    let _ = writeln!(text, "Top-1     {:.1}%", report.top1 * 100.0);
    let _ = writeln!(text, "Top-{}     {:.1}%", report.top_k, report.top5 * 100.0);
    let _ = writeln!(text, "Macro F1  {:.3}", report.macro_f1);

    let width = report
        .classes
        .iter()
        .map(|c| c.name.chars().count())
        .chain([5])
        .max()
        .unwrap_or(5);
    let _ = writeln!(
        text,
        "\n  {:<width$}  precision  recall     F1  photos",
        "class"
    );
    for class in &report.classes {
        let _ = writeln!(
            text,
            "  {:<width$}  {:>8.1}%  {:>5.1}%  {:.3}  {:>6}",
            class.name,
            class.precision * 100.0,
            class.recall * 100.0,
            class.f1,
            class.support
        );
    }

    // Columns are numbered (class names would make the matrix unreadably wide).
    let cell = report
        .confusion
        .iter()
        .flatten()
        .map(|c| c.to_string().len())
        .chain([report.classes.len().to_string().len()])
        .max()
        .unwrap_or(1);
    let _ = writeln!(
        text,
        "\nConfusion matrix (rows: true class, columns: predicted):"
    );
    let _ = write!(text, "  {:<width$}    ", "");
    for column in 1..=report.classes.len() {
        let _ = write!(text, " {column:>cell$}");
    }
    text.push('\n');
    for (row, (class, counts)) in report.classes.iter().zip(&report.confusion).enumerate() {
        let _ = write!(text, "  {:<width$} {:>2} ", class.name, row + 1);
        for count in counts {
            let _ = write!(text, " {count:>cell$}");
        }
        text.push('\n');
    }

    if !report.worst_mistakes.is_empty() {
        let _ = writeln!(text, "\nMost confident mistakes:");
        for mistake in &report.worst_mistakes {
            let _ = writeln!(
                text,
                "  {}  {} taken for {} ({:.1}%)",
                mistake.id,
                mistake.true_label,
                mistake.predicted_label,
                mistake.score * 100.0
            );
        }
    }
    if !report.bad_files.is_empty() {
        let _ = writeln!(text, "\nBad files ({}):", report.bad_files.len());
        for file in &report.bad_files {
            let _ = writeln!(text, "  {}  [{}] {}", file.id, file.code, file.reason);
        }
    }
    text
}
