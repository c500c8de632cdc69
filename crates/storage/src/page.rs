//! One page of a listing in a stable order, with a cursor to resume after it: what a gallery or
//! an API that pages through a prefix of any size needs.

use futures::{StreamExt, TryStreamExt};
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
                    let listing = self
                        .inner
                        .list_with_delimiter(Some(&location))
                        .await
                        .map_err(|e| self.error(&key, e))?;
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
                    // Reversed, so that popping visits them in order.
                    children.sort_by(|a, b| b.0.cmp(&a.0));
                    pending.extend(children.into_iter().map(|(_, entry)| entry));
                }
            }
        }
        Ok(objects)
    }
}

enum Entry {
    Object(ObjectInfo),
    Folder(Path),
}

fn last_segment(key: &str) -> String {
    key.rsplit('/').next().unwrap_or_default().to_string()
}

/// Whether every key inside the folder `folder` sorts before the key `after`: the folder comes
/// first and is not one of `after`'s ancestors.
fn wholly_before(folder: &str, after: &[&str]) -> bool {
    let folder: Vec<&str> = folder.split('/').collect();
    let is_ancestor = folder.len() < after.len() && folder[..] == after[..folder.len()];
    !is_ancestor && folder[..] < after[..]
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
