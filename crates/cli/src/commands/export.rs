//! `bestiary export`: writes a stored model version's network as ONNX again.

use std::process::ExitCode;

use bestiary_model::onnx::describe;
use bestiary_storage::Store;
use bestiary_train::export::export_onnx;
use bestiary_train::stored::StoredModel;

use crate::args::{ExportArgs, GlobalArgs};

pub async fn export(global: &GlobalArgs, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let options = global.store_options();
    let stored = StoredModel::load(&args.model, &options).await?;
    let onnx = export_onnx(&stored.inference_network()?, &stored.metadata)?;
    let destination = match &args.to {
        Some(url) => {
            let (store, key) = Store::open_object(url, &options)?;
            store.put(&key, onnx.clone()).await?;
            store.url_of(&key)
        }
        None => {
            let folder = stored
                .repository
                .store()
                .child(&format!("{}/{}", stored.name, stored.version))?;
            folder.put("model.onnx", onnx.clone()).await?;
            folder.url_of("model.onnx")
        }
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
