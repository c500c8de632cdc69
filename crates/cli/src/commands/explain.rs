//! `bestiary explain`: where a model looked in one photo for its predicted (or a given) class,
//! as a class activation grid on stdout and a heat map over the photo in a PNG.

use std::fmt::Write as _;
use std::process::ExitCode;

use bestiary_dataset::decode::DecodeLimits;
use bestiary_engine::{EngineOptions, PhotoExplanation, builtin};
use bestiary_storage::Store;
use serde::Serialize;

use crate::args::{ExplainArgs, GlobalArgs};

/// `--json`: the fields of `POST /v1/explain`, with the overlay's location instead of its bytes.
#[derive(Serialize)]
struct ExplainOutput<'a> {
    model: &'a str,
    version: &'a str,
    label: &'a str,
    score: f32,
    predicted_label: &'a str,
    grid: &'a [f32],
    grid_height: usize,
    grid_width: usize,
    /// Where the overlay was written, when `--out` was given.
    overlay: Option<&'a str>,
    overlay_width: u32,
    overlay_height: u32,
    crop: [f64; 4],
    width: u32,
    height: u32,
}

pub async fn explain(global: &GlobalArgs, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let store_options = global.store_options();
    let (store, key) = Store::open_object(&args.photo, &store_options)?;
    let bytes = store.get(&key).await?;
    // One photo: every core for its inference.
    let model = builtin::load_model(
        Some(args.model.as_str()),
        args.engine,
        &EngineOptions::default(),
        &store_options,
    )
    .await?;
    let limits = DecodeLimits {
        max_pixels: (args.max_megapixels * 1e6) as u64,
        ..DecodeLimits::default()
    };
    let preprocessor = model.preprocessor(limits);
    let label = args.label.clone();
    let explaining = model.clone();
    let explained = tokio::task::spawn_blocking(move || {
        explaining.explain_photo(&preprocessor, &bytes, label.as_deref())
    })
    .await?
    .map_err(|e| anyhow::anyhow!("{}: {e}", args.photo))?;
    let written = match &args.out {
        Some(out) => {
            let (store, key) = Store::open_object(out, &store_options)?;
            store.put(&key, explained.overlay_png.clone()).await?;
            Some(store.url_of(&key))
        }
        None => None,
    };
    let metadata = &model.metadata;
    if args.json {
        let explanation = &explained.explanation;
        let output = ExplainOutput {
            model: &metadata.name,
            version: &metadata.version,
            label: &explanation.label,
            score: explanation.score,
            predicted_label: &explanation.prediction.label,
            grid: &explanation.grid,
            grid_height: explanation.grid_height,
            grid_width: explanation.grid_width,
            overlay: written.as_deref(),
            overlay_width: explained.overlay.width(),
            overlay_height: explained.overlay.height(),
            crop: explained.crop,
            width: explained.info.width,
            height: explained.info.height,
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print!(
            "{}",
            describe(
                &metadata.name,
                &metadata.version,
                &explained,
                written.as_deref()
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The explanation for people: the class, the grid with the strongest cell marked, and where
/// the picture went.
fn describe(
    model: &str,
    version: &str,
    explained: &PhotoExplanation,
    written: Option<&str>,
) -> String {
    let explanation = &explained.explanation;
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "{model} {version}: {} {:.3} (predicted: {})",
        explanation.label, explanation.score, explanation.prediction.label
    );
    let _ = writeln!(
        text,
        "class activation of {} over the centre square the model saw ({}×{} cells, logit units; their mean is the logit):",
        explanation.label, explanation.grid_height, explanation.grid_width
    );
    let strongest = explanation
        .grid
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(index, _)| index);
    for (row_index, row) in explanation
        .grid
        .chunks(explanation.grid_width.max(1))
        .enumerate()
    {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(column, value)| {
                let mark = if Some(row_index * explanation.grid_width + column) == strongest {
                    '*'
                } else {
                    ' '
                };
                format!("{value:7.2}{mark}")
            })
            .collect();
        let _ = writeln!(text, "  {}", cells.join(""));
    }
    match written {
        Some(url) => {
            let _ = writeln!(
                text,
                "heat map over the photo ({}×{}) written to {url}",
                explained.overlay.width(),
                explained.overlay.height()
            );
        }
        None => {
            let _ = writeln!(
                text,
                "(give --out overlay.png for the heat map over the photo)"
            );
        }
    }
    text
}
