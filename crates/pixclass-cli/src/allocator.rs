//! The allocator of the `pixclass` binary, shared (by `#[path]`) with the
//! benchmark examples so they measure what the binary does.
//!
//! Tensor buffers of tens of MB are freed and allocated every training step.
//! glibc unmaps them and page-faults them back (twice the time of a cached
//! fine-tuning epoch went to page faults); mimalloc reuses them, and with
//! purging turned off it also keeps the freed pages mapped instead of
//! returning them after 10 ms (the kernel would zero them again on the next
//! step: 35 000 page faults and ~6 % of the CPU time of the colourization
//! step benchmark). Peak memory is unchanged; it is simply not given back
//! while the process runs, like PyTorch's caching allocators.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in `mimalloc.h` (the same value in mimalloc v2
/// and v3; `libmimalloc-sys` does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped for reuse (call once, first thing in `main`).
pub fn keep_freed_memory() {
    // SAFETY: `mi_option_set` stores an integer option of the allocator that
    // is this process's global allocator; it takes no pointers and may be
    // called at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}
