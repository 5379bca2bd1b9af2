//! How long memory freed stays with the process: mimalloc's purge delay (its
//! option `purge_delay`), which the agent sets short (see `main.rs`) and lengthens
//! while it reads a store whole.

/// mimalloc's `mi_option_purge_delay` (its header's enum; the Rust bindings leave
/// such options unnamed on purpose).
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The delay while [`kept_while`] runs, in milliseconds: mimalloc's own default.
const KEPT_MS: std::ffi::c_long = 1_000;

/// Runs `f` with freed memory kept for [`KEPT_MS`] instead of the delay set, then
/// gives back at once all that was freed and sets the delay back. A read of the
/// whole store frees each batch it decoded as the next is read: given back
/// after 10 ms, each batch's pages were faulted in again (the agent's read of
/// 1,100,000 rows ~1.8 s, ~0.5 s more than with the pages kept), while what the
/// read leaves behind is given back before planning adds its own peak.
pub fn kept_while<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: mimalloc's options are plain values, read and written atomically;
    // collecting frees nothing in use. Both are harmless where mimalloc is linked
    // but not the global allocator (the unit tests).
    let set = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    if !(0..KEPT_MS).contains(&set) {
        // Never given back (a negative delay), or kept as long already.
        return f();
    }
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, KEPT_MS) };
    let out = f();
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, set);
        libmimalloc_sys::mi_collect(true);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_kept_while_reading_and_the_delay_set_comes_back() {
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
        assert_eq!(kept_while(get), KEPT_MS);
        assert_eq!(get(), 10);
        // A delay set longer, or none (never given back), stays as it is.
        for set in [5_000, -1] {
            unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, set) };
            assert_eq!(kept_while(get), set);
            assert_eq!(get(), set);
        }
    }
}
