//! Giving freed heap back to the operating system.

/// Allocations this large or larger get pages of their own, returned to the OS when freed.
const OWN_PAGES_FROM: usize = 256 * 1024;

/// Sets glibc's allocator for a process that holds a few maps of tens of MB. By default
/// glibc raises its threshold for own pages to the largest block freed (up to 32 MiB), so
/// after the first map the buffers of the next ones (bodies under 32 MiB, gzips, the index)
/// come from the shared heap, where they stay after they are freed: the operator syncing a
/// 35 MB map peaked at 188 MiB instead of 139. A fixed threshold keeps them apart. A no-op
/// elsewhere.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; called once at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM as libc::c_int);
    }
}

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
