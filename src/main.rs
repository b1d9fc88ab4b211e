//! The `rnmt` binary: process set-up, then the command line of [`rnmt::cli`].

use std::process::ExitCode;

// Training allocates and frees large tensors every step; glibc's malloc hands them back to
// the kernel and page-faults fresh zeroed pages each time, mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its position in mimalloc.h's `mi_option_e` (libmimalloc-sys
/// names no constant for it); the unit test below checks it by its default value.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Even with mimalloc, freed multi-megabyte tensors (a beam step's `[rows, vocab]`
/// log-probabilities) were purged back to the kernel after a delay and came back as fresh
/// zeroed pages: ~10 % of beam-search CPU time was the kernel clearing pages. Never purge;
/// the process keeps its peak footprint, which it reaches anyway.
fn keep_freed_memory() {
    // SAFETY: setting an option is thread-safe and valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// A closed pipe (`rnmt bleu … | head -1`) ends the process quietly, as it ends `cat` and
/// `grep`: Rust ignores SIGPIPE, so every `println!` after the reader left would panic.
fn die_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    die_on_closed_pipe();
    keep_freed_memory();
    match rnmt::cli::Cli::from_env().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_delay_option_is_the_one_we_mean() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reading an option is valid at any time.
            let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
            // mimalloc 3's options.c default (its header's comment still says 10).
            assert_eq!(delay, 1000, "mimalloc's default purge delay");
        }
    }
}
