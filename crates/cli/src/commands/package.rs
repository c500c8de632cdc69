//! `bestiary package`: writes a model version as the `model.tar.gz` SageMaker hosting unpacks
//! into /opt/ml/model, laid out as a model root (`<name>/<version>/…`, `<name>/latest`) so that
//! `bestiary serve` in the container finds it with no flag.

use std::process::ExitCode;

use bestiary_model::{LATEST, METADATA_FILE, resolve};
use bestiary_storage::Store;
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::args::{GlobalArgs, PackageArgs};

/// Modification time of every entry: archives of the same version are byte-identical.
const ENTRY_MTIME: u64 = 0;

pub async fn package(global: &GlobalArgs, args: PackageArgs) -> anyhow::Result<ExitCode> {
    let options = global.store_options();
    let (name, version, files) = if bestiary_engine::builtin::is_builtin(&args.model) {
        let metadata = bestiary_engine::builtin::metadata();
        let mut files = vec![
            (METADATA_FILE.to_string(), metadata.to_json()),
            (
                "model.onnx".to_string(),
                bestiary_engine::builtin::onnx().to_vec(),
            ),
        ];
        // model.json names the int8 graph when there is one: the archive must hold it too.
        if let (Some(graph), Some(bytes)) = (&metadata.int8, bestiary_engine::builtin::int8_onnx())
        {
            files.push((graph.file.clone(), bytes.to_vec()));
        }
        (metadata.name, metadata.version, files)
    } else {
        let (repository, name, version) = resolve(&args.model, &options).await?;
        let metadata = repository.metadata(&name, &version).await?;
        let mut files = Vec::new();
        for file in metadata.files.iter().filter(|f| *f != METADATA_FILE) {
            let bytes = repository.file(&name, &version, file).await?;
            files.push((file.clone(), bytes.to_vec()));
        }
        files.push((
            METADATA_FILE.to_string(),
            repository
                .file(&name, &version, METADATA_FILE)
                .await?
                .to_vec(),
        ));
        (name, version, files)
    };
    let pointer = serde_json::to_vec(&serde_json::json!({ "version": version }))?;
    let archive = tar_gz(
        files
            .iter()
            .map(|(file, bytes)| (format!("{name}/{version}/{file}"), bytes.as_slice()))
            .chain([(format!("{name}/{LATEST}"), pointer.as_slice())]),
    )?;
    let (store, key) = Store::open_object(&args.to, &options)?;
    store.put(&key, archive.clone()).await?;
    println!(
        "{name} {version} → {} ({} files, {} bytes)",
        store.url_of(&key),
        files.len() + 1,
        archive.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// A gzip-compressed tar of `entries` (path, contents), in the given order.
fn tar_gz<'a>(entries: impl IntoIterator<Item = (String, &'a [u8])>) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(ENTRY_MTIME);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, &path, bytes)?;
    }
    builder.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_every_entry_under_its_path() {
        let archive = tar_gz([
            ("m/v1/model.json".to_string(), b"{}".as_slice()),
            ("m/latest".to_string(), br#"{"version":"v1"}"#.as_slice()),
        ])
        .unwrap();
        let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
        let entries: Vec<(String, Vec<u8>)> = reader
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let path = entry.path().unwrap().to_string_lossy().into_owned();
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
                (path, bytes)
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("m/v1/model.json".to_string(), b"{}".to_vec()),
                ("m/latest".to_string(), br#"{"version":"v1"}"#.to_vec()),
            ]
        );
        // Reproducible: the same inputs give the same bytes.
        let again = tar_gz([
            ("m/v1/model.json".to_string(), b"{}".as_slice()),
            ("m/latest".to_string(), br#"{"version":"v1"}"#.as_slice()),
        ])
        .unwrap();
        assert_eq!(archive, again);
    }
}
