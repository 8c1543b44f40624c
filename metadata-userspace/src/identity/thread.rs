//! The thread identity signatures are made on: one of its own, at the
//! lowest CPU priority (nice 19), so that the serving threads preempt it.
//!
//! An RSA-2048 signature costs about 0.6 ms of CPU. On tokio's blocking
//! pool (normal priority) a guest asking for tokens flat out took a core
//! and raised another guest's p99 about 5x on a 2-core machine (`cargo
//! xtask bench --only identity`). Here signing only gets the CPU time the
//! serving threads leave, and tokens queue behind one another, never
//! ahead of other requests.

use std::sync::mpsc;

use log::warn;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
pub struct SigningThread {
    jobs: mpsc::Sender<Job>,
}

/// The niceness of the signing thread: the lowest priority.
const NICE: libc::c_int = 19;

impl SigningThread {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("mdr-sign".into())
            .spawn(move || {
                lower_priority();
                for job in queue {
                    job();
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the signing thread; `None` if that thread is gone.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The request may have gone meanwhile (client closed): then
            // nobody waits for the result, and dropping it is right.
            if done.send(f()).is_err() {
                log::debug!("a signature nobody waits for any more");
            }
        });
        self.jobs.send(job).ok()?;
        result.await.ok()
    }
}

/// Nice 19 for the calling thread only (Linux's setpriority with a thread
/// id).
fn lower_priority() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain syscall on this thread's id.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) };
    if ret != 0 {
        warn!(
            "lowering the signing thread's priority: {}; it signs at normal priority",
            std::io::Error::last_os_error()
        );
    }
}
