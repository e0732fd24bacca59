//! One task that commits requests in batches: it takes everything queued
//! (up to a batch), commits it in one go, and only then answers each
//! request. SQLite's writer (every write, `sqlite/group_commit.rs`) and
//! PostgreSQL's submissions (`postgres/submit.rs`) are such tasks: one
//! commit, one fsync, for many requests.
//!
//! The task is supervised: a commit that panics answers its requests with
//! an error and the task goes on with the next batch, so one bad request
//! never stops every later write. The panics are counted for `/readyz`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tracing::error;

use super::StoreResult;

/// Requests that may wait for the task; past this, callers wait to be
/// queued.
const QUEUE: usize = 4096;

struct Request<W, A> {
    write: W,
    reply: oneshot::Sender<StoreResult<A>>,
}

/// The queue of a batching task.
pub(super) struct Batcher<W, A> {
    queue: mpsc::Sender<Request<W, A>>,
    panics: Arc<AtomicU64>,
}

impl<W, A> Clone for Batcher<W, A> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
            panics: self.panics.clone(),
        }
    }
}

impl<W: Send + 'static, A: Send + 'static> Batcher<W, A> {
    /// Starts the task; `commit` writes a batch and answers each of its
    /// requests, in order. The task ends when the last `Batcher` is dropped.
    pub(super) fn start<C, F>(max_batch: usize, commit: C) -> Batcher<W, A>
    where
        C: Fn(Vec<W>) -> F + Send + 'static,
        F: Future<Output = Vec<StoreResult<A>>> + Send + 'static,
    {
        let (queue, requests) = mpsc::channel(QUEUE);
        let panics = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(requests, max_batch, commit, panics.clone()));
        Batcher { queue, panics }
    }

    /// Writes `write`; answers after the commit that holds it.
    pub(super) async fn write(&self, write: W) -> StoreResult<A> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request { write, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the batching writer has stopped"))?;
        answer.await.context("the batching writer has stopped")?
    }

    /// How many batches panicked (and were answered with an error).
    pub(super) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

async fn run<W, A, C, F>(
    mut requests: mpsc::Receiver<Request<W, A>>,
    max_batch: usize,
    commit: C,
    panics: Arc<AtomicU64>,
) where
    C: Fn(Vec<W>) -> F,
    F: Future<Output = Vec<StoreResult<A>>>,
{
    let mut batch = Vec::with_capacity(max_batch);
    while requests.recv_many(&mut batch, max_batch).await > 0 {
        let (writes, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|request| (request.write, request.reply))
            .unzip();
        let count = writes.len();
        let answers = match std::panic::AssertUnwindSafe(commit(writes))
            .catch_unwind()
            .await
        {
            Ok(answers) => answers,
            Err(panic) => {
                panics.fetch_add(1, Ordering::Relaxed);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|text| text.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!(panic = %what, "a batch of writes panicked; its requests fail, the writer goes on");
                (0..count)
                    .map(|_| Err(anyhow::anyhow!("the writer failed on this batch: {what}")))
                    .collect()
            }
        };
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A caller that went away (its client hung up) still had its
            // write committed, as a lone transaction's would have been.
            let _ = reply.send(answer);
        }
    }
}
