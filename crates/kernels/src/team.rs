//! A small fixed team of worker threads for the decode hot path, where a step is a chain of
//! short parallel loops (tens of microseconds each). Waking a sleeping pool for every loop
//! costs as much as the loop itself, so idle workers first spin briefly (yielding the CPU
//! between checks, so a competing process is not starved), and only then park. The caller
//! always takes part in the work, so a team of one runs everything inline.
//!
//! Protocol of [`Team::run`]: the caller publishes a job (a borrowed closure and its task
//! counter) under the team's mutex and bumps the epoch; workers that see the new epoch
//! register themselves as active under the same mutex, then claim task indices from the
//! job's atomic counter. The caller claims tasks too, then withdraws the job (under the
//! mutex) and waits until no worker is still registered, so the borrowed closure outlives
//! every use. A worker deregisters only after its last claimed task has returned, so "no
//! worker registered" also means "every claimed task has finished".
//!
//! Panics: every task runs under `catch_unwind`, on workers and on the caller alike. The
//! first panic's payload is kept in the job, no further tasks are claimed (tasks not yet
//! started are skipped), and the caller re-raises the payload with `resume_unwind` only
//! after the job is withdrawn and every worker has left it. Workers never die of a task's
//! panic, so the team stays whole and usable. The withdraw-and-wait step runs in a drop
//! guard, so even an unexpected unwind out of `run` cannot free the job under a worker.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker keeps polling for the next job before parking.
const SPIN: Duration = Duration::from_micros(200);

/// Why a team could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TeamError {
    /// The OS refused to start worker thread `index` (of `threads − 1` workers).
    #[error("could not start team worker {index} of {workers}: {source}")]
    Spawn {
        index: usize,
        workers: usize,
        #[source]
        source: std::io::Error,
    },
}

type Payload = Box<dyn Any + Send + 'static>;

struct Job {
    f: *const (dyn Fn(usize) + Sync),
    next: AtomicUsize,
    n: usize,
    /// Set by the first task that panics: no further tasks are claimed.
    failed: AtomicBool,
    /// The first panic's payload.
    panic: Mutex<Option<Payload>>,
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

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A team of `threads` (the caller plus `threads − 1` workers).
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    threads: usize,
}

/// Withdraws the published job and waits until no worker is registered on it; runs on the
/// normal path and on any unwind out of [`Team::run`] alike.
struct Withdraw<'a> {
    shared: &'a Shared,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.shared.lock().job = None;
        let mut spins = 0u32;
        while self.shared.active.load(Ordering::Acquire) > 0 {
            spins = spins.saturating_add(1);
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Team {
    /// A team of `threads` (at least 1: the caller), starting `threads − 1` worker threads.
    /// Fails with [`TeamError::Spawn`] when the OS refuses a thread; the workers already
    /// started are shut down and joined first.
    pub fn new(threads: usize) -> Result<Team, TeamError> {
        Team::with_stack(threads, None)
    }

    /// [`Team::new`] with an explicit worker stack size (tests force a spawn failure with it).
    fn with_stack(threads: usize, stack: Option<usize>) -> Result<Team, TeamError> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { job: None, sleeping: 0 }),
            wake: Condvar::new(),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        // Built up inside a `Team` so that an early return drops (shuts down and joins) the
        // workers already started.
        // (No capacity reserved up front: `threads` may come from user input.)
        let mut team = Team { shared: Arc::clone(&shared), workers: Vec::new(), threads };
        for i in 1..threads {
            let s = Arc::clone(&shared);
            let mut b = std::thread::Builder::new().name(format!("latent-team-{i}"));
            if let Some(bytes) = stack {
                b = b.stack_size(bytes);
            }
            let w = b.spawn(move || worker(&s)).map_err(|source| TeamError::Spawn {
                index: i,
                workers: threads - 1,
                source,
            })?;
            team.workers.push(w);
        }
        Ok(team)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every `i` in `0..n` across the team and returns when all are done.
    ///
    /// If a task panics, tasks not yet started are skipped, and the first panic is re-raised
    /// here once every worker has left the job; the team stays usable.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if self.threads == 1 || n == 1 {
            (0..n).for_each(f);
            return;
        }
        // SAFETY: only the lifetime is erased; `job` (and so `f`) outlives every worker access
        // because `Withdraw` (dropped before `job`, on return and on unwind alike) withdraws the
        // job and waits until `active == 0`, and workers register under the mutex only while
        // the job is published.
        let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Job { f, next: AtomicUsize::new(0), n, failed: AtomicBool::new(false), panic: Mutex::new(None) };
        {
            let guard = Withdraw { shared: &self.shared };
            {
                let mut st = self.shared.lock();
                st.job = Some(JobPtr(&job));
                self.shared.epoch.fetch_add(1, Ordering::Release);
                if st.sleeping > 0 {
                    self.shared.wake.notify_all();
                }
            }
            work_on(&job);
            drop(guard);
        }
        let payload = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = payload {
            resume_unwind(p);
        }
    }
}

fn work_on(job: &Job) {
    while !job.failed.load(Ordering::Acquire) {
        let i = job.next.fetch_add(1, Ordering::AcqRel);
        if i >= job.n {
            break;
        }
        // SAFETY: `f` is alive while the job is (see `Team::run`).
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.f)(i) }));
        if let Err(p) = r {
            let mut slot = job.panic.lock().unwrap_or_else(|e| e.into_inner());
            let later = if slot.is_none() { slot.replace(p) } else { Some(p) };
            drop(slot);
            job.failed.store(true, Ordering::Release);
            // A later panic's payload is dropped here; a payload whose drop itself panics must
            // not take the thread down while it is still registered on the job.
            if let Some(p) = later {
                let _ = catch_unwind(AssertUnwindSafe(|| drop(p)));
            }
            break;
        }
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
            let mut st = s.lock();
            st.sleeping += 1;
            while s.epoch.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Acquire) {
                st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.sleeping -= 1;
        }
        seen = s.epoch.load(Ordering::Acquire);
        let job = {
            let st = s.lock();
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
            let _st = self.shared.lock();
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

    /// Small sizes under Miri (a few seconds there), the full ones natively.
    const THREADS: &[usize] = if cfg!(miri) { &[1, 2, 3] } else { &[1, 2, 3, 5] };
    const SIZES: &[usize] = if cfg!(miri) { &[0, 1, 2, 7, 20] } else { &[0, 1, 2, 7, 100, 1000] };
    const REPS: u64 = if cfg!(miri) { 3 } else { 20 };

    fn team(threads: usize) -> Team {
        Team::new(threads).expect("starting a test team")
    }

    fn is_worker() -> bool {
        std::thread::current().name().is_some_and(|n| n.starts_with("latent-team-"))
    }

    /// Spins (yielding) until `cond` holds; panics after a generous deadline so that a broken
    /// protocol fails the test instead of hanging it.
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    fn message(p: &Payload) -> String {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    }

    /// Every thread of the team (caller and each worker) takes part in one job: fails (by
    /// timing out) if a worker died.
    fn all_threads_take_part(team: &Team) {
        let t = team.threads();
        let entered = AtomicUsize::new(0);
        let names = Mutex::new(std::collections::HashSet::new());
        team.run(t, &|_| {
            names.lock().unwrap().insert(std::thread::current().id());
            entered.fetch_add(1, Ordering::AcqRel);
            wait_until("every team thread to enter a task", || entered.load(Ordering::Acquire) >= t);
        });
        assert_eq!(names.lock().unwrap().len(), t, "each of the {t} threads ran one task");
    }

    fn every_task_once(team: &Team, n: usize) {
        let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
        team.run(n, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "threads {} n {n}", team.threads());
    }

    #[test]
    fn every_task_runs_exactly_once_across_many_jobs() {
        for &threads in THREADS {
            let team = team(threads);
            for &n in SIZES {
                let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                for _ in 0..REPS {
                    team.run(n, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == REPS), "threads {threads} n {n}");
            }
        }
    }

    #[test]
    fn workers_park_and_wake() {
        let team = team(2);
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

    /// A task that panics on a worker: the panic reaches the caller (it used to kill the
    /// worker and hang the caller), and the whole team works afterwards.
    #[test]
    fn worker_panic_reaches_the_caller_and_the_team_stays_usable() {
        for &threads in &THREADS[1..] {
            let team = team(threads);
            for round in 0..2 {
                let worker_entered = AtomicBool::new(false);
                let r = catch_unwind(AssertUnwindSafe(|| {
                    team.run(4 * threads, &|_| {
                        if is_worker() {
                            worker_entered.store(true, Ordering::Release);
                            panic!("worker boom");
                        }
                        // The caller holds one task until a worker has claimed another.
                        wait_until("a worker to enter a task", || worker_entered.load(Ordering::Acquire));
                    })
                }));
                let p = r.expect_err("the worker's panic is propagated");
                assert_eq!(message(&p), "worker boom", "threads {threads} round {round}");
                all_threads_take_part(&team);
                every_task_once(&team, 50);
            }
        }
    }

    /// A task that panics on the caller: `run` does not unwind before every worker has left
    /// the job (it used to free the job under running workers), then re-raises the panic.
    #[test]
    fn caller_panic_waits_for_workers_and_the_team_stays_usable() {
        for &threads in &THREADS[1..] {
            let team = team(threads);
            for round in 0..2 {
                let caller = std::thread::current().id();
                let caller_panicking = AtomicBool::new(false);
                let (started, finished) = (AtomicUsize::new(0), AtomicUsize::new(0));
                let r = catch_unwind(AssertUnwindSafe(|| {
                    team.run(8 * threads, &|_| {
                        if std::thread::current().id() == caller {
                            caller_panicking.store(true, Ordering::Release);
                            panic!("caller boom");
                        }
                        started.fetch_add(1, Ordering::AcqRel);
                        // Workers are still inside a task after the caller's panic.
                        wait_until("the caller's panic", || caller_panicking.load(Ordering::Acquire));
                        std::thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 20 }));
                        finished.fetch_add(1, Ordering::AcqRel);
                    })
                }));
                // Read before anything else can let a straggler finish.
                let (s, f) = (started.load(Ordering::Acquire), finished.load(Ordering::Acquire));
                let p = r.expect_err("the caller's panic is propagated");
                assert_eq!(message(&p), "caller boom");
                assert_eq!(s, f, "threads {threads} round {round}: run unwound with {} tasks still running", s - f);
                all_threads_take_part(&team);
                every_task_once(&team, 50);
            }
        }
    }

    /// After a panic no further tasks are claimed; the ones already running finish. (Natively
    /// only: under Miri's scheduler a worker may legitimately claim every task in the short
    /// window before the panic is recorded.)
    #[test]
    #[cfg_attr(miri, ignore)]
    fn tasks_after_a_panic_are_skipped() {
        let team = team(3);
        let ran = AtomicUsize::new(0);
        let panicking = AtomicBool::new(false);
        let n = 10_000;
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(n, &|i| {
                if i == 0 {
                    panicking.store(true, Ordering::Release);
                    panic!("first task");
                }
                // Until task 0 panics, each other thread holds one task.
                wait_until("task 0 to panic", || panicking.load(Ordering::Acquire));
                std::thread::sleep(Duration::from_micros(100));
                ran.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(r.is_err());
        assert!(ran.load(Ordering::Relaxed) < n / 2, "later tasks were skipped: {} ran", ran.load(Ordering::Relaxed));
        every_task_once(&team, 10);
    }

    /// A refused thread is a typed error, not a panic (the OS cannot map a stack this size).
    #[test]
    #[cfg_attr(miri, ignore)]
    fn a_refused_worker_is_an_error() {
        let e = Team::with_stack(3, Some(usize::MAX / 4)).err().expect("an impossible stack is refused");
        let TeamError::Spawn { index, workers, .. } = &e;
        assert_eq!((*index, *workers), (1, 2));
        assert!(e.to_string().starts_with("could not start team worker 1 of 2: "), "{e}");
        every_task_once(&team(3), 10);
    }

    #[test]
    fn a_team_of_one_runs_inline_and_propagates_panics() {
        let team = team(1);
        let r = catch_unwind(AssertUnwindSafe(|| team.run(3, &|_| panic!("inline"))));
        assert_eq!(message(&r.expect_err("propagated")), "inline");
        every_task_once(&team, 5);
    }
}
