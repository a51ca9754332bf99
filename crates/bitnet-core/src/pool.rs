//! A lean thread pool for kernels: one call fans `n_tasks` out over persistent workers.
//!
//! Decode calls the GEMV about 200 times per token, so the cost per call matters more
//! than generality. Workers spin briefly on a generation counter before parking on a
//! condvar; the calling thread takes tasks too; tasks are claimed with one atomic
//! `fetch_add` each. A call made from inside a task runs inline (no deadlock).
//!
//! The caller never waits for a worker that has not started: it waits only for tasks that
//! were claimed. On a loaded machine a descheduled worker therefore costs nothing, where
//! a pool that waits for every worker to check in stalls every call (measured: decode at
//! 5 tokens/s instead of 21 with a second process busy on the other core).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job = dyn Fn(usize) + Sync;

/// How many times a worker polls for new work before parking.
const SPIN_ITERS: u32 = 20_000;

struct Shared {
    /// The current job, valid while `open`; a type-erased `&Job`.
    job: Mutex<Option<JobPtr>>,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    generation: AtomicU64,
    /// Tasks of the current job that have finished.
    done: AtomicUsize,
    /// Whether workers may still join the current job.
    open: AtomicBool,
    /// Workers inside the current job.
    active: AtomicUsize,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    park: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync`, and `run` keeps it alive until every worker is done with it.
unsafe impl Send for JobPtr {}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// A fixed set of worker threads (the caller counts as one of `n_threads`).
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
    n_threads: usize,
}

impl ThreadPool {
    /// A pool where `n_threads` threads (including the caller) run each job; 0 means
    /// the number of available cores.
    pub fn new(n_threads: usize) -> Self {
        let n_threads = if n_threads == 0 { default_threads() } else { n_threads };
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            open: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("bitnet-worker-{i}"))
                    .spawn(move || worker_loop(&s))
                    .expect("spawning a kernel worker thread")
            })
            .collect();
        ThreadPool { shared, workers, run_lock: Mutex::new(()), n_threads }
    }

    /// Threads that run each job, the caller included.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(i)` for every `i` in `0..n_tasks` across the pool and returns when all are done.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 || IN_POOL.with(Cell::get) {
            (0..n_tasks).for_each(f);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: erases the lifetime of `f`; the job is closed and every worker that joined
        // it has left before `run` returns, so no worker touches `f` afterwards.
        let ptr: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobPtr(ptr));
        s.n_tasks.store(n_tasks, SeqCst);
        s.next.store(0, SeqCst);
        s.done.store(0, SeqCst);
        s.open.store(true, SeqCst);
        s.generation.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _p = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        IN_POOL.with(|c| c.set(true));
        claim_tasks(s, f);
        IN_POOL.with(|c| c.set(false));
        // Wait for tasks that workers claimed, then close the job and wait for the workers
        // inside it to leave (they are past their last claim by then).
        wait_until(|| s.done.load(Acquire) >= n_tasks);
        s.open.store(false, SeqCst);
        wait_until(|| s.active.load(SeqCst) == 0);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Splits `0..len` into about `n_threads * per_thread` contiguous chunks, each a multiple
    /// of `align` long (except the last), and runs `f(start..end)` for each.
    pub fn run_chunks(
        &self,
        len: usize,
        align: usize,
        per_thread: usize,
        f: &(dyn Fn(std::ops::Range<usize>) + Sync),
    ) {
        let align = align.max(1);
        let units = len.div_ceil(align);
        let chunks = (self.n_threads * per_thread.max(1)).min(units).max(1);
        let per = units.div_ceil(chunks) * align;
        let n = len.div_ceil(per.max(1));
        self.run(n, &|i| f(i * per..((i + 1) * per).min(len)));
    }
}

impl ThreadPool {
    /// Splits `data` into chunks of `chunk` elements (the last may be shorter) and runs
    /// `f(chunk_index, chunk)` for each, in parallel.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let len = data.len();
        let n = len.div_ceil(chunk);
        let base = SendPtr(data.as_mut_ptr());
        self.run(n, &|i| {
            let start = i * chunk;
            let end = (start + chunk).min(len);
            // SAFETY: each task index i is run exactly once, and the ranges
            // [i*chunk, min((i+1)*chunk, len)) are disjoint and inside `data`, which is
            // mutably borrowed for the whole call.
            let s = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(i, s);
        });
    }
}

struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}
// SAFETY: only used to hand out disjoint sub-slices of a `&mut [T]` with `T: Send`.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; shared access never aliases because ranges are disjoint.
unsafe impl<T: Send> Sync for SendPtr<T> {}

fn claim_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync + '_)) {
    let n = s.n_tasks.load(Acquire);
    loop {
        let i = s.next.fetch_add(1, AcqRel);
        if i >= n {
            break;
        }
        f(i);
        s.done.fetch_add(1, AcqRel);
    }
}

/// Spins briefly, then yields, until `cond` holds.
fn wait_until(cond: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !cond() {
        spins += 1;
        if spins < 1 << 12 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn worker_loop(s: &Shared) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let gen = loop {
            let g = s.generation.load(Acquire);
            if g != seen || s.shutdown.load(Acquire) {
                break g;
            }
            if spins < SPIN_ITERS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let guard = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            let g = s.generation.load(SeqCst);
            if g == seen && !s.shutdown.load(SeqCst) {
                drop(s.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
            }
            s.sleepers.fetch_sub(1, SeqCst);
        };
        if s.shutdown.load(Acquire) {
            return;
        }
        seen = gen;
        // Join the job only while it is open (SeqCst pairs with `run`'s close + `active` check).
        s.active.fetch_add(1, SeqCst);
        if s.open.load(SeqCst) && s.generation.load(SeqCst) == gen {
            let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(JobPtr(p)) = job {
                // SAFETY: the job is open, so `run` has not returned and `p` is valid; `run`
                // waits for `active` to drop to zero before invalidating it.
                let f = unsafe { &*p };
                claim_tasks(s, f);
            }
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _p = self.shared.park.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The number of cores available to this process (1 if unknown).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 3, 4] {
            let pool = ThreadPool::new(threads);
            for n in [0usize, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, &|i| {
                    hits[i].fetch_add(1, Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "threads={threads} n={n}");
            }
        }
    }

    #[test]
    fn many_back_to_back_calls_and_parked_workers() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for _ in 0..2000 {
            pool.run(4, &|i| {
                total.fetch_add(i, Relaxed);
            });
        }
        assert_eq!(total.load(Relaxed), 2000 * 6);
        std::thread::sleep(std::time::Duration::from_millis(50)); // workers park
        pool.run(3, &|i| {
            total.fetch_add(i, Relaxed);
        });
        assert_eq!(total.load(Relaxed), 2000 * 6 + 3);
    }

    #[test]
    fn nested_run_executes_inline() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                total.fetch_add(1, Relaxed);
            })
        });
        assert_eq!(total.load(Relaxed), 12);
    }

    #[test]
    fn for_each_chunk_mut_writes_every_element_once() {
        let pool = ThreadPool::new(3);
        let mut v = vec![0usize; 1001];
        pool.for_each_chunk_mut(&mut v, 10, &|i, c| {
            for (j, x) in c.iter_mut().enumerate() {
                *x += i * 10 + j;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
    }

    #[test]
    fn chunks_cover_the_range_aligned() {
        let pool = ThreadPool::new(2);
        let seen = Mutex::new(Vec::new());
        pool.run_chunks(1000, 16, 4, &|r| seen.lock().unwrap().push(r));
        let mut v = seen.into_inner().unwrap();
        v.sort_by_key(|r| r.start);
        assert_eq!(v.first().unwrap().start, 0);
        assert_eq!(v.last().unwrap().end, 1000);
        for w in v.windows(2) {
            assert_eq!(w[0].end, w[1].start);
            assert_eq!(w[0].start % 16, 0);
        }
    }
}
