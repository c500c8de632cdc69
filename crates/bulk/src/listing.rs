//! Listings in key order on every store, which resuming relies on: S3, GCS, Azure and memory
//! stores list in order already; local folders are walked in order here, because the file system
//! hands out entries unsorted.

use std::path::{Path, PathBuf};

use bestiary_storage::{ObjectInfo, StorageError, StorageErrorKind, Store, StoreUrl};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

/// Keys a local walk keeps ready ahead of the consumer.
const LOCAL_WALK_BUFFER: usize = 1024;
/// `head` requests in flight while listing a local folder.
const LOCAL_HEADS_IN_FLIGHT: usize = 16;

/// Every object below `store`'s root whose key is strictly after `after`, in lexicographic
/// (byte) order of keys, streamed: the listing is never held as a whole.
pub fn ordered_listing(
    store: &Store,
    after: Option<&str>,
) -> BoxStream<'static, Result<ObjectInfo, StorageError>> {
    match store.url() {
        StoreUrl::Local { root } => local_listing(store.clone(), root.clone(), after),
        _ => store.list_from("", after),
    }
}

fn local_listing(
    store: Store,
    root: PathBuf,
    after: Option<&str>,
) -> BoxStream<'static, Result<ObjectInfo, StorageError>> {
    let (sender, receiver) = mpsc::channel(LOCAL_WALK_BUFFER);
    let after = after.map(str::to_owned);
    let url = store.url().display();
    std::thread::Builder::new()
        .name("bestiary-walk".into())
        .spawn(move || {
            let mut walk = SortedWalk { after, sender, url };
            if root.is_dir() {
                // A send error means the consumer is gone: nothing left to do.
                let _ = walk.folder(&root, "");
            } else {
                // A mistyped folder must not list nothing and pass as an empty success.
                let missing = StorageError::new(StorageErrorKind::BucketNotFound, walk.url.clone())
                    .with_detail("no such folder");
                let _ = walk.sender.blocking_send(Err(missing));
            }
        })
        .expect("spawn the folder walker");
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
    .map(move |key: Result<String, StorageError>| {
        let store = store.clone();
        async move { store.head(&key?).await }
    })
    .buffered(LOCAL_HEADS_IN_FLIGHT)
    // A file removed between the walk and its `head` is simply no longer there.
    .filter(|item| std::future::ready(!matches!(item, Err(e) if e.is_not_found())))
    .boxed()
}

/// A depth-first walk that visits entries sorted so that keys come out in byte order: a folder
/// `a` sorts as `a/`, after `a.jpg` (`.` < `/`), exactly where its keys fall.
struct SortedWalk {
    after: Option<String>,
    sender: mpsc::Sender<Result<String, StorageError>>,
    url: String,
}

/// The consumer stopped listening.
struct Stopped;

impl SortedWalk {
    fn folder(&mut self, path: &Path, prefix: &str) -> Result<(), Stopped> {
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(error) => return self.fail(prefix, &error),
        };
        let mut children: Vec<(String, bool)> = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => return self.fail(prefix, &error),
            };
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!("skipping {}: the name is not UTF-8", entry.path().display());
                continue;
            };
            if is_partial_upload(&name) {
                continue;
            }
            let is_folder = match entry.file_type() {
                Ok(kind) if kind.is_symlink() => {
                    // Linked files are read like the store reads them; linked folders are not
                    // followed, so a link cycle cannot make the walk endless.
                    match std::fs::metadata(entry.path()) {
                        Ok(meta) if meta.is_file() => false,
                        _ => continue,
                    }
                }
                Ok(kind) if kind.is_dir() => true,
                Ok(kind) if kind.is_file() => false,
                _ => continue,
            };
            children.push((if is_folder { format!("{name}/") } else { name }, is_folder));
        }
        children.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, is_folder) in children {
            let key = format!("{prefix}{name}");
            if is_folder {
                if self.folder_is_done(&key) {
                    continue;
                }
                self.folder(&path.join(name.trim_end_matches('/')), &key)?;
            } else if self
                .after
                .as_deref()
                .is_none_or(|after| key.as_str() > after)
            {
                self.sender.blocking_send(Ok(key)).map_err(|_| Stopped)?;
            }
        }
        Ok(())
    }

    /// Whether every key below the folder `prefix` (ending in `/`) sorts at or before `after`.
    fn folder_is_done(&self, prefix: &str) -> bool {
        self.after
            .as_deref()
            .is_some_and(|after| after > prefix && !after.starts_with(prefix))
    }

    fn fail(&mut self, prefix: &str, error: &std::io::Error) -> Result<(), Stopped> {
        let error = StorageError::new(StorageErrorKind::Other, format!("{}/{prefix}", self.url))
            .with_detail(format!("cannot read the folder: {error}"));
        self.sender.blocking_send(Err(error)).map_err(|_| Stopped)
    }
}

/// object_store writes local files through `<name>#<digits>` temporaries and lists them never.
fn is_partial_upload(name: &str) -> bool {
    name.split_once('#')
        .is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bestiary_storage::StoreOptions;
    use futures::TryStreamExt;

    async fn keys(store: &Store, after: Option<&str>) -> Vec<String> {
        ordered_listing(store, after)
            .map_ok(|info| info.key)
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn local_folders_list_in_byte_order_and_resume_after_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "a.jpg",
            "a/b.jpg",
            "a/c/d.jpg",
            "a-b.jpg",
            "b.jpg",
            "B.jpg",
            "a/b#12",
            "z/y/x.jpg",
        ];
        for file in files {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let store = Store::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
        let mut expected: Vec<&str> = files.iter().copied().filter(|f| *f != "a/b#12").collect();
        expected.sort_unstable();
        assert_eq!(keys(&store, None).await, expected);
        for cut in 0..expected.len() {
            assert_eq!(
                keys(&store, Some(expected[cut])).await,
                &expected[cut + 1..],
                "after {}",
                expected[cut]
            );
        }
        // A cursor that is not itself a key resumes at the next key after it.
        assert_eq!(keys(&store, Some("a/bz")).await, &expected[4..]);
        let missing = Store::open(
            dir.path().join("missing").to_str().unwrap(),
            &StoreOptions::default(),
        )
        .unwrap();
        // A mistyped folder is an error, never an empty listing that passes as success.
        let error = ordered_listing(&missing, None)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert_eq!(error.kind, StorageErrorKind::BucketNotFound);
        assert!(error.is_permanent());
    }
}
