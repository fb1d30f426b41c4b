//! A small fixed team of worker threads for the decode hot path, where a step is a chain of
//! short parallel loops (tens of microseconds each). Waking a sleeping pool for every loop
//! costs as much as the loop itself, so idle workers first spin briefly (yielding the CPU
//! between checks, so a competing process is not starved), and only then park. The caller
//! always takes part in the work, so a team of one runs everything inline.
//!
//! Protocol of [`Team::run`]: the caller publishes a job (a borrowed closure and its task
//! counters) under the team's mutex and bumps the epoch; workers that see the new epoch
//! register themselves as active under the same mutex, then claim task indices from the
//! job's atomic counter. The caller claims tasks too, then withdraws the job (under the
//! mutex) and waits until every task has finished and no worker is still registered, so the
//! borrowed closure outlives every use.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker keeps polling for the next job before parking.
const SPIN: Duration = Duration::from_micros(200);

struct Job {
    f: *const (dyn Fn(usize) + Sync),
    next: AtomicUsize,
    n: usize,
    done: AtomicUsize,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointer is only dereferenced while the owning `run` call is blocked waiting for
// the worker to deregister (see the module protocol), and `Job` holds only Sync data.
unsafe impl Send for JobPtr {}

struct State {
    job: Option<JobPtr>,
    sleeping: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    epoch: AtomicU64,
    active: AtomicUsize,
    shutdown: AtomicBool,
}

/// A team of `threads` (the caller plus `threads − 1` workers).
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    threads: usize,
}

impl Team {
    pub fn new(threads: usize) -> Team {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { job: None, sleeping: 0 }),
            wake: Condvar::new(),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("latent-team-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawning a team worker")
            })
            .collect();
        Team { shared, workers, threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every `i` in `0..n` across the team and returns when all are done.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if self.threads == 1 || n == 1 {
            (0..n).for_each(f);
            return;
        }
        // SAFETY: only the lifetime is erased; `job` (and so `f`) outlives every worker access
        // because this function does not return before `done == n` and `active == 0`.
        let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Job { f, next: AtomicUsize::new(0), n, done: AtomicUsize::new(0) };
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.job = Some(JobPtr(&job));
            self.shared.epoch.fetch_add(1, Ordering::Release);
            if st.sleeping > 0 {
                self.shared.wake.notify_all();
            }
        }
        work_on(&job);
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.job = None;
        }
        let mut spins = 0u32;
        while job.done.load(Ordering::Acquire) < n || self.shared.active.load(Ordering::Acquire) > 0 {
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

fn work_on(job: &Job) {
    loop {
        let i = job.next.fetch_add(1, Ordering::AcqRel);
        if i >= job.n {
            break;
        }
        // SAFETY: `f` is alive while the job is (see `Team::run`).
        unsafe { (*job.f)(i) };
        job.done.fetch_add(1, Ordering::AcqRel);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin (yielding) for a while, then park.
        let start = Instant::now();
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
                std::thread::yield_now();
                continue;
            }
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            st.sleeping += 1;
            while s.epoch.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Acquire) {
                st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.sleeping -= 1;
        }
        seen = s.epoch.load(Ordering::Acquire);
        let job = {
            let st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            let j = st.job;
            if j.is_some() {
                s.active.fetch_add(1, Ordering::AcqRel);
            }
            j
        };
        if let Some(JobPtr(p)) = job {
            // SAFETY: registered as active under the lock while the job was published, so the
            // caller waits for us before the job is dropped.
            work_on(unsafe { &*p });
            s.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_exactly_once_across_many_jobs() {
        for threads in [1, 2, 3, 5] {
            let team = Team::new(threads);
            for n in [0usize, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                for _ in 0..20 {
                    team.run(n, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 20), "threads {threads} n {n}");
            }
        }
    }

    #[test]
    fn workers_park_and_wake() {
        let team = Team::new(2);
        let sum = AtomicU64::new(0);
        team.run(10, &|i| {
            sum.fetch_add(i as u64, Ordering::Relaxed);
        });
        std::thread::sleep(Duration::from_millis(5)); // longer than the spin window
        team.run(10, &|i| {
            sum.fetch_add(i as u64, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 90);
    }
}
