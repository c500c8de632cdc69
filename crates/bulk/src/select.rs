//! Which listed keys a run classifies: photo extensions, `--include`/`--exclude` globs and the
//! shard.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::{BulkConfig, Shard};
use crate::error::{BulkError, Result};

/// Decides, key by key, whether a run classifies it.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Lower case, without dots; empty takes any key.
    extensions: Vec<String>,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    shard: Shard,
}

impl Selector {
    /// # Errors
    /// For a glob that does not parse.
    pub fn new(
        extensions: &[String],
        include: &[String],
        exclude: &[String],
        shard: Shard,
    ) -> Result<Self> {
        Ok(Self {
            extensions: extensions
                .iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
            include: glob_set("--include", include)?,
            exclude: glob_set("--exclude", exclude)?,
            shard,
        })
    }

    pub fn from_config(config: &BulkConfig) -> Result<Self> {
        Self::new(
            &config.extensions,
            &config.include,
            &config.exclude,
            config.shard,
        )
    }

    /// Whether `key` (relative to the input prefix) is a photo this run classifies.
    pub fn selects(&self, key: &str) -> bool {
        self.matches_filters(key) && self.shard.contains(key)
    }

    /// Whether `key` passes the extension and glob filters, whatever its shard.
    pub fn matches_filters(&self, key: &str) -> bool {
        let extension_ok = self.extensions.is_empty()
            || key
                .rsplit_once('.')
                .filter(|(stem, ext)| !stem.is_empty() && !ext.contains('/'))
                .is_some_and(|(_, ext)| {
                    self.extensions
                        .iter()
                        .any(|wanted| wanted.eq_ignore_ascii_case(ext))
                });
        extension_ok
            && self.include.as_ref().is_none_or(|set| set.is_match(key))
            && !self.exclude.as_ref().is_some_and(|set| set.is_match(key))
    }
}

/// `*` and `?` stay within one folder, `**` crosses folders: `cat/*.jpg` is the photos directly
/// in `cat/`, `**/thumbs/**` every key below any `thumbs/` folder.
fn glob_set(flag: &str, patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob: Glob = GlobBuilder::new(pattern.trim_start_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|e| BulkError::config(format!("{flag} {pattern:?}: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| BulkError::config(format!("{flag}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn extensions_are_matched_case_insensitively_on_the_file_name() {
        let selector = Selector::new(&strings(&["jpg", ".PNG"]), &[], &[], Shard::ALL).unwrap();
        assert!(selector.selects("a/b.JPG"));
        assert!(selector.selects("b.png"));
        assert!(!selector.selects("a.jpg/readme"));
        assert!(!selector.selects(".jpg"));
        assert!(!selector.selects("notes.txt"));
        let any = Selector::new(&[], &[], &[], Shard::ALL).unwrap();
        assert!(any.selects("no-extension"));
    }

    #[test]
    fn globs_keep_stars_inside_one_folder() {
        let selector = Selector::new(
            &strings(&["jpg"]),
            &strings(&["cat/*.jpg", "dogs/**"]),
            &strings(&["**/thumbs/**"]),
            Shard::ALL,
        )
        .unwrap();
        assert!(selector.selects("cat/1.jpg"));
        assert!(!selector.selects("cat/old/1.jpg"));
        assert!(selector.selects("dogs/2024/1.jpg"));
        assert!(!selector.selects("dogs/thumbs/1.jpg"));
        assert!(!selector.selects("cow/1.jpg"));
        assert!(Selector::new(&[], &strings(&["a[b"]), &[], Shard::ALL).is_err());
    }

    #[test]
    fn shards_split_the_selected_keys() {
        let keys: Vec<String> = (0..200).map(|i| format!("{i}.jpg")).collect();
        let halves: Vec<usize> = (0..2)
            .map(|index| {
                let selector =
                    Selector::new(&strings(&["jpg"]), &[], &[], Shard::new(index, 2).unwrap())
                        .unwrap();
                keys.iter().filter(|k| selector.selects(k)).count()
            })
            .collect();
        assert_eq!(halves.iter().sum::<usize>(), keys.len());
        assert!(halves.iter().all(|&n| n > 60), "{halves:?}");
    }
}
