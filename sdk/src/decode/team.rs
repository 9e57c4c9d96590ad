//! A small team of worker threads that run one closure on every thread at once, for the
//! data-parallel parts of the forward pass (llama.cpp's model: workers spin briefly between
//! jobs instead of sleeping, because a token runs ~120 short parallel regions and a sleeping
//! thread takes tens of microseconds to wake).
//!
//! The calling thread is member 0 and works too. Jobs must share their work out dynamically
//! (members take chunks from a shared counter until none is left), because a worker that has
//! not picked a job up by the time the caller has finished it is left out: `run` closes the job
//! and waits only for the workers that joined. So a worker the OS has descheduled (another app
//! is busy on the phone) never holds a token up.
//! Idle workers spin for [`SPIN`] iterations, then park until the next job.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spin iterations (`pause`) before an idle worker parks or a waiting caller yields (≈ 0.1 ms).
const SPIN: usize = 4_000;

type Job = *const (dyn Fn(usize) + Sync);

/// `state` packs the job's epoch (high 32 bits), whether it is closed to newcomers, and how
/// many workers joined it.
const CLOSED: u64 = 1 << 31;
const JOINED: u64 = CLOSED - 1;

struct Shared {
    state: AtomicU64,
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
    #[cfg(test)]
    pub(crate) fn new(n: usize) -> std::io::Result<Self> {
        Self::with_cpus(n, None)
    }

    /// A team of `n ≥ 1` members whose workers are pinned to `cpus` (worker `tid` on
    /// `cpus[tid % len]`; the caller, member 0, is the app's thread and is not pinned).
    pub(crate) fn with_cpus(n: usize, cpus: Option<&[usize]>) -> std::io::Result<Self> {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
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
            let cpu = cpus.filter(|c| !c.is_empty()).map(|c| c[tid % c.len()]);
            workers.push(std::thread::Builder::new().name(format!("tailor-worker-{tid}")).spawn(move || {
                if let Some(cpu) = cpu {
                    crate::affinity::pin_current_thread(cpu);
                }
                worker(s, tid)
            })?);
        }
        Ok(Self { shared, workers, n })
    }

    /// Number of members.
    pub(crate) fn size(&self) -> usize {
        self.n
    }

    /// Runs `f(0)` on the caller and `f(tid)` on every worker that picks the job up before the
    /// caller has finished it; returns when all of those have finished. `f` must hand its work
    /// out dynamically so that `f(0)` alone completes it. A panic in any member is re-raised here.
    pub(crate) fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n == 1 {
            f(0);
            return;
        }
        let s = &*self.shared;
        // SAFETY: erasing the lifetime is sound because we wait below until every worker that
        // joined has finished calling `f` before returning, and a worker joins only while the
        // job is open, so the pointer never outlives the borrow.
        let ptr: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f) };
        // SAFETY: no worker reads `job` unless it joins the new epoch published below.
        unsafe { *s.job.get() = Some(ptr) };
        s.done.store(0, Ordering::Relaxed);
        let epoch = (s.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xFFFF_FFFF;
        s.state.store(epoch << 32, Ordering::Release);
        {
            // Wake parked workers (cheap when none waits).
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        let joined = (s.state.fetch_or(CLOSED, Ordering::AcqRel) & JOINED) as usize;
        let mut spins = 0usize;
        while s.done.load(Ordering::Acquire) != joined {
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
    let mut seen = 0u64;
    loop {
        let mut spins = 0usize;
        let mut cur;
        loop {
            cur = s.state.load(Ordering::Acquire);
            if cur >> 32 != seen {
                seen = cur >> 32;
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
                if s.state.load(Ordering::Acquire) >> 32 == seen && !s.shutdown.load(Ordering::Acquire) {
                    drop(s.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
                }
                spins = 0;
            }
        }
        // Join the job unless the caller has closed it (or a newer one is out).
        let joined = loop {
            if cur >> 32 != seen || cur & CLOSED != 0 {
                break false;
            }
            match s.state.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break true,
                Err(now) => cur = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: we joined an open job, so `run` published it and waits for us (`done`)
        // before the closure goes away (see `Shared`).
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

/// An output buffer written by the members of a team job, each member writing elements no
/// other member writes (the job's contract), while the buffer outlives the job.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: members write disjoint elements of a buffer that outlives the job (see the type).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Wraps a buffer for the duration of a job.
    #[inline]
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        Self(buf.as_mut_ptr())
    }

    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    #[inline(always)]
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_jobs_complete_and_workers_join() {
        let team = Team::new(3).unwrap();
        let mut joined = 0;
        for round in 0..3000 {
            let next = AtomicUsize::new(0);
            let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
            let members = AtomicUsize::new(0);
            team.run(&|tid| {
                members.fetch_add(1, Ordering::SeqCst);
                if tid == 0 && round == 0 {
                    // Once, keep the job open until a worker joins (workers must be able to).
                    let t = std::time::Instant::now();
                    while members.load(Ordering::SeqCst) < 2 && t.elapsed().as_secs() < 10 {
                        std::hint::spin_loop();
                    }
                }
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= hits.len() {
                        break;
                    }
                    hits[i].fetch_add(1, Ordering::SeqCst);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1), "round {round}");
            joined += members.load(Ordering::SeqCst);
            if round % 1000 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5)); // let workers park
            }
        }
        assert!(joined > 3000, "workers never joined");
        // (How often they join otherwise depends on the OS scheduler: not asserted.)
    }

    #[test]
    fn worker_panics_reach_the_caller() {
        let team = Team::new(2).unwrap();
        let worker_in = AtomicBool::new(false);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(&|tid| {
                if tid == 0 {
                    // Keep the job open until the worker has joined it.
                    let t = std::time::Instant::now();
                    while !worker_in.load(Ordering::SeqCst) && t.elapsed().as_secs() < 10 {
                        std::hint::spin_loop();
                    }
                } else {
                    worker_in.store(true, Ordering::SeqCst);
                    panic!("worker fails");
                }
            })
        }));
        assert!(r.is_err());
        team.run(&|_| {}); // still usable
    }
}
