//! Finds the shipped default model (`models/animals`, a normal model repository) so that
//! `builtin.rs` can compile its current version into the binary.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("../../models/animals");
    let pointer = root.join("latest");
    println!("cargo:rerun-if-changed={}", pointer.display());
    let text = std::fs::read_to_string(&pointer).unwrap_or_else(|e| {
        panic!(
            "cannot read the built-in model's pointer {}: {e} (rebuild it with scripts/build-default-model)",
            pointer.display()
        )
    });
    let version = text
        .split('"')
        .skip_while(|part| *part != "version")
        .nth(2)
        .unwrap_or_else(|| panic!("{} does not name a version: {text}", pointer.display()));
    let folder = root.join(version);
    for file in ["model.json", "model.onnx"] {
        let path = folder.join(file);
        assert!(
            path.is_file(),
            "the built-in model lacks {}",
            path.display()
        );
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!(
        "cargo:rustc-env=BESTIARY_BUILTIN_MODEL_DIR={}",
        folder.canonicalize().expect("folder exists").display()
    );
    // The int8 graph is optional (`bestiary export --int8` writes it): without one the binary
    // embeds an empty file, which `builtin.rs` reads as "none".
    let int8 = folder.join("model.int8.onnx");
    println!("cargo:rerun-if-changed={}", int8.display());
    let embedded = if int8.is_file() {
        int8.canonicalize().expect("file exists")
    } else {
        let empty = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("no-int8");
        std::fs::write(&empty, b"").expect("OUT_DIR is writable");
        empty
    };
    println!(
        "cargo:rustc-env=BESTIARY_BUILTIN_INT8={}",
        embedded.display()
    );
}
