//! Group commit: one task makes writes durable for many callers at once.
//!
//! Every acknowledged write must be durable (invariant 7), and an fsync costs about a
//! millisecond here. Instead of each writer flushing on its own, a writer takes a ticket and
//! waits; the committer task flushes the store and syncs the audit log, then releases every
//! ticket taken before that flush began. Throughput then grows with the number of concurrent
//! writers instead of being capped at one fsync per write.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};

/// What the committer has finished: every ticket up to `upto` is durable, unless `failed_upto`
/// covers it, in which case its flush failed and the write must not be acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Committed {
    upto: u64,
    failed_upto: u64,
}

/// Makes everything written so far durable.
pub type FlushFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("commit failed: {0}")]
pub struct CommitError(pub String);

pub struct GroupCommit {
    issued: AtomicU64,
    wake: Notify,
    committed: watch::Sender<Committed>,
    flushes: AtomicU64,
    flush_micros: AtomicU64,
}

/// How the committer has been doing, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    pub commits: u64,
    pub flushes: u64,
    pub flush_micros: u64,
}

impl GroupCommit {
    /// Starts the committer task on the current Tokio runtime.
    pub fn start(flush: FlushFn) -> Arc<Self> {
        let this = Arc::new(Self {
            issued: AtomicU64::new(0),
            wake: Notify::new(),
            committed: watch::channel(Committed::default()).0,
            flushes: AtomicU64::new(0),
            flush_micros: AtomicU64::new(0),
        });
        let committer = Arc::clone(&this);
        tokio::spawn(async move { committer.run(flush).await });
        this
    }

    async fn run(&self, flush: FlushFn) {
        let mut last_error = String::new();
        loop {
            let done = self.committed.borrow().upto;
            // Tickets issued up to now; each was taken after its write was applied.
            let target = self.issued.load(Ordering::Acquire);
            if target == done {
                self.wake.notified().await;
                continue;
            }
            let started = std::time::Instant::now();
            let result = flush().await;
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.flush_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            match result {
                Ok(()) => self.committed.send_modify(|c| c.upto = target),
                Err(e) => {
                    if e != last_error {
                        tracing::error!(error = %e, "group commit flush failed");
                        last_error = e;
                    }
                    self.committed.send_modify(|c| {
                        c.upto = target;
                        c.failed_upto = target;
                    });
                }
            }
        }
    }

    pub fn stats(&self) -> CommitStats {
        CommitStats {
            commits: self.issued.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            flush_micros: self.flush_micros.load(Ordering::Relaxed),
        }
    }

    /// Waits until everything this task wrote before calling is durable.
    pub async fn commit(&self) -> Result<(), CommitError> {
        let ticket = self.issued.fetch_add(1, Ordering::AcqRel) + 1;
        let mut committed = self.committed.subscribe();
        self.wake.notify_one();
        loop {
            let state = *committed.borrow_and_update();
            if state.upto >= ticket {
                return if state.failed_upto >= ticket {
                    Err(CommitError("storage could not be made durable".into()))
                } else {
                    Ok(())
                };
            }
            if committed.changed().await.is_err() {
                return Err(CommitError("committer stopped".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_writers_share_flushes_and_all_are_released() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&flushes);
        let flush: FlushFn = Arc::new(move || {
            let counter = Arc::clone(&counter);
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                Ok(())
            })
        });
        let commit = GroupCommit::start(flush);
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let commit = Arc::clone(&commit);
                tokio::spawn(async move { commit.commit().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..200).contains(&n), "200 commits took {n} flushes");
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_waiters() {
        let flush: FlushFn = Arc::new(|| Box::pin(async { Err("disk gone".to_owned()) }));
        let commit = GroupCommit::start(flush);
        assert!(commit.commit().await.is_err());
    }
}
