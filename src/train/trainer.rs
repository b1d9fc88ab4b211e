//! The training loop: batches → forward → label-smoothed loss → backward → clipping →
//! Adam, with validation, checkpoints, early stopping and exact resume.
//!
//! Everything that influences an update is a function of the config and the saved
//! state: weights come from `init_weights(seed)`, the batch order from
//! `TokenBatcher::epoch(seed, epoch)` and the position `(epoch, batch_index)`, dropout
//! masks from a ChaCha8 stream whose position is saved (or, with several batch workers
//! or ranks, from a stream per (seed, step, worker)). So an interrupted run resumed from a
//! checkpoint performs bit-identical updates to an uninterrupted one (on the same device,
//! thread count and worker count).
//!
//! Each batch is split over `batch_workers` workers, each computing its part's gradient
//! on threads of its own: data parallelism inside the process. Under a data-parallel
//! launcher the trainer also holds a [`Collective`] of several ranks, each splitting its
//! shard over its workers; either way it trains the same model as one worker of one
//! process would ([`data_parallel`] states the contract). Rank 0 alone writes the run
//! folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::batch::{Batch, EncodedPair, TokenBatcher};
use crate::dist::{balanced_shards, Collective, SingleProcess};
use crate::io::write_atomic;
use crate::metrics::{Bleu, BleuConfig};
use crate::model::{bf16_matmul, init_weights, save_model, Model, Task};
use crate::search::{greedy_search, Ensemble, SearchConfig};
use crate::train::checkpoint::{
    self, list_checkpoints, load_tensors, publish_checkpoint, read_state, save_tensors, RunLock,
    TrainState, CONFIG_FILE, MODEL_CARD_FILE, OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE,
};
use crate::train::config::{Precision, TrainConfig};
use crate::train::data_parallel::{self, LookedUpRows, RootState};
use crate::train::ema::{Ema, TRAINING_WEIGHTS_FILE};
use crate::train::log::{MetricsLog, Progress, Record};
use crate::train::loss::OutputLoss;
use crate::train::optim::{clip_scale, global_grad_norm, Adam};
use crate::train::schedule::Schedule;
use crate::train::tune;

/// Dropout gets its own stream, so changing the dropout rate does not change the
/// initial weights.
const DROPOUT_SEED_MIX: u64 = 0x5EED_D80F_0000_0001;

/// The dev set: encoded pairs for perplexity and translation, and the reference text.
pub struct ValidSet {
    pub pairs: Vec<EncodedPair>,
    /// `references[i]` is the target text of `pairs[i]`.
    pub references: Vec<String>,
}

/// Turns target ids (without BOS/EOS) into text for BLEU.
pub type Detokenize<'a> = dyn Fn(&[u32]) -> Result<String> + 'a;

/// An epoch's training pairs segmented anew (subword regularisation), as a function of
/// the epoch.
pub type Resample<'a> = dyn Fn(u64) -> Result<Vec<EncodedPair>> + 'a;

/// What a training run reads besides the config.
pub struct TrainData<'a> {
    pub train: Vec<EncodedPair>,
    /// With `subword_dropout` or `subword_alpha`: each epoch trains on these pairs instead
    /// of `train` (the same sentences in the same order, other segmentations).
    pub resample: Option<Box<Resample<'a>>>,
    pub valid: Option<ValidSet>,
    pub detokenize: Box<Detokenize<'a>>,
    /// Files copied into every model folder written (`best/`): the tokenizers.
    pub model_files: Vec<PathBuf>,
    /// One line for the model card, e.g. "German→English, trained on data/tatoeba".
    pub description: String,
}

/// Why training stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxSteps,
    MaxEpochs,
    MaxMinutes,
    EarlyStopping,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    device: Device,
    varmap: VarMap,
    vars: Vec<Var>,
    model: Model,
    adam: Adam,
    /// The moving average of the weights (`ema_decay > 0`).
    ema: Option<Ema>,
    schedule: Schedule,
    pub state: TrainState,
    rng: ChaCha8Rng,
    /// Step of the last checkpoint written or resumed from.
    last_checkpoint: Option<u64>,
    resumed: bool,
    /// Held while training writes into the run folder.
    lock: Option<RunLock>,
    /// The ranks training together ([`SingleProcess`] unless launched by MPI).
    comm: Rc<dyn Collective>,
    /// The flat gradient buffers of a data-parallel step (this rank's, the ranks' sum),
    /// reused between steps.
    bucket: (Vec<f32>, Vec<f32>),
    /// Seconds spent in this run's data-parallel steps, and in their gradient exchange
    /// (flattening, all-reduce, unflattening), and the floats exchanged, for the summary
    /// at the end.
    step_seconds: f64,
    exchange_seconds: f64,
    exchanged_floats: usize,
    exchanges: usize,
    /// The source embedding's index in `vars`: only its looked-up rows are exchanged.
    source_embedding: Option<usize>,
}

/// One step's gradients of the global batch's mean loss, with its loss figures.
struct StepGradients {
    grads: GradStore,
    /// Training objective per target token (label-smoothed).
    loss: f64,
    /// Cross-entropy per target token (what perplexity is made of).
    nll: f64,
    tokens: usize,
}

/// One part of a batch: the gradient of its scaled summed loss, and its loss sums.
struct PartGradients {
    grads: GradStore,
    /// Summed training objective (label-smoothed) of the part's target tokens.
    sum: f64,
    /// Summed cross-entropy of the part's target tokens.
    nll: f64,
}

/// What computes one part of each batch: threads of its own (none: the caller's) and
/// an output loss of its own (it keeps buffers between steps).
struct BatchWorker {
    pool: Option<rayon::ThreadPool>,
    loss: OutputLoss,
    /// `precision = "bf16"`: the step's products in bf16 on AMX.
    bf16: bool,
}

/// The gradient of `scale` × the summed loss of the pairs `indices`, dropout masks
/// drawn from `rng`.
fn part_gradients(
    model: &Model,
    device: &Device,
    pairs: &[EncodedPair],
    indices: &[usize],
    scale: f64,
    rng: &mut ChaCha8Rng,
    worker: &BatchWorker,
) -> Result<PartGradients> {
    let t = Batch::new(pairs, indices).to_tensors(device)?;
    bf16_matmul::with_bf16_products(worker.bf16, || {
        let features = model.forward_features(&t, Some(rng))?;
        let batch =
            worker
                .loss
                .forward(&features, model.output_layer(), &t.tgt_out, &t.tgt_mask)?;
        let objective = (&batch.sum * scale)?;
        let grads = objective.backward()?;
        Ok(PartGradients {
            grads,
            sum: batch.sum.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            nll: batch.nll,
        })
    })
}

impl Trainer {
    /// A fresh run: weights from `init_weights(cfg.seed)`, zero moments.
    pub fn new(cfg: TrainConfig, device: Device) -> Result<Self> {
        let varmap = VarMap::new();
        let model = Model::new(
            &cfg.model,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )
        .context("building the model of [model]")?;
        init_weights(&varmap, cfg.seed)?;
        let named = named_vars(&varmap);
        let vars = named.iter().map(|(_, v)| v.clone()).collect();
        let source_embedding = named.iter().position(|(name, _)| name == SOURCE_EMBEDDING);
        let ema = match cfg.ema_decay > 0.0 {
            true => Some(Ema::new(cfg.ema_decay, named.clone())?),
            false => None,
        };
        let adam = Adam::new(named, cfg.adam_params())?;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ DROPOUT_SEED_MIX);
        let schedule = Schedule::new(&cfg);
        let mut state = TrainState {
            plateau: schedule.plateau.clone(),
            ..Default::default()
        };
        save_rng(&rng, &mut state);
        Ok(Self {
            cfg,
            device,
            varmap,
            vars,
            model,
            adam,
            ema,
            schedule,
            state,
            rng,
            last_checkpoint: None,
            resumed: false,
            lock: None,
            comm: Rc::new(SingleProcess),
            bucket: (Vec::new(), Vec::new()),
            step_seconds: 0.0,
            exchange_seconds: 0.0,
            exchanged_floats: 0,
            exchanges: 0,
            source_embedding,
        })
    }

    /// Continues the run in `cfg.run_dir` from its latest checkpoint. The model config
    /// must be the checkpoint's; the rest of `cfg` (step limits, validation, …) may
    /// differ.
    pub fn resume(cfg: TrainConfig, device: Device) -> Result<Self> {
        checkpoint::repair_checkpoints(&cfg.run_dir)?;
        let checkpoints = list_checkpoints(&cfg.run_dir)?;
        let Some((_, dir)) = checkpoints.last() else {
            bail!(
                "cannot resume: no checkpoint in {}",
                checkpoint::checkpoints_dir(&cfg.run_dir).display()
            );
        };
        Self::resume_from(cfg, device, dir)
    }

    /// Continues from the checkpoint folder `dir`.
    fn resume_from(cfg: TrainConfig, device: Device, dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let saved = crate::model::load_config(dir)?;
        if saved != cfg.model {
            bail!(
                "{}: the checkpoint's model differs from [model] of the config \
                 (checkpoint {saved:?}, config {:?})",
                config_path.display(),
                cfg.model
            );
        }
        let mut t = Self::new(cfg, device)?;
        // With an average, the checkpoint's model is the average and the weights being
        // trained are beside it; an average turned on at resume starts from the model.
        let weights = dir.join(WEIGHTS_FILE);
        let training = dir.join(TRAINING_WEIGHTS_FILE);
        let trained = if training.is_file() {
            &training
        } else {
            &weights
        };
        crate::model::load_weights_into(&t.varmap, trained)?;
        if let Some(ema) = &mut t.ema {
            ema.load(&load_tensors(&weights)?, &weights.display().to_string())?;
        }
        let state = read_state(&dir.join(STATE_FILE))?;
        let opt_path = dir.join(OPTIMIZER_FILE);
        t.adam.load_state_tensors(
            &load_tensors(&opt_path)?,
            state.step,
            &opt_path.display().to_string(),
        )?;
        t.rng = ChaCha8Rng::from_seed(state.rng_seed);
        t.rng.set_stream(state.rng_stream);
        t.rng.set_word_pos(state.rng_word_pos);
        t.schedule.plateau = state.plateau.clone();
        t.last_checkpoint = Some(state.step);
        t.state = state;
        t.resumed = true;
        Ok(t)
    }

    /// A loss above this has exploded: ten times the cross-entropy of a uniform guess
    /// over the target vocabulary. Initial losses are about one such guess and fall from
    /// there; a diverged run (lr too high) reaches 10^6 and more.
    fn exploding_loss(&self) -> f64 {
        10.0 * (self.cfg.model.tgt_vocab_size.max(2) as f64).ln()
    }

    /// Trains under `lock` (taken by the caller before it read or wrote the run
    /// folder); without one, [`Self::train`] takes it.
    pub fn hold_lock(&mut self, lock: RunLock) {
        self.lock = Some(lock);
    }

    /// Records the fingerprint of `data`'s tokenizers in a fresh run and checks it in a
    /// resumed one: resuming with other prepared data (even with the same vocabulary
    /// sizes) would silently give the run's ids other subwords.
    pub fn check_data(&mut self, data: &TrainData) -> Result<()> {
        let now = checkpoint::data_fingerprint(&data.model_files)?;
        match &self.state.data_fingerprint {
            Some(was) if *was != now => bail!(
                "{}: the run was trained with other prepared data: its tokenizers' sha256 is \
                 {was}, that of {} is {now}; resume with the run's own `data` folder, or \
                 start a new run_dir",
                self.cfg.run_dir.display(),
                data.model_files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            Some(_) => {}
            None => self.state.data_fingerprint = Some(now),
        }
        Ok(())
    }

    /// Trains together with the other ranks of `comm`. Every rank must then call
    /// [`Self::train`] with the same config and data; rank 0's weights, moments and state
    /// (fresh or resumed) become every rank's when training starts.
    pub fn set_collective(&mut self, comm: Rc<dyn Collective>) {
        self.comm = comm;
    }

    /// Rank 0's weights, optimizer moments and training state on every rank.
    fn sync_from_root(&mut self) -> Result<()> {
        let shared = data_parallel::broadcast_root_state(
            &*self.comm,
            RootState {
                state: self.state.clone(),
                last_checkpoint: self.last_checkpoint,
                stop: false,
            },
        )?;
        data_parallel::broadcast_vars(&*self.comm, &self.vars)?;
        if let Some(ema) = &mut self.ema {
            let average = data_parallel::broadcast_tensors(&*self.comm, &ema.tensors()?)?;
            if !self.comm.is_root() {
                ema.load(&average, "rank 0's averaged weights")?;
            }
        }
        let moments = data_parallel::broadcast_tensors(&*self.comm, &self.adam.state_tensors()?)?;
        if !self.comm.is_root() {
            self.adam.load_state_tensors(
                &moments,
                shared.state.step,
                "rank 0's optimizer state",
            )?;
            self.apply_root_state(shared);
        }
        Ok(())
    }

    fn apply_root_state(&mut self, shared: RootState) {
        self.schedule.plateau = shared.state.plateau.clone();
        self.state = shared.state;
        self.last_checkpoint = shared.last_checkpoint;
    }

    /// The gradients of the global batch `global`'s mean loss: from this process alone,
    /// or from this rank's shard summed with the others' ([`data_parallel`]); either way
    /// split over the `workers`.
    fn gradients(
        &mut self,
        pairs: &[EncodedPair],
        global: &[usize],
        workers: &[BatchWorker],
    ) -> Result<StepGradients> {
        let tokens = data_parallel::target_tokens(pairs, global);
        let per_token = 1.0 / tokens.max(1) as f64;
        if self.comm.size() == 1 {
            let part = match workers {
                // The dropout masks come from the run's own stream, saved in checkpoints.
                [one] => part_gradients(
                    &self.model,
                    &self.device,
                    pairs,
                    global,
                    per_token,
                    &mut self.rng,
                    one,
                )?,
                _ => self.worker_gradients(pairs, global, per_token, workers)?,
            };
            return Ok(StepGradients {
                grads: part.grads,
                loss: part.sum * per_token,
                nll: part.nll * per_token,
                tokens,
            });
        }
        let mine = data_parallel::shard(pairs, global, &*self.comm);
        // A rank whose shard is empty (a batch of fewer sentences than ranks) still
        // takes part: it runs one sentence with weight 0, so it has a gradient store
        // of zeros to add.
        let (indices, weight) = match mine.is_empty() {
            true => (&global[..1], 0.0),
            false => (mine, 1.0),
        };
        let PartGradients {
            mut grads,
            sum,
            nll,
        } = self.worker_gradients(pairs, indices, weight * per_token, workers)?;
        let mut totals = [weight * sum, weight * nll];
        let exchange = Instant::now();
        let sparse = self
            .source_embedding
            .map(|var| LookedUpRows::source(var, self.cfg.model.src_vocab_size, pairs, global));
        let (send, summed) = &mut self.bucket;
        data_parallel::flatten_grads(&grads, &self.vars, sparse.as_ref(), send)?;
        summed.resize(send.len(), 0.0);
        self.comm.all_reduce_sum_f32(send, summed)?;
        self.comm.all_reduce_sum_f64(&mut totals)?;
        data_parallel::replace_grads(&mut grads, &self.vars, sparse.as_ref(), summed)?;
        self.exchanged_floats += send.len();
        self.exchanges += 1;
        self.exchange_seconds += exchange.elapsed().as_secs_f64();
        Ok(StepGradients {
            grads,
            loss: totals[0] * per_token,
            nll: totals[1] * per_token,
            tokens,
        })
    }

    /// The gradient of `scale` × the summed loss of the pairs `indices`, split over the
    /// `workers` by balanced target tokens, each part on its worker's threads with the
    /// dropout stream of its rank and worker ([`data_parallel::dropout_rng`]), the parts'
    /// gradients added in worker order (so the sum is the same from run to run).
    fn worker_gradients(
        &self,
        pairs: &[EncodedPair],
        indices: &[usize],
        scale: f64,
        workers: &[BatchWorker],
    ) -> Result<PartGradients> {
        let first_stream = self.comm.rank() * workers.len();
        let (seed, step) = (self.cfg.seed ^ DROPOUT_SEED_MIX, self.state.step);
        let (model, device) = (&self.model, &self.device);
        if let [worker] = workers {
            let mut rng = data_parallel::dropout_rng(seed, step, first_stream);
            return part_gradients(model, device, pairs, indices, scale, &mut rng, worker);
        }
        let tokens: Vec<usize> = indices.iter().map(|&i| pairs[i].tgt_len()).collect();
        let ranges = balanced_shards(&tokens, workers.len());
        let parts: Vec<Result<PartGradients>> = std::thread::scope(|scope| {
            let running: Vec<_> = ranges
                .iter()
                .zip(workers)
                .enumerate()
                .filter(|(_, (range, _))| !range.is_empty())
                .map(|(w, (range, worker))| {
                    let part = &indices[range.clone()];
                    scope.spawn(move || {
                        let run = || {
                            let mut rng = data_parallel::dropout_rng(seed, step, first_stream + w);
                            part_gradients(model, device, pairs, part, scale, &mut rng, worker)
                        };
                        match &worker.pool {
                            Some(pool) => pool.install(run),
                            None => run(),
                        }
                    })
                })
                .collect();
            // Every worker is joined before an error returns (the scope would panic on
            // a panicked worker left unjoined).
            running
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a batch worker panicked")))
                })
                .collect()
        });
        let mut parts = parts.into_iter().collect::<Result<Vec<_>>>()?;
        let mut total = parts.remove(0);
        if parts.is_empty() {
            return Ok(total);
        }
        // Each variable's gradients added on the process's threads, variables in parallel.
        let summed: Vec<Option<Tensor>> = {
            let stores: Vec<&GradStore> = std::iter::once(&total.grads)
                .chain(parts.iter().map(|p| &p.grads))
                .collect();
            self.vars
                .par_iter()
                .map(|var| -> Result<Option<Tensor>> {
                    let mut sum: Option<Tensor> = None;
                    for g in stores.iter().filter_map(|s| s.get(var.as_tensor())) {
                        sum = Some(match sum {
                            None => g.clone(),
                            Some(s) => (s + g)?,
                        });
                    }
                    Ok(sum)
                })
                .collect::<Result<_>>()?
        };
        for (var, sum) in self.vars.iter().zip(summed) {
            if let Some(sum) = sum {
                total.grads.insert(var.as_tensor(), sum);
            }
        }
        for part in parts {
            total.sum += part.sum;
            total.nll += part.nll;
        }
        Ok(total)
    }

    /// The workers each batch is split over (`batch_workers`): with more than one, each
    /// has its share of the threads.
    fn batch_workers(&self) -> Result<Vec<BatchWorker>> {
        let n = crate::device::batch_workers(self.cfg.batch_workers, &self.device);
        let bf16 = self.cfg.precision == Precision::Bf16;
        if bf16 && !(self.device.is_cpu() && bf16_matmul::available()) {
            bail!(
                "precision = \"bf16\" runs the training step's products on Intel AMX, and {}: \
                 use precision = \"f32\"",
                match self.device.is_cpu() {
                    true => "this CPU has no AMX-BF16 (Xeon of the 4th generation, Sapphire Rapids, or later)",
                    false => "this run is on a GPU",
                }
            );
        }
        let loss = || OutputLoss::new(self.cfg.label_smoothing);
        if n <= 1 {
            return Ok(vec![BatchWorker {
                pool: None,
                loss: loss(),
                bf16,
            }]);
        }
        Ok(crate::device::worker_pools(n, "train")?
            .into_iter()
            .map(|pool| BatchWorker {
                pool: Some(pool),
                loss: loss(),
                bf16,
            })
            .collect())
    }

    /// Rank 0's value of `x` on every rank: decisions every rank must take alike (the
    /// time limit) follow rank 0's clock.
    fn root_value(&self, x: f64) -> Result<f64> {
        if self.comm.size() == 1 {
            return Ok(x);
        }
        let mut buf = [if self.comm.is_root() { x } else { 0.0 }];
        self.comm.all_reduce_sum_f64(&mut buf)?;
        Ok(buf[0])
    }

    /// Validation and a checkpoint on rank 0 (the only rank with a `log`), then rank 0's
    /// state on every rank. Returns true when early stopping ends the run.
    fn checkpoint_step(
        &mut self,
        data: &TrainData,
        log: Option<&mut MetricsLog>,
        progress: &Progress,
    ) -> Result<bool> {
        let stop = match log {
            Some(log) => self.validate_and_checkpoint(data, log, progress)?,
            None => false,
        };
        if self.comm.size() == 1 {
            return Ok(stop);
        }
        let shared = data_parallel::broadcast_root_state(
            &*self.comm,
            RootState {
                state: self.state.clone(),
                last_checkpoint: self.last_checkpoint,
                stop,
            },
        )?;
        let stop = shared.stop;
        if !self.comm.is_root() {
            self.apply_root_state(shared);
        }
        Ok(stop)
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Trains until a limit or early stopping; writes checkpoints, `best/`, the metrics
    /// log and the learning curve into `cfg.run_dir`.
    pub fn train(&mut self, data: &TrainData) -> Result<StopReason> {
        if data.train.is_empty() {
            bail!("no training pairs");
        }
        let run_dir = self.cfg.run_dir.clone();
        let root = self.comm.is_root();
        if root && self.lock.is_none() {
            self.lock = Some(RunLock::acquire(&run_dir)?);
        }
        if self.comm.size() > 1 {
            self.sync_from_root()?;
        }
        self.check_data(data)?;
        let mut log = match root {
            true => {
                checkpoint::repair_run(&run_dir, self.state.best_step, &data.model_files)?;
                Some(MetricsLog::open(
                    &run_dir,
                    self.resumed.then_some(self.state.step),
                )?)
            }
            false => None,
        };
        let limit = (self.cfg.max_steps > 0).then_some(self.cfg.max_steps);
        let batcher = TokenBatcher::new(self.cfg.max_tokens, self.cfg.seed);
        // For the bar's ETA: the step limit, or the epoch limit in steps (epochs differ
        // in batch count only slightly).
        let per_epoch = batcher.epoch(&data.train, self.state.epoch).len() as u64;
        let epoch_limit = (self.cfg.max_epochs > 0).then(|| self.cfg.max_epochs * per_epoch);
        let total = match (limit, epoch_limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut progress = match root {
            true => Progress::new(total, self.state.step),
            false => Progress::hidden(),
        };
        if self.comm.size() > 1 {
            progress.println(&format!(
                "data-parallel training over {}: each global batch split over the ranks",
                self.comm.describe()
            ));
        }
        let workers = self.batch_workers()?;
        if workers.len() > 1 {
            progress.println(&format!(
                "each batch split over {} workers of {} thread(s) each",
                workers.len(),
                workers[0]
                    .pool
                    .as_ref()
                    .map_or(1, |p| p.current_num_threads())
            ));
        }
        let started = Instant::now();
        let elapsed_before = self.state.elapsed_s;
        let elapsed = |s: &Instant| elapsed_before + s.elapsed().as_secs_f64();

        let reason = 'run: loop {
            if self.cfg.max_epochs > 0 && self.state.epoch >= self.cfg.max_epochs {
                break 'run StopReason::MaxEpochs;
            }
            let resampled;
            let pairs = match &data.resample {
                Some(resample) => {
                    resampled = resample(self.state.epoch)?;
                    resampled.as_slice()
                }
                None => data.train.as_slice(),
            };
            let batches = batcher.epoch(pairs, self.state.epoch);
            while self.state.batch_index < batches.len() {
                if limit.is_some_and(|n| self.state.step >= n) {
                    break 'run StopReason::MaxSteps;
                }
                // Rank 0's clock, as a fraction of the time budget (0 without one).
                let budget_fraction = match self.cfg.max_minutes > 0.0 {
                    true => self.root_value(elapsed(&started))? / (self.cfg.max_minutes * 60.0),
                    false => 0.0,
                };
                if budget_fraction >= 1.0 {
                    break 'run StopReason::MaxMinutes;
                }
                let step_started = Instant::now();
                let StepGradients {
                    grads,
                    loss,
                    nll,
                    tokens,
                } = self.gradients(pairs, &batches[self.state.batch_index], &workers)?;
                let norm = global_grad_norm(&grads, &self.vars)?;
                if !norm.is_finite() || !loss.is_finite() || loss > self.exploding_loss() {
                    // The update would ruin the weights: skip it (the batch is used up).
                    self.state.batch_index += 1;
                    self.state.bad_steps += 1;
                    progress.println(&format!(
                        "step {}: update skipped: loss {loss}, gradient norm {norm} \
                         ({} in a row)",
                        self.state.step + 1,
                        self.state.bad_steps
                    ));
                    if self.state.bad_steps >= self.cfg.max_bad_steps {
                        let last = match self.last_checkpoint {
                            Some(s) => format!(
                                "the last good checkpoint is {}",
                                checkpoint::checkpoint_dir(&run_dir, s).display()
                            ),
                            None => "no checkpoint was written".to_string(),
                        };
                        bail!(
                            "training diverged at step {}: {} updates in a row had a \
                             non-finite or exploding loss (max_bad_steps); {last}. \
                             Resume with a lower lr or clip_norm (--set lr=…)",
                            self.state.step + 1,
                            self.state.bad_steps
                        );
                    }
                    continue;
                }
                self.state.bad_steps = 0;
                let lr = self.schedule.lr_at(self.state.step + 1, budget_fraction);
                self.adam
                    .step(&grads, lr, clip_scale(norm, self.cfg.clip_norm))?;
                self.state.step += 1;
                self.state.batch_index += 1;
                if let Some(ema) = &mut self.ema {
                    ema.update(self.state.step)?;
                }
                crate::io::crash_point("train.step");
                self.state.target_tokens_seen += tokens as u64;
                let step_seconds = step_started.elapsed().as_secs_f64();
                self.step_seconds += step_seconds;
                let tokens_per_s = tokens as f64 / step_seconds;
                progress.update(
                    self.state.step,
                    self.state.epoch,
                    loss,
                    nll.exp(),
                    tokens_per_s,
                    lr,
                );
                if let Some(log) = log
                    .as_mut()
                    .filter(|_| self.state.step.is_multiple_of(self.cfg.log_every))
                {
                    log.write(&Record::Train {
                        step: self.state.step,
                        epoch: self.state.epoch,
                        loss,
                        ppl: nll.exp(),
                        lr,
                        grad_norm: norm,
                        target_tokens: tokens,
                        tokens_per_s,
                        elapsed_s: elapsed(&started),
                    })?;
                }
                if self.cfg.valid_every > 0 && self.state.step.is_multiple_of(self.cfg.valid_every)
                {
                    self.state.elapsed_s = elapsed(&started);
                    if self.checkpoint_step(data, log.as_mut(), &progress)? {
                        break 'run StopReason::EarlyStopping;
                    }
                }
            }
            self.state.epoch += 1;
            self.state.batch_index = 0;
        };
        if self.last_checkpoint != Some(self.state.step) {
            self.state.elapsed_s = elapsed(&started);
            self.checkpoint_step(data, log.as_mut(), &progress)?;
        }
        progress.finish();
        progress.println(&format!(
            "training stopped ({reason:?}) after {} steps",
            self.state.step
        ));
        if self.comm.size() > 1 && self.step_seconds > 0.0 {
            progress.println(&format!(
                "gradient exchange: {:.1} MB per step, {:.1}% of rank 0's step time \
                 (flatten, all-reduce over {} ranks, unflatten)",
                self.exchanged_floats as f64 * 4.0 / 1e6 / self.exchanges.max(1) as f64,
                100.0 * self.exchange_seconds / self.step_seconds,
                self.comm.size()
            ));
        }
        if root && self.cfg.tune_search {
            self.tune_best_search(data, &progress)?;
        }
        Ok(reason)
    }

    /// Validates (when there is a dev set), writes a checkpoint, updates `best/` and the
    /// early-stopping state, all with the averaged weights when there is an average.
    /// Returns true when patience has run out.
    fn validate_and_checkpoint(
        &mut self,
        data: &TrainData,
        log: &mut MetricsLog,
        progress: &Progress,
    ) -> Result<bool> {
        let Some(ema) = &self.ema else {
            return self.validate_and_write(data, log, progress, None);
        };
        let raw = ema.swap_in()?;
        let out = self.validate_and_write(data, log, progress, Some(&raw));
        if let Some(ema) = &self.ema {
            ema.restore(&raw)?;
        }
        out
    }

    /// [`Self::validate_and_checkpoint`] with the weights to validate in the model;
    /// `training_weights`: those training goes on with, when they differ.
    fn validate_and_write(
        &mut self,
        data: &TrainData,
        log: &mut MetricsLog,
        progress: &Progress,
        training_weights: Option<&HashMap<String, Tensor>>,
    ) -> Result<bool> {
        let mut is_best = data.valid.is_none();
        let mut stop = false;
        let mut validation = None;
        if let Some(valid) = &data.valid {
            let v = self.validate(valid, &*data.detokenize)?;
            let score = v.score();
            is_best = self.state.best_score.is_none_or(|b| score > b);
            if is_best {
                self.state.best_score = Some(score);
                self.state.best_step = Some(self.state.step);
                self.state.bad_validations = 0;
            } else {
                self.state.bad_validations += 1;
                stop = self.cfg.patience > 0 && self.state.bad_validations >= self.cfg.patience;
            }
            if self.schedule.observe(score) {
                progress.println(&format!(
                    "no {} improvement: learning rate decayed to {:.3e}",
                    v.score_name(),
                    self.schedule.lr(self.state.step + 1)
                ));
            }
            let bleu = v
                .bleu
                .as_ref()
                .map_or(String::new(), |b| format!(" BLEU {:.2}", b.score));
            progress.println(&format!(
                "step {} valid loss {:.4} ppl {:.2}{bleu}{}",
                self.state.step,
                v.loss,
                v.loss.exp(),
                if is_best { " (best)" } else { "" }
            ));
            log.write(&Record::Valid {
                step: self.state.step,
                epoch: self.state.epoch,
                valid_loss: v.loss,
                valid_ppl: v.loss.exp(),
                bleu: v.bleu.as_ref().map_or(f64::NAN, |b| b.score),
                bleu_signature: v
                    .bleu
                    .as_ref()
                    .map_or(String::new(), |b| b.signature.clone()),
                sentences: v.sentences,
                best: is_best,
            })?;
            validation = Some(v);
        } else {
            self.state.best_step = Some(self.state.step);
        }
        let card = self.model_card(data, validation.as_ref());
        self.write_checkpoint(card, is_best, &data.model_files, training_weights)?;
        Ok(stop)
    }

    /// Chooses α and β for `best/` by beam search on the dev set ([`tune`]) and writes
    /// them into its `config.json`, the grid into its model card. Translation models with
    /// a dev set only.
    fn tune_best_search(&self, data: &TrainData, progress: &Progress) -> Result<()> {
        let (Some(valid), Task::Translation) = (&data.valid, self.cfg.model.task) else {
            return Ok(());
        };
        let best = checkpoint::best_dir(&self.cfg.run_dir);
        if !best.join(WEIGHTS_FILE).is_file() {
            return Ok(());
        }
        let n = self.valid_subset_len(valid);
        let chosen = tune::tune_model_folder(
            &best,
            &valid.pairs[..n],
            &valid.references[..n],
            &*data.detokenize,
            self.cfg.valid_max_tokens,
            &self.device,
        )?;
        if let Some(chosen) = chosen {
            progress.println(&tune::report(&best, chosen));
        }
        Ok(())
    }

    /// The dev sentences translated for BLEU: the first `valid_max_sentences` (0: all).
    fn valid_subset_len(&self, valid: &ValidSet) -> usize {
        match self.cfg.valid_max_sentences {
            0 => valid.pairs.len(),
            n => n.min(valid.pairs.len()),
        }
    }

    /// `best/README.md`: what the model is and how it was trained.
    fn model_card(&self, data: &TrainData, v: Option<&Validation>) -> String {
        let m = &self.cfg.model;
        let architecture = match m.task {
            Task::Translation => format!(
                "Stacked-{} encoder–decoder with attention (rnmt {}): {} encoder layers \
                 (bidirectional: {:?}), {} decoder layers, hidden size {}, embeddings {}, \
                 attention {:?}, input feeding {}, vocabularies {} / {}.",
                m.cell.name(),
                env!("CARGO_PKG_VERSION"),
                m.encoder_layers,
                m.bidirectional,
                m.decoder_layers,
                m.hidden_size,
                m.embedding_size,
                m.attention,
                m.input_feeding,
                m.src_vocab_size,
                m.tgt_vocab_size,
            ),
            Task::Lm => format!(
                "Recurrent language model (rnmt {}): {} {} layers, hidden size {}, \
                 embeddings {}{}, vocabulary {}.",
                env!("CARGO_PKG_VERSION"),
                m.decoder_layers,
                m.cell.name(),
                m.hidden_size,
                m.embedding_size,
                if m.tie_target_embeddings {
                    " (tied with the output layer)"
                } else {
                    ""
                },
                m.tgt_vocab_size,
            ),
        };
        let mut card = format!(
            "# rnmt model\n\n{}\n\n{architecture}\n\n\
             Trained for {} updates ({} full epochs, {} target tokens, {:.1} minutes), seed {}, \
             schedule {:?}, peak lr {}, label smoothing {}, dropout {}{}.\n",
            data.description,
            self.state.step,
            self.state.epoch,
            self.state.target_tokens_seen,
            self.state.elapsed_s / 60.0,
            self.cfg.seed,
            self.cfg.schedule,
            self.cfg.lr,
            self.cfg.label_smoothing,
            m.dropout,
            if self.cfg.ema_decay > 0.0 {
                format!(
                    "; the weights are their exponential moving average (decay {})",
                    self.cfg.ema_decay
                )
            } else {
                String::new()
            },
        );
        match v {
            Some(Validation {
                bleu: Some(b),
                loss,
                sentences,
            }) => {
                card += &format!(
                    "\nValidation at this step (greedy decoding, {sentences} sentences): BLEU {:.2} \
                     ({}), perplexity {:.2}.\n",
                    b.score,
                    b.signature,
                    loss.exp()
                );
            }
            Some(Validation {
                bleu: None,
                loss,
                sentences,
            }) => {
                card += &format!(
                    "\nValidation at this step ({sentences} sentences): perplexity {:.2} per \
                     subword (end of sentence included).\n",
                    loss.exp()
                );
            }
            None => {}
        }
        card
    }

    /// Writes the checkpoint of this step with its model `card`; `is_best`: it also
    /// becomes `best/`. `training_weights`: the weights training goes on with, when the
    /// model saved is an average.
    fn write_checkpoint(
        &mut self,
        card: String,
        is_best: bool,
        model_files: &[PathBuf],
        training_weights: Option<&HashMap<String, Tensor>>,
    ) -> Result<()> {
        let run_dir = self.cfg.run_dir.clone();
        debug_assert_eq!(self.adam.t, self.state.step, "one Adam update per step");
        self.state.plateau = self.schedule.plateau.clone();
        save_rng(&self.rng, &mut self.state);
        let state_json = serde_json::to_string_pretty(&self.state)?;
        let moments = self.adam.state_tensors()?;
        let dir = publish_checkpoint(&run_dir, self.state.step, |dir| {
            save_model(dir, &self.cfg.model, &self.varmap)?;
            save_tensors(&dir.join(OPTIMIZER_FILE), &moments)?;
            if let Some(weights) = training_weights {
                save_tensors(&dir.join(TRAINING_WEIGHTS_FILE), weights)?;
            }
            write_atomic(&dir.join(MODEL_CARD_FILE), card.as_bytes())?;
            // Last: a checkpoint folder with a state is complete.
            write_atomic(&dir.join(STATE_FILE), state_json.as_bytes())
        })?;
        self.last_checkpoint = Some(self.state.step);
        if is_best {
            checkpoint::publish_best(&run_dir, &dir, model_files)?;
        }
        checkpoint::prune_checkpoints(&run_dir, self.cfg.keep_last, self.state.best_step)
    }

    /// Perplexity on the whole dev set and, for a translation model, BLEU of greedy
    /// translations of its first `valid_max_sentences` sentences.
    pub fn validate(&self, valid: &ValidSet, detokenize: &Detokenize) -> Result<Validation> {
        let nll_fn = OutputLoss::new(0.0);
        // Bucketed batches; their order does not matter for sums.
        let batcher = TokenBatcher::new(self.cfg.valid_max_tokens, 0);
        let (mut sum, mut tokens) = (0f64, 0usize);
        for idx in batcher.epoch(&valid.pairs, 0) {
            let t = Batch::new(&valid.pairs, &idx).to_tensors(&self.device)?;
            let features = self.model.forward_features(&t, None)?;
            let output = self.model.output_layer();
            let batch = nll_fn.forward(&features, output, &t.tgt_out, &t.tgt_mask)?;
            sum += batch.nll;
            tokens += batch.tokens;
        }
        let loss = sum / tokens.max(1) as f64;
        let model = match &self.model {
            Model::Translation(m) => m,
            // A language model has no translations to score: its perplexity is the score.
            Model::Language(_) => {
                return Ok(Validation {
                    loss,
                    bleu: None,
                    sentences: valid.pairs.len(),
                })
            }
        };
        let n = self.valid_subset_len(valid);
        let subset = &valid.pairs[..n];
        let mut hyps = vec![String::new(); n];
        // The search `rnmt translate --beam 1` runs, with the model's length bound (α
        // and β only change the scores, not greedy tokens).
        let ens = Ensemble::single(model);
        let search = SearchConfig {
            beam: 1,
            nbest: 1,
            ..SearchConfig::for_model(&self.cfg.model)
        };
        for idx in batcher.epoch(subset, 0) {
            let sources: Vec<Vec<u32>> = idx.iter().map(|&i| subset[i].src.clone()).collect();
            let out = greedy_search(&ens, &sources, &search, &self.device)?;
            for (&i, h) in idx.iter().zip(out) {
                hyps[i] = detokenize(&h.tokens)?;
            }
        }
        let refs = vec![valid.references[..n].to_vec()];
        let score = Bleu::new(BleuConfig::default()).corpus_score(&hyps, &refs)?;
        Ok(Validation {
            loss,
            bleu: Some(ValidBleu {
                score: score.score,
                signature: score.signature(),
            }),
            sentences: n,
        })
    }
}

pub struct Validation {
    /// Cross-entropy per target token.
    pub loss: f64,
    /// Of greedy translations (translation models only).
    pub bleu: Option<ValidBleu>,
    pub sentences: usize,
}

pub struct ValidBleu {
    pub score: f64,
    pub signature: String,
}

impl Validation {
    /// What early stopping and the plateau schedule compare (higher is better): BLEU,
    /// or for a language model the negative cross-entropy.
    pub fn score(&self) -> f64 {
        self.bleu.as_ref().map_or(-self.loss, |b| b.score)
    }

    fn score_name(&self) -> &'static str {
        if self.bleu.is_some() {
            "BLEU"
        } else {
            "perplexity"
        }
    }
}

/// The source embedding's variable: its gradient is zero outside the rows a batch
/// looks up ([`LookedUpRows`]).
const SOURCE_EMBEDDING: &str = "encoder.embedding.weight";

fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("variable map lock poisoned");
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn save_rng(rng: &ChaCha8Rng, state: &mut TrainState) {
    state.rng_seed = rng.get_seed();
    state.rng_stream = rng.get_stream();
    state.rng_word_pos = rng.get_word_pos();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::train::log::{read_metrics, METRICS_FILE};

    /// Digit strings → the same digits reversed, shifted by 10.
    fn data() -> TrainData<'static> {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let train = (0..40)
            .map(|_| {
                use rand::Rng;
                let len = rng.random_range(2..6);
                let src: Vec<u32> = (0..len).map(|_| rng.random_range(4..14)).collect();
                let tgt = src.iter().rev().map(|&x| x + 10).collect();
                EncodedPair { src, tgt }
            })
            .collect();
        TrainData {
            train,
            resample: None,
            valid: None,
            detokenize: Box::new(|ids: &[u32]| Ok(format!("{ids:?}"))),
            model_files: Vec::new(),
            description: "synthetic".into(),
        }
    }

    fn config(run_dir: &Path, max_steps: u64, lr: f64) -> TrainConfig {
        TrainConfig {
            run_dir: run_dir.to_path_buf(),
            max_tokens: 40,
            max_steps,
            max_epochs: 0,
            lr,
            warmup_steps: 0,
            valid_every: 4,
            model: ModelConfig {
                src_vocab_size: 24,
                tgt_vocab_size: 24,
                embedding_size: 8,
                hidden_size: 8,
                encoder_layers: 1,
                decoder_layers: 1,
                ..ModelConfig::default()
            },
            ..TrainConfig::default()
        }
    }

    #[test]
    fn divergence_skips_updates_then_stops_with_the_last_checkpoint_intact() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let run = dir.path().join("run");
        Trainer::new(config(&run, 4, 1e-3), Device::Cpu)?.train(&data())?;
        let ckpt = checkpoint::checkpoint_dir(&run, 4);
        let weights = std::fs::read(ckpt.join(WEIGHTS_FILE))?;

        // lr 10^6: the first update blows the weights up, every later loss explodes.
        let mut t = Trainer::resume(config(&run, 40, 1e6), Device::Cpu)?;
        let e = format!("{:#}", t.train(&data()).unwrap_err());
        assert!(
            e.contains("diverged") && e.contains("5 updates in a row") && e.contains("step-4"),
            "{e}"
        );
        assert_eq!(t.state.step, 5, "one update made, then five skipped");
        assert_eq!(std::fs::read(ckpt.join(WEIGHTS_FILE))?, weights);
        let steps: Vec<u64> = list_checkpoints(&run)?.iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![4]);
        // Every line is JSON without null (a non-finite number is left out).
        let text = std::fs::read_to_string(run.join(METRICS_FILE))?;
        assert!(!text.contains("null") && !text.contains("inf"), "{text}");
        read_metrics(&run.join(METRICS_FILE))?;
        drop(t); // and its run-folder lock

        // The run goes on from its last checkpoint with a sane learning rate.
        let mut t = Trainer::resume(config(&run, 8, 1e-3), Device::Cpu)?;
        assert_eq!(t.state.step, 4);
        t.train(&data())?;
        assert_eq!(t.state.step, 8);
        Ok(())
    }

    #[test]
    fn resuming_with_other_prepared_data_is_an_error() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let run = dir.path().join("run");
        let tok = dir.path().join("tokenizer-src.json");
        std::fs::write(&tok, "one vocabulary")?;
        let mut d = data();
        d.model_files = vec![tok.clone()];
        Trainer::new(config(&run, 4, 1e-3), Device::Cpu)?.train(&d)?;
        // Same size, other contents.
        std::fs::write(&tok, "two vocabulary")?;
        let mut t = Trainer::resume(config(&run, 8, 1e-3), Device::Cpu)?;
        let e = format!("{:#}", t.train(&d).unwrap_err());
        assert!(
            e.contains("other prepared data") && e.contains("tokenizer-src.json"),
            "{e}"
        );
        assert_eq!(t.state.step, 4);
        drop(t);
        std::fs::write(&tok, "one vocabulary")?;
        Trainer::resume(config(&run, 8, 1e-3), Device::Cpu)?.train(&d)?;
        Ok(())
    }
}
