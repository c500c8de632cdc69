//! `bestiary dataset inspect` and `bestiary dataset audit`: the dataset report and the audit,
//! as a table or as JSON.

use std::process::ExitCode;

use bestiary_dataset::ImageCache;
use bestiary_dataset::decode::DecodeLimits;
use bestiary_dataset::inspect as inspect_dataset;
use bestiary_storage::Store;
use bestiary_train::audit::label_issues::Ranking;
use bestiary_train::audit::report_html::to_html;
use bestiary_train::audit::report_text::to_text;
use bestiary_train::audit::{AuditConfig, audit as run_audit, default_work_dir};

use crate::args::{AuditArgs, GlobalArgs, InspectArgs, RankingArg};
use crate::progress;

pub async fn inspect(global: &GlobalArgs, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let hidden = global.quiet || args.json;
    let dataset = super::open_dataset(global, &args.data, &args.split, hidden).await?;

    let reading = progress::bar(
        Some((dataset.train.len() + dataset.validation.len()) as u64),
        "reading",
        hidden,
    );
    let limits = DecodeLimits {
        max_pixels: (args.max_megapixels * 1e6) as u64,
        ..DecodeLimits::default()
    };
    let report = inspect_dataset(&dataset, args.concurrency, &limits, &|done, _| {
        reading.set_position(done)
    })
    .await;
    reading.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

/// `bestiary dataset audit`: the audit as a table, JSON, and an HTML page.
pub async fn audit(global: &GlobalArgs, args: AuditArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.folds >= 2, "--folds must be at least 2");
    anyhow::ensure!(args.epochs > 0, "--epochs must be positive");
    anyhow::ensure!(
        args.lr.is_finite() && args.lr > 0.0,
        "--lr must be a positive number"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.near_duplicate_similarity),
        "--near-duplicate-similarity is a cosine similarity between 0 and 1"
    );
    let options = global.store_options();
    let hidden = global.quiet || args.json;
    let dataset = super::open_dataset(global, &args.data, &args.split, hidden).await?;

    let mut config = AuditConfig::new(args.seed);
    config.folds = args.folds;
    config.head.epochs = args.epochs;
    config.head.learning_rate = args.lr;
    config.head.pretrained = args.pretrained.clone();
    config.model = args.model.clone();
    config.near_duplicate_similarity = args.near_duplicate_similarity;
    config.concurrency = args.concurrency;
    config.ranking = match args.ranking {
        RankingArg::SelfConfidence => Ranking::SelfConfidence,
        RankingArg::NormalizedMargin => Ranking::NormalizedMargin,
    };
    let work_url = match &args.cache {
        Some(url) => url.clone(),
        None => default_work_dir().to_string_lossy().into_owned(),
    };
    let work = Store::open(&work_url, &options)?;
    let image_cache = ImageCache::new(ImageCache::default_dir())?;

    let spinner = progress::bar(None, "auditing", hidden);
    let report = run_audit(&config, &dataset, &work, &options, Some(image_cache)).await?;
    spinner.finish_and_clear();

    let json = serde_json::to_string_pretty(&report)?;
    if args.html.is_some() || args.out.is_some() {
        let html = to_html(&report, &dataset).await;
        if let Some(url) = &args.html {
            let (store, key) = Store::open_object(url, &options)?;
            store.put(&key, html.clone().into_bytes()).await?;
        }
        if let Some(prefix) = &args.out {
            let store = Store::open(prefix, &options)?;
            store.put("audit.json", json.clone().into_bytes()).await?;
            store.put("audit.html", html.into_bytes()).await?;
        }
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", to_text(&report, args.top));
    }
    Ok(ExitCode::SUCCESS)
}
