//! A deadline for blocking collectives.
//!
//! A blocking MPI collective has no timeout: when one rank dies, the launcher usually
//! ends the others, but a rank that hangs (or a launcher that does not notice) would
//! leave them waiting forever. The watchdog is one thread that ends this process with a
//! message naming the rank and the operation once a collective has waited past its
//! deadline.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Pending {
    /// The collective in flight and when it must have finished.
    current: Option<(String, Instant)>,
}

pub struct Watchdog {
    shared: Arc<(Mutex<Pending>, Condvar)>,
    timeout: Duration,
}

/// Clears the deadline when the collective returns.
pub struct Armed<'a> {
    watchdog: &'a Watchdog,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.watchdog.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).current = None;
        cvar.notify_all();
    }
}

impl Watchdog {
    /// `who` names this process in the message ("rank 1 of 2").
    pub fn start(who: String, timeout: Duration) -> Self {
        let shared = Arc::new((Mutex::new(Pending::default()), Condvar::new()));
        let watched = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("rnmt-collective-watchdog".into())
            .spawn(move || watch(&watched, &who, timeout))
            .expect("cannot start the collective watchdog thread");
        Self { shared, timeout }
    }

    /// Arms the deadline for the collective `what`, until the returned guard drops.
    pub fn arm(&self, what: &str) -> Armed<'_> {
        let (lock, cvar) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).current =
            Some((what.to_string(), Instant::now() + self.timeout));
        cvar.notify_all();
        Armed { watchdog: self }
    }
}

fn watch(shared: &(Mutex<Pending>, Condvar), who: &str, timeout: Duration) {
    let (lock, cvar) = shared;
    let mut pending = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match pending.current.clone() {
            None => pending = cvar.wait(pending).unwrap_or_else(|e| e.into_inner()),
            Some((what, deadline)) => {
                let now = Instant::now();
                if now >= deadline {
                    eprintln!(
                        "error: {who}: {what} did not complete within {:.0} s \
                         (collective_timeout_s): another rank has died or hangs",
                        timeout.as_secs_f64()
                    );
                    // Not `std::process::exit`: the main thread is inside the MPI library,
                    // whose exit handlers could wait for it.
                    // SAFETY: _exit(2) ends the process; it has no preconditions.
                    unsafe { libc::_exit(1) }
                }
                pending = cvar
                    .wait_timeout(pending, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}
