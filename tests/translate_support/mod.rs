//! A tiny "de→en" model trained in the test process on a synthetic word-by-word task
//! (seconds), saved as a complete model folder (config, weights, tokenizers) and shared
//! by the tests of one binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rnmt::batch::{Batch, EncodedPair};
use rnmt::model::{
    init_weights, load_model, save_model, AttentionKind, Bidirectional, ModelConfig, Seq2Seq,
};
use rnmt::subword::{SubwordConfig, SubwordKind, SubwordModel, SOURCE_TOKENIZER, TARGET_TOKENIZER};
use rnmt::train::loss::LabelSmoothedLoss;

pub struct TinyModel {
    _tmp: tempfile::TempDir,
    /// The model folder.
    pub dir: PathBuf,
    /// A second model (other seed, shorter training) with the same tokenizers, for
    /// ensembles.
    pub other: PathBuf,
    /// Held-out source sentences (another seed of the same generator).
    pub sentences: Vec<String>,
}

impl TinyModel {
    pub fn load(&self) -> Seq2Seq {
        load_model(&self.dir, &Device::Cpu).unwrap().0
    }

    pub fn load_other(&self) -> Seq2Seq {
        load_model(&self.other, &Device::Cpu).unwrap().0
    }

    pub fn source(&self) -> SubwordModel {
        SubwordModel::load(&self.dir.join(SOURCE_TOKENIZER)).unwrap()
    }

    pub fn target(&self) -> SubwordModel {
        SubwordModel::load(&self.dir.join(TARGET_TOKENIZER)).unwrap()
    }

    /// A lexical shortlist learned from the training pairs (5 EM iterations, `keep`
    /// translations per source subword).
    pub fn shortlist(&self, keep: usize) -> rnmt::search::Shortlist {
        let (src, tgt) = (self.source(), self.target());
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = training_pairs()
            .iter()
            .map(|(s, t)| (src.encode(s).unwrap(), tgt.encode(t).unwrap()))
            .collect();
        let it = pairs.iter().map(|(s, t)| (s.as_slice(), t.as_slice()));
        rnmt::search::Shortlist::learn(it, src.vocab_size(), tgt.vocab_size(), 5, keep).unwrap()
    }

    /// The first `n` held-out sentences as source subword ids.
    pub fn encoded(&self, n: usize) -> Vec<Vec<u32>> {
        let tok = self.source();
        self.sentences[..n]
            .iter()
            .map(|s| tok.encode(s).unwrap())
            .collect()
    }
}

/// A made-up German→English task: word-by-word translation of simple sentences, with
/// a few words that have two translations (so search has real choices to make).
const NOUNS: [(&str, &[&str]); 8] = [
    ("Hund", &["dog"]),
    ("Katze", &["cat"]),
    ("Mann", &["man"]),
    ("Frau", &["woman"]),
    ("Kind", &["child", "kid"]),
    ("Ball", &["ball"]),
    ("Haus", &["house", "home"]),
    ("Baum", &["tree"]),
];
const VERBS: [(&str, &[&str]); 4] = [
    ("jagt", &["chases"]),
    ("sieht", &["sees", "watches"]),
    ("mag", &["likes"]),
    ("hat", &["has"]),
];
const ADJECTIVES: [(&str, &[&str]); 4] = [
    ("rote", &["red"]),
    ("große", &["big", "large"]),
    ("kleine", &["small", "little"]),
    ("alte", &["old"]),
];

/// Every English word of the task, lowercased.
pub fn english_words() -> Vec<&'static str> {
    let translations = NOUNS.iter().chain(&VERBS).chain(&ADJECTIVES);
    let mut words: Vec<&str> = translations
        .flat_map(|(_, en)| en.iter().copied())
        .collect();
    words.push("the");
    words
}

fn pick<'a>(rng: &mut ChaCha8Rng, words: &[(&'a str, &'a [&'a str])]) -> (&'a str, &'a str) {
    let (de, en) = words[rng.random_range(0..words.len())];
    // The first translation is the more frequent one.
    let e = if en.len() > 1 && rng.random_bool(0.35) {
        en[1]
    } else {
        en[0]
    };
    (de, e)
}

/// A synthetic sentence pair.
pub fn sentence_pair(rng: &mut ChaCha8Rng) -> (String, String) {
    let mut de = vec!["Der".to_string()];
    let mut en = vec!["The".to_string()];
    let phrase = |rng: &mut ChaCha8Rng, de: &mut Vec<String>, en: &mut Vec<String>| {
        if rng.random_bool(0.5) {
            let (d, e) = pick(rng, &ADJECTIVES);
            de.push(d.into());
            en.push(e.into());
        }
        let (d, e) = pick(rng, &NOUNS);
        de.push(d.into());
        en.push(e.into());
    };
    phrase(rng, &mut de, &mut en);
    let (d, e) = pick(rng, &VERBS);
    de.push(d.into());
    en.push(e.into());
    de.push("die".into());
    en.push("the".into());
    phrase(rng, &mut de, &mut en);
    (de.join(" ") + ".", en.join(" ") + ".")
}

/// The shared model (trained on first use).
pub fn tiny_model() -> &'static TinyModel {
    static MODEL: OnceLock<TinyModel> = OnceLock::new();
    MODEL.get_or_init(build)
}

/// The tiny model's training pairs.
pub fn training_pairs() -> Vec<(String, String)> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (0..2000).map(|_| sentence_pair(&mut rng)).collect()
}

fn build() -> TinyModel {
    let start = std::time::Instant::now();
    let pairs = training_pairs();
    let learn = |side: Vec<&str>| {
        let cfg = SubwordConfig {
            kind: SubwordKind::Bpe,
            vocab_size: 300,
            min_frequency: 2,
        };
        SubwordModel::learn(&cfg, side.into_iter()).unwrap()
    };
    let src_tok = learn(pairs.iter().map(|p| p.0.as_str()).collect());
    let tgt_tok = learn(pairs.iter().map(|p| p.1.as_str()).collect());
    let encoded: Vec<EncodedPair> = pairs
        .iter()
        .map(|(d, e)| EncodedPair {
            src: src_tok.encode(d).unwrap(),
            tgt: tgt_tok.encode(e).unwrap(),
        })
        .collect();
    let cfg = ModelConfig {
        src_vocab_size: src_tok.vocab_size(),
        tgt_vocab_size: tgt_tok.vocab_size(),
        embedding_size: 32,
        hidden_size: 64,
        encoder_layers: 1,
        decoder_layers: 1,
        bidirectional: Bidirectional::Bottom,
        dropout: 0.0,
        attention: AttentionKind::Dot,
        max_decode_len_a: 1.5,
        max_decode_len_b: 5,
        ..ModelConfig::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    let other = tmp.path().join("tiny-other");
    for (path, seed, steps) in [(&dir, 1, 300), (&other, 2, 60)] {
        let varmap = train(&cfg, &encoded, seed, steps);
        save_model(path, &cfg, &varmap).unwrap();
        src_tok.save(&path.join(SOURCE_TOKENIZER)).unwrap();
        tgt_tok.save(&path.join(TARGET_TOKENIZER)).unwrap();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let sentences = (0..100).map(|_| sentence_pair(&mut rng).0).collect();
    eprintln!("tiny model trained in {:.1?}", start.elapsed());
    TinyModel {
        _tmp: tmp,
        dir,
        other,
        sentences,
    }
}

fn train(cfg: &ModelConfig, pairs: &[EncodedPair], seed: u64, steps: usize) -> VarMap {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = Seq2Seq::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
    init_weights(&varmap, seed).unwrap();
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 2e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let loss_fn = LabelSmoothedLoss::new(0.1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut last = f32::NAN;
    for _ in 0..steps {
        let rows: Vec<usize> = (0..32).map(|_| rng.random_range(0..pairs.len())).collect();
        let bt = Batch::new(pairs, &rows).to_tensors(&device).unwrap();
        let logits = model.forward(&bt, None).unwrap();
        let (total, tokens) = loss_fn.forward(&logits, &bt.tgt_out, &bt.tgt_mask).unwrap();
        let loss = (total / tokens as f64).unwrap();
        opt.backward_step(&loss).unwrap();
        last = loss.to_scalar::<f32>().unwrap();
    }
    eprintln!("seed {seed}: {steps} steps, last loss {last:.3}");
    varmap
}
