//! `bestiary eval`: evaluates a stored model on a dataset URL and prints (or writes) the result.

use std::fmt::Write;
use std::process::ExitCode;

use bestiary_dataset::{Dataset, ImageCache};
use bestiary_engine::int8::Precision;
use bestiary_engine::{EngineKind, EngineOptions, builtin};
use bestiary_storage::{Store, StoreOptions};
use bestiary_train::eval::{eval_loader, eval_samples, predict_with, training_history};
use bestiary_train::report::render_html;
use bestiary_train::{EvalReport, EvalSplit, TrainError, evaluate};

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
    let builtin = builtin::is_builtin(&args.model);
    let engine = match args.engine {
        Some(engine) => Some(engine),
        None if args.precision == Precision::Int8 => Some(EngineKind::Auto),
        None if builtin || !has_burn_weights(&args.model, &store_options).await => {
            Some(EngineKind::Auto)
        }
        None => None,
    };
    let report = match engine {
        Some(engine) => {
            let options = EngineOptions {
                precision: args.precision,
                ..EngineOptions::default()
            };
            evaluate_in_engine(
                &args.model,
                engine,
                &options,
                &dataset,
                which,
                &store_options,
                cache,
            )
            .await?
        }
        None => evaluate(&args.model, &dataset, which, &store_options, cache).await?,
    };
    spinner.finish_and_clear();

    if let Some(target) = &args.report {
        let history = if builtin {
            Vec::new()
        } else {
            training_history(&args.model, &store_options).await?
        };
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

/// Whether the model's version folder has the burn weights the burn evaluation needs.
async fn has_burn_weights(model_url: &str, store: &StoreOptions) -> bool {
    match bestiary_model::resolve(model_url, store).await {
        Ok((repository, name, version)) => repository
            .store()
            .exists(&format!("{name}/{version}/weights.safetensors"))
            .await
            .unwrap_or(true),
        // Let the burn path report the problem with its own message.
        Err(_) => true,
    }
}

/// Evaluates the model's ONNX graph in an inference engine, with the same photos, transform
/// and report as the burn evaluation.
async fn evaluate_in_engine(
    model_url: &str,
    engine: EngineKind,
    options: &EngineOptions,
    dataset: &Dataset,
    which: EvalSplit,
    store: &StoreOptions,
    cache: Option<ImageCache>,
) -> anyhow::Result<EvalReport> {
    let model = builtin::load_model(Some(model_url), engine, options, store).await?;
    let samples = eval_samples(&model.metadata, dataset, which)?;
    let loader = eval_loader(&model.metadata, samples, dataset.stores.clone(), cache);
    let classes = model.metadata.classes.len();
    let (task_loader, task_model) = (loader.clone(), model.clone());
    let predictions = tokio::task::spawn_blocking(move || {
        predict_with(&task_loader, |images, batch, _| {
            let logits = task_model
                .engine
                .infer(images, batch)
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            debug_assert_eq!(logits.len(), batch * classes);
            Ok(logits)
        })
    })
    .await??;
    Ok(EvalReport::from_predictions(
        &model.metadata.name,
        &model.metadata.version,
        &dataset.url,
        &model.metadata.classes,
        &predictions,
        loader.bad_files(),
        model.metadata.calibration.as_ref(),
    ))
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
    let figures = &report.calibration;
    let _ = match (figures.temperature, figures.ece_calibrated) {
        (Some(t), Some(ece)) => writeln!(
            text,
            "ECE       {:.3} plain, {ece:.3} at temperature {t:.3}",
            figures.ece_uncalibrated
        ),
        _ => writeln!(
            text,
            "ECE       {:.3} (no fitted temperature)",
            figures.ece_uncalibrated
        ),
    };
    if let Some(rejected) = figures.rejected_as_unknown {
        let _ = writeln!(text, "Unknown   {:.1}% rejected", rejected * 100.0);
    }

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
