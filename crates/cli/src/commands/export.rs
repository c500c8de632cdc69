//! `bestiary export`: writes a stored model version's network as ONNX again, optionally with
//! float16 weights, as a serving bundle under another root, or as int8 (see `int8.rs`).

use std::process::ExitCode;

use bestiary_model::ModelRepository;
use bestiary_model::onnx::describe;
use bestiary_model::onnx::fp16::with_fp16_weights;
use bestiary_networks::stored::StoredModel;
use bestiary_storage::Store;
use bestiary_train::export::export_onnx;

use crate::args::{ExportArgs, GlobalArgs};

pub async fn export(global: &GlobalArgs, args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.int8 {
        return super::int8::export(global, args).await;
    }
    let options = global.store_options();
    let stored = StoredModel::load(&args.model, &options).await?;
    let mut onnx = export_onnx(&stored.inference_network()?, &stored.metadata)?;
    if args.fp16 {
        let full = onnx.len();
        let (half, summary) = with_fp16_weights(&onnx)?;
        onnx = half;
        eprintln!(
            "float16 weights: {} tensors converted, {} kept as float32; {full} → {} bytes",
            summary.converted,
            summary.kept,
            onnx.len()
        );
    }
    let file_name = if args.fp16 && args.bundle.is_none() {
        "model.fp16.onnx"
    } else {
        "model.onnx"
    };
    let destination = if let Some(root) = &args.bundle {
        let repository = ModelRepository::open(root, &options)?;
        let mut writer = repository.begin_copy(&stored.name, &stored.version).await?;
        writer.put("model.onnx", onnx.clone()).await?;
        let url = writer.url();
        writer.commit(stored.metadata.clone()).await?;
        url
    } else if let Some(url) = &args.to {
        let (store, key) = Store::open_object(url, &options)?;
        store.put(&key, onnx.clone()).await?;
        store.url_of(&key)
    } else {
        let folder = stored
            .repository
            .store()
            .child(&format!("{}/{}", stored.name, stored.version))?;
        folder.put(file_name, onnx.clone()).await?;
        folder.url_of(file_name)
    };
    if args.describe {
        println!("{}", describe(&onnx)?);
    }
    println!(
        "{} {} → {destination} ({} bytes)",
        stored.name,
        stored.version,
        onnx.len()
    );
    Ok(ExitCode::SUCCESS)
}
