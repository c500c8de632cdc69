//! `bestiary dataset inspect`: the dataset report, as a table or as JSON.

use std::process::ExitCode;

use bestiary_dataset::decode::DecodeLimits;
use bestiary_dataset::inspect as inspect_dataset;

use crate::args::{GlobalArgs, InspectArgs};
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
