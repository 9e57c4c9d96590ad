//! A small team of worker threads that run one closure on every thread at once, for the
//! data-parallel parts of the forward pass (llama.cpp's model: workers spin briefly between
//! jobs instead of sleeping, because a token runs ~120 short parallel regions and a sleeping
//! thread takes tens of microseconds to wake).
//!
//! The calling thread is member 0 and works too; `run` returns when every member finished.
//! Idle workers spin for [`SPIN`] iterations, then park until the next job.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spin iterations before an idle worker parks (≈ 50–200 µs).
const SPIN: usize = 20_000;

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    epoch: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    job: UnsafeCell<Option<Job>>,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `Team::run` before the epoch is published (Release) and
// read by workers after they observe the new epoch (Acquire); `run` does not return (and so
// does not write `job` again) until every worker has finished with it.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A fixed team of `n` threads (the caller plus `n - 1` workers).
pub(crate) struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n: usize,
}

impl Team {
    /// A team of `n ≥ 1` members.
    pub(crate) fn new(n: usize) -> std::io::Result<Self> {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(n - 1);
        for tid in 1..n {
            let s = shared.clone();
            workers.push(std::thread::Builder::new().name(format!("tailor-worker-{tid}")).spawn(move || worker(s, tid))?);
        }
        Ok(Self { shared, workers, n })
    }

    /// Number of members.
    pub(crate) fn size(&self) -> usize {
        self.n
    }

    /// Runs `f(tid)` for every `tid in 0..n` at once (the caller runs `f(0)`), and returns
    /// when all have finished. A panic in any member is re-raised here.
    pub(crate) fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n == 1 {
            f(0);
            return;
        }
        let s = &*self.shared;
        // SAFETY: erasing the lifetime is sound because we wait below until every worker has
        // finished calling `f` before returning, so the pointer never outlives the borrow.
        let ptr: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f) };
        // SAFETY: no worker reads `job` until the epoch below changes (see `Shared`).
        unsafe { *s.job.get() = Some(ptr) };
        s.done.store(0, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::Release);
        {
            // Wake parked workers (cheap when none waits).
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        let mut spins = 0usize;
        while s.done.load(Ordering::Acquire) != self.n - 1 {
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a tailor worker thread panicked");
        }
    }
}

fn worker(s: Arc<Shared>, tid: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0usize;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
            } else {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                if s.epoch.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Acquire) {
                    drop(s.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
                }
                spins = 0;
            }
        }
        // SAFETY: the epoch changed, so `run` published a job that stays valid until we
        // increment `done` (see `Shared`).
        let job = unsafe { (*s.job.get()).expect("job published with the epoch") };
        // SAFETY: as above: the closure outlives this call.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*job)(tid) }));
        if r.is_err() {
            s.panicked.store(true, Ordering::SeqCst);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// How a forward pass runs its parallel parts: on a team, or serially on the caller.
#[derive(Clone, Copy)]
pub(crate) enum Par<'a> {
    /// Only the calling thread.
    Serial,
    /// Every member of a team.
    Team(&'a Team),
}

impl Par<'_> {
    /// Members working.
    pub(crate) fn size(&self) -> usize {
        match self {
            Par::Serial => 1,
            Par::Team(t) => t.size(),
        }
    }

    /// Runs `f(tid)` on every member.
    pub(crate) fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        match self {
            Par::Serial => f(0),
            Par::Team(t) => t.run(f),
        }
    }
}

/// The share `[start, end)` of `0..len` for member `tid` of `n`, in multiples of `align`.
pub(crate) fn share(len: usize, tid: usize, n: usize, align: usize) -> (usize, usize) {
    let units = len.div_ceil(align);
    let s = (units * tid / n * align).min(len);
    let e = (units * (tid + 1) / n * align).min(len);
    (s, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_runs_each_job_once() {
        let team = Team::new(3).unwrap();
        for round in 0..2000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            team.run(&|tid| {
                hits[tid].fetch_add(1, Ordering::SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1), "round {round}");
            if round % 500 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5)); // let workers park
            }
        }
    }

    #[test]
    fn shares_cover_the_range() {
        for len in [0, 1, 5, 576, 1000] {
            for n in 1..5 {
                let mut next = 0;
                for tid in 0..n {
                    let (s, e) = share(len, tid, n, 4);
                    assert_eq!(s, next);
                    next = e;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn worker_panics_reach_the_caller() {
        let team = Team::new(2).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| team.run(&|tid| assert_ne!(tid, 1))));
        assert!(r.is_err());
        team.run(&|_| {}); // still usable
    }
}
