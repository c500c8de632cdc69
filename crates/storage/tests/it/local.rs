//! Storage on local folders and in memory: atomic writes, listing, and keys that try to escape.

use bestiary_storage::{StorageErrorKind, Store, StoreOptions};
use futures::TryStreamExt;

fn local(dir: &std::path::Path) -> Store {
    Store::open(dir.to_str().unwrap(), &StoreOptions::default()).unwrap()
}

#[tokio::test]
async fn local_round_trip_creates_folders() {
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir.path().join("out"));
    store.put("v1/model.json", b"{}".to_vec()).await.unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("out/v1/model.json")).unwrap(),
        b"{}"
    );
    assert_eq!(
        store
            .get_range("v1/model.json", 1..2)
            .await
            .unwrap()
            .as_ref(),
        b"}"
    );
    let keys: Vec<String> = store
        .list("")
        .map_ok(|o| o.key)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(keys, ["v1/model.json"]);
}

#[tokio::test]
async fn file_urls_and_plain_paths_are_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.txt"), b"1").unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = Store::open(&url, &StoreOptions::default()).unwrap();
    assert_eq!(store.get("x.txt").await.unwrap().as_ref(), b"1");
    assert_eq!(store.url().display(), local(dir.path()).url().display());
}

#[tokio::test]
async fn large_local_writes_stream_and_leave_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = local(dir.path());
    let data = vec![3u8; 20 * 1024 * 1024];
    store.put("big.bin", data.clone()).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("big.bin")).unwrap(), data);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["big.bin"]);
}

#[tokio::test]
async fn keys_cannot_escape_the_root() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
    let store = local(dir.path());
    for key in ["../secret.txt", "a/../../secret.txt", "link/secret.txt"] {
        let err = store.get(key).await.unwrap_err();
        assert_eq!(err.kind, StorageErrorKind::InvalidKey, "{key}: {err}");
    }
    let err = store.put("link/new.txt", b"x".to_vec()).await.unwrap_err();
    assert_eq!(err.kind, StorageErrorKind::InvalidKey);
    assert!(!outside.path().join("new.txt").exists());
}

#[tokio::test]
async fn missing_local_object_is_not_found_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = local(dir.path()).get("nope.jpg").await.unwrap_err();
    assert_eq!(err.kind, StorageErrorKind::NotFound);
    assert!(err.to_string().contains("nope.jpg"));
}

#[tokio::test]
async fn memory_stores_are_shared_by_name() {
    let a = Store::open("memory://shared-test/p", &StoreOptions::default()).unwrap();
    a.put("k", b"v".to_vec()).await.unwrap();
    let b = Store::open("memory://shared-test", &StoreOptions::default()).unwrap();
    assert_eq!(b.get("p/k").await.unwrap().as_ref(), b"v");
    let (store, key) =
        Store::open_object("memory://shared-test/p/k", &StoreOptions::default()).unwrap();
    assert_eq!(store.get(&key).await.unwrap().as_ref(), b"v");
}

#[tokio::test]
async fn limited_reads_refuse_objects_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = local(dir.path());
    store.put("ten.bin", vec![7u8; 10]).await.unwrap();
    assert_eq!(store.get_limited("ten.bin", 10).await.unwrap().len(), 10);
    let error = store.get_limited("ten.bin", 9).await.unwrap_err();
    assert_eq!(error.kind, StorageErrorKind::TooLarge);
    let missing = store.get_limited("none.bin", 9).await.unwrap_err();
    assert_eq!(missing.kind, StorageErrorKind::NotFound);
}
