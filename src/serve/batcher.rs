//! The dynamic batcher: one thread per model owns the batch loop. Requests hand it their
//! sentences through a bounded channel and wait on one oneshot channel per sentence; the
//! loop gathers the sentences of every concurrent request up to a token budget, waiting
//! at most a short time for more, runs one batched search over them and sends each
//! translation back to the request it came from.
//!
//! Batching changes no result: the beam search treats every sentence of a batch on its
//! own (`tests/search_beam.rs` checks it), so a sentence gets the same translation alone
//! or among others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
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
    thread: Option<JoinHandle<()>>,
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
    /// Starts the batch thread of `translator`; `label` names it in metrics and logs.
    pub fn start(
        translator: Arc<Translator>,
        options: BatcherOptions,
        metrics: Arc<Metrics>,
        label: String,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(options.max_queue);
        let depth = Arc::new(AtomicUsize::new(0));
        let loop_depth = Arc::clone(&depth);
        let thread = std::thread::Builder::new()
            .name(format!("batcher-{label}"))
            .spawn(move || batch_loop(&translator, &rx, options, &loop_depth, &metrics, &label))
            .context("starting a batcher thread")?;
        Ok(Self {
            tx: Some(tx),
            depth,
            max_queue: options.max_queue,
            thread: Some(thread),
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
    /// Closing the channel ends the loop once it has translated what it holds.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn batch_loop(
    translator: &Translator,
    rx: &mpsc::Receiver<Job>,
    options: BatcherOptions,
    depth: &AtomicUsize,
    metrics: &Metrics,
    label: &str,
) {
    let tokens_of = |job: &Job| -> usize {
        translator
            .source_tokenizer()
            .encode(job.sentence.trim())
            .map_or(1, |ids| ids.len().max(1))
    };
    let mut carried: Option<(Job, usize)> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => {
                    depth.fetch_sub(1, Ordering::SeqCst);
                    let t = tokens_of(&job);
                    (job, t)
                }
                Err(_) => return, // every sender is gone: the server is shutting down
            },
        };
        let mut tokens = first.1;
        let mut batch = vec![first];
        let deadline = Instant::now() + options.batch_wait;
        while tokens < options.max_batch_tokens {
            let left = deadline.saturating_duration_since(Instant::now());
            // Whatever is already queued joins at once, even after the deadline.
            let next = match rx.try_recv() {
                Ok(job) => Ok(job),
                Err(_) if left.is_zero() => break,
                Err(_) => rx.recv_timeout(left),
            };
            match next {
                Ok(job) => {
                    depth.fetch_sub(1, Ordering::SeqCst);
                    let t = tokens_of(&job);
                    if tokens + t > options.max_batch_tokens {
                        carried = Some((job, t));
                        break;
                    }
                    tokens += t;
                    batch.push((job, t));
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        metrics.set_queue_depth(label, depth.load(Ordering::SeqCst));
        // Sentences whose request is gone (client closed, timed out) are not translated.
        batch.retain(|(job, _)| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
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
        // A panic in the search must not take the model's only batch thread with it.
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
