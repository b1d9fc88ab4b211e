//! The dynamic batcher: per model, one or more worker threads own the batch loop.
//! Requests hand it their sentences through a bounded channel and wait on one oneshot
//! channel per sentence; a worker gathers the sentences of every concurrent request up to
//! a token budget, waiting at most a short time for more, runs one batched search over
//! them and sends each translation back to the request it came from. With several workers
//! one gathers the next batch while the others search, each on its share of the threads.
//!
//! Batching changes no result: the beam search treats every sentence of a batch on its
//! own (`tests/search_beam.rs` checks it), so a sentence gets the same translation alone
//! or among others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::translate::{Translation, Translator};

/// How a [`Batcher`] gathers sentences.
#[derive(Clone, Copy, Debug)]
pub struct BatcherOptions {
    /// A batch holds at most this many source subwords (a longer sentence goes alone).
    pub max_batch_tokens: usize,
    /// After the first sentence of a batch arrives, wait at most this long for others.
    pub batch_wait: Duration,
    /// Sentences waiting for a batch; a request that would exceed it is refused.
    pub max_queue: usize,
    /// Batches searched at once, each on `threads / workers` of the search threads; 0: one
    /// per search thread on the CPU, one on a GPU ([`crate::device::batch_workers`]).
    /// Here one worker also gathers the next batch while the others search, and leaves
    /// idle workers their share of what it gathered. Measured with `benches/serve_load.sh`
    /// on 2 cores (README): at 32 clients 350 sentences/s, 0.9× of offline translation.
    pub workers: usize,
}

/// A sentence's translation, or why there is none.
pub type Reply = std::result::Result<Translation, String>;

struct Job {
    sentence: String,
    /// The sentence's text has inline markup, whose reassembly needs word alignments.
    aligned: bool,
    reply: oneshot::Sender<Reply>,
}

/// The queue is full: the request is refused (503) rather than kept waiting.
#[derive(Debug)]
pub struct QueueFull;

pub struct Batcher {
    tx: Option<SyncSender<Job>>,
    /// Sentences sent and not yet taken into a batch (the queue bound counts these).
    depth: Arc<AtomicUsize>,
    max_queue: usize,
    threads: Vec<JoinHandle<()>>,
}

/// The translations a request waits for, one receiver per sentence in order. Dropping it
/// (the client went away, or the request timed out) cancels the sentences that no batch
/// has taken yet.
pub struct Pending {
    receivers: Vec<oneshot::Receiver<Reply>>,
}

impl Pending {
    /// The translations in the order of the sentences submitted.
    pub async fn wait(self) -> std::result::Result<Vec<Translation>, String> {
        let mut out = Vec::with_capacity(self.receivers.len());
        for rx in self.receivers {
            out.push(rx.await.map_err(|_| "the batcher stopped".to_string())??);
        }
        Ok(out)
    }
}

impl Batcher {
    /// Starts the batch workers of `translator`; `label` names them in metrics and logs.
    pub fn start(
        translator: Arc<Translator>,
        options: BatcherOptions,
        metrics: Arc<Metrics>,
        label: String,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(options.max_queue);
        let depth = Arc::new(AtomicUsize::new(0));
        let intake = Arc::new(Mutex::new(Intake {
            rx,
            carried: VecDeque::new(),
        }));
        let workers = crate::device::batch_workers(options.workers, translator.device()).max(1);
        let searching = Arc::new(AtomicUsize::new(0));
        // One worker searches on the global pool; several each get a pool of their own.
        let pools: Vec<Option<rayon::ThreadPool>> = match workers {
            1 => vec![None],
            _ => crate::device::worker_pools(workers, &format!("search-{label}"))?
                .into_iter()
                .map(Some)
                .collect(),
        };
        let mut threads = Vec::with_capacity(workers);
        for (w, pool) in pools.into_iter().enumerate() {
            let worker = Worker {
                translator: Arc::clone(&translator),
                intake: Arc::clone(&intake),
                options,
                depth: Arc::clone(&depth),
                workers,
                searching: Arc::clone(&searching),
                metrics: Arc::clone(&metrics),
                label: label.clone(),
                pool,
            };
            let thread = std::thread::Builder::new()
                .name(format!("batcher-{label}-{w}"))
                .spawn(move || worker.run())
                .context("starting a batcher thread")?;
            threads.push(thread);
        }
        Ok(Self {
            tx: Some(tx),
            depth,
            max_queue: options.max_queue,
            threads,
        })
    }

    /// Queues `sentences` (all or none of them); `aligned`: their translations need word
    /// alignments.
    pub fn submit(
        &self,
        sentences: Vec<String>,
        aligned: bool,
    ) -> std::result::Result<Pending, QueueFull> {
        let n = sentences.len();
        // Reserve room for every sentence first, so that a request is never half queued.
        self.depth
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                (d + n <= self.max_queue).then_some(d + n)
            })
            .map_err(|_| QueueFull)?;
        let tx = self
            .tx
            .as_ref()
            .expect("the sender lives as long as the batcher");
        let mut receivers = Vec::with_capacity(n);
        for (i, sentence) in sentences.into_iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            match tx.try_send(Job {
                sentence,
                aligned,
                reply,
            }) {
                Ok(()) => receivers.push(rx),
                // Cannot happen while the depth reservation holds; if it ever does, the
                // sentences sent so far are cancelled by dropping their receivers.
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.depth.fetch_sub(n - i, Ordering::SeqCst);
                    return Err(QueueFull);
                }
            }
        }
        Ok(Pending { receivers })
    }

    /// Sentences waiting for a batch now.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

impl Drop for Batcher {
    /// Closing the channel ends the workers once they have translated what they hold.
    fn drop(&mut self) {
        self.tx = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What the workers share: the queue's receiving end, and the sentences a gathering worker
/// took from it but left for the next batch (the one that did not fit its token budget,
/// or the share it left to an idle worker); they start the next batch, whichever worker
/// gathers it.
struct Intake {
    rx: mpsc::Receiver<Job>,
    carried: VecDeque<(Job, usize)>,
}

struct Worker {
    translator: Arc<Translator>,
    intake: Arc<Mutex<Intake>>,
    options: BatcherOptions,
    depth: Arc<AtomicUsize>,
    /// Batch workers of this model, and how many of them are searching now.
    workers: usize,
    searching: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    label: String,
    /// The worker's own search threads (several workers), or `None`: the global pool.
    pool: Option<rayon::ThreadPool>,
}

impl Worker {
    fn run(&self) {
        loop {
            // One worker gathers at a time; it lets go of the queue before searching.
            let batch = {
                let Ok(mut intake) = self.intake.lock() else {
                    tracing::error!(
                        model = self.label,
                        "the batch queue is unusable: a worker panicked while gathering"
                    );
                    return;
                };
                match self.gather(&mut intake) {
                    // Counted before the queue is let go, so that the next gatherer knows.
                    Some(batch) => {
                        self.searching.fetch_add(1, Ordering::SeqCst);
                        batch
                    }
                    None => return, // every sender is gone: the server is shutting down
                }
            };
            match &self.pool {
                Some(pool) => pool.install(|| self.search(batch)),
                None => self.search(batch),
            }
            self.searching.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// `job` with its source subwords, which count against the batch's token budget.
    fn with_tokens(&self, job: Job) -> (Job, usize) {
        let tokens = self
            .translator
            .source_tokenizer()
            .encode(job.sentence.trim())
            .map_or(1, |ids| ids.len().max(1));
        (job, tokens)
    }

    /// The next batch: sentences up to the token budget, waiting at most `batch_wait`
    /// after the first (sentences carried over have waited already: they wait no more).
    /// `None` once the channel is closed and empty.
    fn gather(&self, intake: &mut Intake) -> Option<Vec<(Job, usize)>> {
        let (options, depth) = (&self.options, &*self.depth);
        let (first, deadline) = match intake.carried.pop_front() {
            Some(job) => (job, Instant::now()),
            None => {
                let job = self.with_tokens(intake.rx.recv().ok()?);
                (job, Instant::now() + options.batch_wait)
            }
        };
        let mut tokens = first.1;
        let mut batch = vec![first];
        while tokens < options.max_batch_tokens {
            let left = deadline.saturating_duration_since(Instant::now());
            // Whatever is already queued joins at once, even after the deadline.
            let next = match intake.carried.pop_front() {
                Some(job) => Ok(job),
                None => match intake.rx.try_recv() {
                    Ok(job) => Ok(self.with_tokens(job)),
                    Err(_) if left.is_zero() => break,
                    Err(_) => intake
                        .rx
                        .recv_timeout(left)
                        .map(|job| self.with_tokens(job)),
                },
            };
            match next {
                Ok((job, t)) => {
                    if tokens + t > options.max_batch_tokens {
                        intake.carried.push_front((job, t));
                        break;
                    }
                    tokens += t;
                    batch.push((job, t));
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        self.leave_share_to_idle_workers(&mut batch, &mut intake.carried);
        // Carried sentences still count as queued: only a batch's leave the queue.
        depth.fetch_sub(batch.len(), Ordering::SeqCst);
        self.metrics
            .set_queue_depth(&self.label, depth.load(Ordering::SeqCst));
        Some(batch)
    }

    /// Keeps this worker's share of `batch` when other workers are idle, and leaves the
    /// rest at the front of the queue for them. Without it, under a closed loop of
    /// clients (each sends its next sentence when the last is answered) all the answers of
    /// one batch come back within the batch wait and are gathered as one batch again: the
    /// load stays in one batch on one worker while the others idle (at 32 clients on 2
    /// workers, every batch held all 32 sentences and the server ran at one core's speed).
    fn leave_share_to_idle_workers(
        &self,
        batch: &mut Vec<(Job, usize)>,
        carried: &mut VecDeque<(Job, usize)>,
    ) {
        // This worker is not searching, so at least one is idle.
        let idle = self
            .workers
            .saturating_sub(self.searching.load(Ordering::SeqCst));
        leave_share(batch, carried, idle);
    }

    /// Searches one batch and answers its requests.
    fn search(&self, mut batch: Vec<(Job, usize)>) {
        let (translator, metrics, label) = (&*self.translator, &*self.metrics, &self.label);
        // Sentences whose request is gone (client closed, timed out) are not translated.
        batch.retain(|(job, _)| !job.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let tokens: usize = batch.iter().map(|(_, t)| t).sum();
        // Alignments come from attention and change no translation: one sentence that
        // needs them has the whole batch searched with them.
        let aligned = batch.iter().any(|(job, _)| job.aligned);
        let (batch, sentences): (Vec<Job>, Vec<String>) = batch
            .into_iter()
            .map(|(mut job, _)| {
                let sentence = std::mem::take(&mut job.sentence);
                (job, sentence)
            })
            .unzip();
        metrics.observe_batch(label, sentences.len(), tokens);
        // A panic in the search must not take the model's batch worker with it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if aligned {
                translator.translate_aligned(&sentences, 1)
            } else {
                translator.translate(&sentences, 1)
            }
        }));
        match result {
            Ok(Ok(translations)) => {
                for (job, t) in batch.into_iter().zip(translations) {
                    let _ = job.reply.send(Ok(t));
                }
            }
            Ok(Err(e)) => {
                tracing::error!(model = label, "translation failed: {e:#}");
                for job in batch {
                    let _ = job.reply.send(Err(format!("Cannot translate text: {e:#}")));
                }
            }
            Err(_) => {
                tracing::error!(model = label, "translation panicked");
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err("Cannot translate text: internal error".into()));
                }
            }
        }
    }
}

/// Keeps the first `1 / idle` of `batch` (rounded up) and puts the rest, in order, at the
/// front of `carried`, before what was there: sentences keep their arrival order.
fn leave_share<T>(batch: &mut Vec<T>, carried: &mut VecDeque<T>, idle: usize) {
    let share = batch.len().div_ceil(idle.max(1));
    for item in batch.drain(share..).rev() {
        carried.push_front(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_workers_get_equal_shares_in_arrival_order() {
        let mut carried = VecDeque::from([100]);
        let mut batch: Vec<i32> = (0..7).collect();
        leave_share(&mut batch, &mut carried, 2);
        assert_eq!(batch, [0, 1, 2, 3]);
        assert_eq!(carried, [4, 5, 6, 100]);

        let mut batch: Vec<i32> = (0..7).collect();
        let mut carried = VecDeque::new();
        leave_share(&mut batch, &mut carried, 3);
        assert_eq!((batch.len(), carried.len()), (3, 4));

        // One idle worker (this one) keeps everything.
        let mut batch: Vec<i32> = (0..7).collect();
        let mut carried = VecDeque::new();
        leave_share(&mut batch, &mut carried, 1);
        assert_eq!((batch.len(), carried.len()), (7, 0));
        leave_share(&mut batch, &mut carried, 0);
        assert_eq!((batch.len(), carried.len()), (7, 0));
    }
}
