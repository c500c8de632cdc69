//! Tunes glibc's malloc for tensor workloads before any thread starts.
//!
//! burn frees and reallocates multi-megabyte activation buffers on every layer of every step.
//! By default glibc serves those with fresh `mmap`s (or trims them back from per-thread arenas),
//! so the kernel zero-fills every page again: measured here on seed-cnn training, 6.5 million
//! page faults and 11 s of system time in a 37 s run. Keeping freed memory in one arena brings
//! that to 0.13 million faults and 0.3 s with the same peak memory, and ~30% less wall time.

/// Applies the settings, unless the user tuned malloc through its own environment variables.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_tuned = std::env::vars_os().any(|(key, _)| {
            key.to_str()
                .is_some_and(|k| k.starts_with("MALLOC_") || k.starts_with("GLIBC_TUNABLES"))
        });
        if user_tuned {
            return;
        }
        // SAFETY: mallopt only changes allocator parameters; it is called from `main` before
        // any other thread exists.
        unsafe {
            // One arena: per-thread arenas each trim freed memory back to the kernel.
            libc::mallopt(libc::M_ARENA_MAX, 1);
            // Large buffers come from the heap and stay there for reuse instead of being
            // unmapped on free.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
