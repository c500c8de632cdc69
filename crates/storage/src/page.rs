//! One page of a listing in a stable order, with a cursor to resume after it: what a gallery or
//! an API that pages through a prefix of any size needs.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use lru::LruCache;
use object_store::path::Path;

use crate::store::Store;
use crate::{ObjectInfo, Result};

/// Objects of one page, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// In key order: byte-wise on object stores, segment by segment on a local folder.
    pub objects: Vec<ObjectInfo>,
    /// The key to pass as `after` for the next page; `None` when this page is the last.
    pub next_after: Option<String>,
}

impl Store {
    /// Up to `limit` objects below `sub`, in key order, strictly after the key `after`.
    ///
    /// Object stores list in key order on their own and start after a key server-side, so a
    /// page costs one or two requests however large the prefix. A local folder has no order of
    /// its own: it is walked one directory at a time, each sorted, skipping directories that lie
    /// wholly before `after`, so a page never reads the whole tree either.
    pub async fn list_page(
        &self,
        sub: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage> {
        let limit = limit.max(1);
        let mut objects = if self.is_local() {
            self.local_page(sub, after, limit + 1).await?
        } else {
            self.list_from(sub, after)
                .take(limit + 1)
                .try_collect::<Vec<_>>()
                .await?
        };
        let next_after = if objects.len() > limit {
            objects.truncate(limit);
            objects.last().map(|o| o.key.clone())
        } else {
            None
        };
        Ok(ListPage {
            objects,
            next_after,
        })
    }

    /// Depth-first over sorted directory listings; at most `wanted` objects.
    async fn local_page(
        &self,
        sub: &str,
        after: Option<&str>,
        wanted: usize,
    ) -> Result<Vec<ObjectInfo>> {
        let after: Option<Vec<&str>> = after.map(|a| a.trim_matches('/').split('/').collect());
        let mut objects = Vec::new();
        // Entries still to visit, the next one last.
        let mut pending = vec![Entry::Folder(self.location(sub)?)];
        while let Some(entry) = pending.pop() {
            match entry {
                Entry::Object(info) => {
                    let past_cursor = after
                        .as_ref()
                        .is_none_or(|a| info.key.split('/').gt(a.iter().copied()));
                    if past_cursor {
                        objects.push(info);
                        if objects.len() == wanted {
                            break;
                        }
                    }
                }
                Entry::Folder(location) => {
                    let key = self.relative_key(&location);
                    if let Some(a) = &after
                        && !key.is_empty()
                        && wholly_before(&key, a)
                    {
                        continue;
                    }
                    let children = self.sorted_folder(&location, &key).await?;
                    // Reversed, so that popping visits them in order; the entries before the
                    // cursor are not even pushed.
                    let start = match &after {
                        Some(a) => children.partition_point(|(name, _)| {
                            let path = join(&key, name);
                            !is_ancestor(&path, a) && path.split('/').le(a.iter().copied())
                        }),
                        None => 0,
                    };
                    pending.extend(children[start..].iter().rev().map(|(_, e)| e.clone()));
                }
            }
        }
        Ok(objects)
    }

    /// One directory's entries sorted by name. Large ones are kept while the directory's
    /// modification time stays the same (adding or removing an entry changes it), so paging
    /// through 100,000 photos reads the directory once, not once per page.
    async fn sorted_folder(&self, location: &Path, key: &str) -> Result<Arc<Vec<(String, Entry)>>> {
        let directory = self.local_root.as_ref().map(|root| root.join(key));
        let modified = directory
            .as_ref()
            .and_then(|d| std::fs::metadata(d).ok())
            .and_then(|m| m.modified().ok());
        let cache_key = directory.clone().zip(modified);
        if let Some((dir, modified)) = &cache_key
            && let Some(hit) = listing_cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(dir)
                .filter(|cached| cached.0 == *modified)
        {
            return Ok(hit.1.clone());
        }
        let listing = self
            .inner
            .list_with_delimiter(Some(location))
            .await
            .map_err(|e| self.error(key, e))?;
        let mut children: Vec<(String, Entry)> = listing
            .objects
            .into_iter()
            .map(|meta| {
                let info = self.info(meta);
                (last_segment(&info.key), Entry::Object(info))
            })
            .chain(listing.common_prefixes.into_iter().map(|folder| {
                let name = folder.filename().unwrap_or_default().to_string();
                (name, Entry::Folder(folder))
            }))
            .collect();
        children.sort_by(|a, b| a.0.cmp(&b.0));
        let children = Arc::new(children);
        if let Some((dir, modified)) = cache_key
            && children.len() >= CACHED_FOLDER_ENTRIES
        {
            listing_cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(dir, (modified, children.clone()));
        }
        Ok(children)
    }
}

/// Directories with at least this many entries are kept: smaller ones list in microseconds.
const CACHED_FOLDER_ENTRIES: usize = 1000;

type CachedFolder = (SystemTime, Arc<Vec<(String, Entry)>>);

/// The large directories listed lately, of every local store of the process.
fn listing_cache() -> &'static Mutex<LruCache<PathBuf, CachedFolder>> {
    static CACHE: OnceLock<Mutex<LruCache<PathBuf, CachedFolder>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(LruCache::new(NonZeroUsize::new(8).expect("non-zero"))))
}

#[derive(Clone)]
enum Entry {
    Object(ObjectInfo),
    Folder(Path),
}

fn join(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_string()
    } else {
        format!("{folder}/{name}")
    }
}

fn is_ancestor(folder: &str, after: &[&str]) -> bool {
    let folder: Vec<&str> = folder.split('/').collect();
    folder.len() < after.len() && folder[..] == after[..folder.len()]
}

fn last_segment(key: &str) -> String {
    key.rsplit('/').next().unwrap_or_default().to_string()
}

/// Whether every key inside the folder `folder` sorts before the key `after`: the folder comes
/// first and is not one of `after`'s ancestors.
fn wholly_before(folder: &str, after: &[&str]) -> bool {
    !is_ancestor(folder, after) && folder.split('/').lt(after.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    async fn all_pages(store: &Store, sub: &str, limit: usize) -> Vec<String> {
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_page(sub, after.as_deref(), limit).await.unwrap();
            assert!(page.objects.len() <= limit);
            keys.extend(page.objects.into_iter().map(|o| o.key));
            match page.next_after {
                Some(next) => after = Some(next),
                None => return keys,
            }
        }
    }

    fn keys() -> Vec<&'static str> {
        vec![
            "a.b/x.jpg",
            "a/b/c.jpg",
            "a/b/d.jpg",
            "a/e.jpg",
            "b.jpg",
            "c/1.png",
            "c/10.png",
            "c/2.png",
            "z.jpg",
        ]
    }

    #[tokio::test]
    async fn pages_of_a_local_folder_cover_every_key_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
        for key in keys() {
            store
                .put(&format!("photos/{key}"), vec![1u8])
                .await
                .unwrap();
        }
        let mut expected: Vec<String> = keys().iter().map(|k| format!("photos/{k}")).collect();
        // Segment by segment: "a/…" comes before "a.b/…" in a folder walk.
        expected.sort_by(|a, b| a.split('/').cmp(b.split('/')));
        for limit in [1, 2, 3, 100] {
            assert_eq!(
                all_pages(&store, "photos", limit).await,
                expected,
                "{limit}"
            );
        }
        let first = store.list_page("photos", None, 4).await.unwrap();
        assert_eq!(first.next_after.as_deref(), Some("photos/a.b/x.jpg"));
        assert_eq!(all_pages(&store, "photos/c", 2).await.len(), 3);
        assert!(all_pages(&store, "nothing-here", 5).await.is_empty());
    }

    #[tokio::test]
    async fn a_large_folder_is_listed_once_and_its_changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("many");
        std::fs::create_dir(&folder).unwrap();
        for i in 0..1200 {
            std::fs::write(folder.join(format!("{i:05}.jpg")), [1u8]).unwrap();
        }
        let store = Store::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
        let keys = all_pages(&store, "many", 500).await;
        let expected: Vec<String> = (0..1200).map(|i| format!("many/{i:05}.jpg")).collect();
        assert_eq!(keys, expected);
        // A new photo changes the folder's modification time: the cached listing is dropped.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(folder.join("01200.jpg"), [1u8]).unwrap();
        std::fs::remove_file(folder.join("00000.jpg")).unwrap();
        let keys = all_pages(&store, "many", 500).await;
        assert_eq!(keys.len(), 1200);
        assert_eq!(keys.first().map(String::as_str), Some("many/00001.jpg"));
        assert_eq!(keys.last().map(String::as_str), Some("many/01200.jpg"));
    }

    #[tokio::test]
    async fn pages_of_an_object_store_follow_key_order() {
        let store = Store::open("memory://pages", &StoreOptions::default()).unwrap();
        for key in keys() {
            store.put(key, vec![1u8]).await.unwrap();
        }
        let mut expected: Vec<String> = keys().iter().map(|k| k.to_string()).collect();
        expected.sort();
        for limit in [1, 4, 100] {
            assert_eq!(all_pages(&store, "", limit).await, expected, "{limit}");
        }
    }

    #[test]
    fn folders_before_the_cursor_are_skipped_but_its_ancestors_are_not() {
        assert!(wholly_before("a", &["b", "x.jpg"]));
        assert!(!wholly_before("b", &["b", "x.jpg"]));
        assert!(!wholly_before("c", &["b", "x.jpg"]));
        assert!(!wholly_before("a/b", &["a", "b", "c.jpg"]));
        assert!(wholly_before("a/a", &["a", "b", "c.jpg"]));
    }
}
