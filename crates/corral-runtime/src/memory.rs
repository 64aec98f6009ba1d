//! The server process's own resources: its memory and its open-files limit.

/// Gives the free memory of every malloc arena back to the kernel (glibc's `malloc_trim`);
/// returns whether any was released.
///
/// glibc returns only the free top of a heap by itself. After a burst of connections closes
/// (thousands of idle WebSockets, a slow-loris flood), their freed blocks lie between live
/// ones and stay resident: 2,000 closed sockets left ~15 MiB behind. Trimming releases
/// every free page, wherever it lies. It walks the arenas under their locks (about a
/// millisecond for tens of MiB), so it is meant for after bursts, not for every free.
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists under the
    // arenas' locks and madvises whole free pages, which stay valid to allocate again.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// The process's current (soft) open-files limit.
pub fn open_files_limit() -> std::io::Result<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .map_err(std::io::Error::from)
}
