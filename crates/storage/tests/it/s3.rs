//! Storage against a real S3 server (SeaweedFS): round trips, pagination, multipart, ranges, errors.

use bestiary_storage::{StorageErrorKind, Store, StoreOptions};
use bestiary_testkit::{s3, unique_prefix};
use futures::{StreamExt, TryStreamExt};

#[tokio::test]
async fn round_trip_head_exists_delete() {
    let store = s3().store(&unique_prefix("roundtrip"));
    store.put("a/b.txt", b"hello".to_vec()).await.unwrap();
    assert_eq!(store.get("a/b.txt").await.unwrap().as_ref(), b"hello");
    let info = store.head("a/b.txt").await.unwrap();
    assert_eq!((info.key.as_str(), info.size), ("a/b.txt", 5));
    assert!(info.etag.is_some());
    assert!(store.exists("a/b.txt").await.unwrap());
    store.delete("a/b.txt").await.unwrap();
    assert!(!store.exists("a/b.txt").await.unwrap());
    let err = store.get("a/b.txt").await.unwrap_err();
    assert_eq!(err.kind, StorageErrorKind::NotFound);
    assert!(err.to_string().contains(&store.url_of("a/b.txt")), "{err}");
}

#[tokio::test]
async fn lists_1500_keys_across_pages() {
    let store = s3().store(&unique_prefix("pagination"));
    futures::stream::iter(0..1500)
        .map(|i| {
            let store = store.clone();
            async move {
                store
                    .put(&format!("k/{i:05}.txt"), format!("{i}").into_bytes())
                    .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let keys: Vec<String> = store
        .list("k")
        .map_ok(|o| o.key)
        .try_collect()
        .await
        .unwrap();
    let expected: Vec<String> = (0..1500).map(|i| format!("k/{i:05}.txt")).collect();
    assert_eq!(
        keys, expected,
        "S3 listings are lexicographic and complete across pages"
    );

    let after: Vec<String> = store
        .list_from("k", Some("k/01200.txt"))
        .map_ok(|o| o.key)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(after.first().map(String::as_str), Some("k/01201.txt"));
    assert_eq!(after.len(), 299);

    // Pages of 400 with a cursor: one request or two each, never the whole listing.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_page("k", cursor.as_deref(), 400).await.unwrap();
        assert!(page.objects.len() <= 400);
        paged.extend(page.objects.into_iter().map(|o| o.key));
        match page.next_after {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, expected, "pages cover every key once, in order");
}

#[tokio::test]
async fn multipart_upload_of_20_mib_and_ranged_reads() {
    let store = s3().store(&unique_prefix("multipart"));
    let data: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    store.put("big.bin", data.clone()).await.unwrap();
    let info = store.head("big.bin").await.unwrap();
    assert_eq!(info.size, data.len() as u64);
    // Multipart ETags carry the part count after a dash; a single PUT's does not.
    assert!(
        info.etag.as_deref().unwrap_or_default().contains('-'),
        "etag {:?}",
        info.etag
    );
    assert_eq!(store.get("big.bin").await.unwrap().as_ref(), &data[..]);
    let range = store
        .get_range("big.bin", 10_000_000..10_000_100)
        .await
        .unwrap();
    assert_eq!(range.as_ref(), &data[10_000_000..10_000_100]);
}

#[tokio::test]
async fn aborted_writer_leaves_no_object() {
    let store = s3().store(&unique_prefix("abort"));
    let mut writer = store.writer("partial.bin").unwrap();
    writer.write(&vec![7u8; 9 * 1024 * 1024]).await.unwrap();
    writer.abort().await.unwrap();
    assert!(!store.exists("partial.bin").await.unwrap());
}

#[tokio::test]
async fn conditional_put_does_not_overwrite() {
    let store = s3().store(&unique_prefix("conditional"));
    assert!(store.put_if_absent("once", b"1".to_vec()).await.unwrap());
    assert!(!store.put_if_absent("once", b"2".to_vec()).await.unwrap());
    assert_eq!(store.get("once").await.unwrap().as_ref(), b"1");
}

#[tokio::test]
async fn wrong_credentials_give_a_clear_error() {
    let env = s3();
    let mut options = env.options();
    options.s3_credentials = Some((env.access_key.clone(), "not-the-secret".into()));
    options.max_retries = 0;
    let store = Store::open(&env.url("anything"), &options).unwrap();
    let err = store.get("x").await.unwrap_err();
    assert_eq!(err.kind, StorageErrorKind::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("access denied") && text.contains(&env.url("anything/x")),
        "{text}"
    );
}

#[tokio::test]
async fn missing_bucket_is_named() {
    let env = s3();
    let options = StoreOptions {
        max_retries: 0,
        ..env.options()
    };
    let store = Store::open("s3://no-such-bucket-bestiary/p", &options).unwrap();
    let err = store.list("").try_collect::<Vec<_>>().await.unwrap_err();
    assert!(
        matches!(
            err.kind,
            StorageErrorKind::BucketNotFound | StorageErrorKind::NotFound
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("s3://no-such-bucket-bestiary/p"),
        "{err}"
    );
}

#[tokio::test]
async fn folders_are_listed_by_delimiter() {
    let store = s3().store(&unique_prefix("folders"));
    for key in ["cat/1.jpg", "dog/2.jpg", "dog/3.jpg", "bird/x/4.jpg"] {
        store.put(key, b"x".to_vec()).await.unwrap();
    }
    assert_eq!(
        store.list_folders("").await.unwrap(),
        ["bird", "cat", "dog"]
    );
    let child = store.child("dog").unwrap();
    let keys: Vec<String> = child
        .list("")
        .map_ok(|o| o.key)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(keys, ["2.jpg", "3.jpg"]);
}
