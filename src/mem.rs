//! The daemon's heap (glibc malloc), tuned for a long-running process whose
//! large allocations come and go with the flow table.
//!
//! - glibc gives each thread that allocates its own arena, up to 8 per core, and
//!   an arena keeps what was freed in it: tokio's worker and blocking threads
//!   took turns scanning the table, and each kept its own high-water mark.
//!   Two arenas are plenty for a daemon that spends its time waiting.
//! - Allocations of 256 KiB and more get their own mapping, which goes back to
//!   the kernel when freed. glibc's default threshold starts at 128 KiB but
//!   rises to the largest block freed so far (up to 32 MiB), after which big
//!   transient buffers stay on the heap; a fixed threshold keeps it where it is.
//! - After a flow scan, [`trim`] returns free pages inside the heap (a burst of
//!   ended flows leaves export messages and reports freed in its middle).

/// Sets the arena count and the mmap threshold. Call before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; called before the
    // runtime's threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Gives free heap pages back to the kernel (madvise on the free chunks of
/// every arena). A few hundred microseconds on the daemon's heap.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
