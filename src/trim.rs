//! Handing the heap's free pages back to the OS after a burst of connections: one call to glibc's
//! `malloc_trim(0)`, berth's second `unsafe` block (the first is `zerocopy::map`).
//!
//! What it does: glibc's allocator keeps pages it has freed for later use, and gives back only
//! those at the top of the heap; `malloc_trim(0)` walks its free chunks and returns every whole
//! free page to the kernel (`madvise(MADV_DONTNEED)`). It costs that walk (milliseconds for tens
//! of MiB) and changes no live allocation.
//!
//! Why it is needed: after a flood of connections closes, the bytes in use come back down but the
//! resident size stays at the flood's peak, and grows with each flood as the heap fragments (the
//! measurement is told in `server::conn`'s docs, whose `Bursts` decides when to call this).
//!
//! Why it is sound: `malloc_trim` takes no pointers, touches only memory the allocator already
//! holds as free, under its own locks, and may be called from any thread at any time. It is
//! `unsafe` only because every foreign function is. On other C libraries (musl) it is not called:
//! they give memory back on their own.
//!
//! Rule of dependency: a leaf (`libc` only); `server` calls it.

/// Hands the heap's free pages back to the OS (glibc keeps them otherwise). Blocking: call it
/// from `spawn_blocking`. Other C libraries: nothing to do.
#[allow(unsafe_code)]
pub fn malloc_trim() {
    // SAFETY: malloc_trim takes no pointers and only releases free memory, under the allocator's
    // own locks; it is safe to call from any thread at any time.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}
