//! Giving freed heap back to the operating system.

/// Hands the heap freed after parsing a map (several times the map's size) back to the OS.
/// glibc keeps freed memory for reuse, per thread arena, so a process that parsed a few
/// 3.5 MB maps on a few threads would otherwise keep tens of MiB it no longer uses. A no-op
/// elsewhere (musl, the static image, returns memory by itself).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the OS; any thread may call it any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
