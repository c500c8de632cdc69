//! Store URLs and object keys: parsing never panics, a parsed URL never keeps a `..` segment,
//! containment agrees with itself, and no key resolves outside its store.
#![no_main]

use bestiary_storage::{Store, StoreOptions, StoreUrl, parse_store_url};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (first, second) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(url) = parse_store_url(first) {
        if !matches!(url, StoreUrl::Local { .. }) {
            assert!(!url.prefix().split('/').any(|segment| segment == ".."), "{url:?}");
            assert!(url.contains(&url), "{url:?}");
        }
        if let Ok(other) = parse_store_url(second) {
            // Containment both ways means the same place.
            if url.contains(&other) && other.contains(&url) {
                assert_eq!(url.display(), other.display());
            }
        }
        let _ = url.split_object();
    }
    // Keys in an in-memory store: accepted keys stay below the store's prefix.
    if let Ok(store) = Store::open("memory://fuzz/root", &StoreOptions::default())
        && let Ok(location) = store.location(second)
    {
        assert!(location.as_ref().starts_with("root"), "{second:?} -> {location}");
    }
});
