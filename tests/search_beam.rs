//! Beam search on a tiny trained model: beam 1 is greedy, n-best lists are sorted,
//! distinct and scored as forced decoding scores them, batching changes nothing, ensembles
//! average log-probabilities. (How the beam width trades off against the model score is
//! tested on the shipped model, in tests/shipped_models.rs.)

mod translate_support;

use candle_core::{Device, Tensor, D};
use rnmt::batch::{Batch, EncodedPair};
use rnmt::model::Seq2Seq;
use rnmt::search::{
    beam_search, beam_search_with_prefixes, force_decode, greedy_search, search, Ensemble,
    Hypothesis, SearchConfig, ShortlistSize,
};
use rnmt::subword::{BOS_ID, EOS_ID};
use translate_support::tiny_model;

fn config(beam: usize, alpha: f32, beta: f32, nbest: usize) -> SearchConfig {
    SearchConfig {
        beam,
        alpha,
        beta,
        nbest,
        max_len_a: 1.5,
        max_len_b: 5,
        keep_attention: false,
    }
}

/// Greedy decoding spelled out on the model's step API, one sentence at a time and with
/// a tensor argmax: the reference that the batched searches must reproduce.
fn reference_greedy(model: &Seq2Seq, source: &[u32], max_len: usize) -> Vec<u32> {
    let pair = EncodedPair {
        src: source.to_vec(),
        tgt: Vec::new(),
    };
    let bt = Batch::new(&[pair], &[0]).to_tensors(&Device::Cpu).unwrap();
    let enc = model.encode(&bt.src, &bt.src_mask).unwrap();
    let mut state = model.decoder_init(&enc).unwrap();
    let mut out = Vec::new();
    while out.len() < max_len {
        let prev = Tensor::new(&[out.last().copied().unwrap_or(BOS_ID)], &Device::Cpu).unwrap();
        let (log_probs, next, _) = model.decoder_step(&enc, &state, &prev, None).unwrap();
        let best = log_probs
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()[0];
        if best == EOS_ID {
            break;
        }
        out.push(best);
        state = next;
    }
    out
}

#[test]
fn beam_one_equals_greedy() {
    let tiny = tiny_model();
    let model = tiny.load();
    let ens = Ensemble::single(&model);
    let sources = tiny.encoded(40);
    // One length bound for all, as the reference takes one.
    let cfg = SearchConfig {
        max_len_a: 0.0,
        max_len_b: 20,
        ..config(1, 0.0, 0.0, 1)
    };
    let beam = beam_search(&ens, &sources, &cfg, &Device::Cpu).unwrap();
    let fast = greedy_search(&ens, &sources, &cfg, &Device::Cpu).unwrap();
    let reference: Vec<Vec<u32>> = sources
        .iter()
        .map(|s| reference_greedy(&model, s, 20))
        .collect();
    let mut ended = 0;
    for (i, ((b, f), r)) in beam.iter().zip(&fast).zip(&reference).enumerate() {
        assert_eq!(b.len(), 1);
        assert_eq!(&b[0].tokens, r, "sentence {i}: beam 1 vs the reference");
        assert_eq!(&f.tokens, r, "sentence {i}: greedy fast path");
        assert_eq!(b[0].ended, f.ended);
        assert!((b[0].log_prob - f.log_prob).abs() < 1e-4, "sentence {i}");
        ended += usize::from(f.ended);
    }
    // The model is trained: most outputs end on their own.
    assert!(ended >= 30, "only {ended}/40 outputs ended with EOS");
}

fn assert_sorted_distinct(nbest: &[Hypothesis], what: &str) {
    for w in nbest.windows(2) {
        assert!(w[0].score >= w[1].score, "{what}: not sorted: {w:?}");
    }
    for (a, h) in nbest.iter().enumerate() {
        for g in &nbest[a + 1..] {
            assert!(
                (&h.tokens, h.ended) != (&g.tokens, g.ended),
                "{what}: duplicate {:?}",
                h.tokens
            );
        }
    }
}

#[test]
fn nbest_lists_are_sorted_distinct_and_match_forced_decoding() {
    let tiny = tiny_model();
    let model = tiny.load();
    let ens = Ensemble::single(&model);
    let sources = tiny.encoded(25);
    for (alpha, beta) in [(0.6, 0.2), (0.0, 0.0), (1.0, 0.0)] {
        let cfg = config(5, alpha, beta, 5);
        let out = beam_search(&ens, &sources, &cfg, &Device::Cpu).unwrap();
        for (i, nbest) in out.iter().enumerate() {
            assert!(!nbest.is_empty() && nbest.len() <= 5);
            assert_sorted_distinct(nbest, &format!("sentence {i}, α={alpha}, β={beta}"));
        }
        let found: usize = out.iter().map(Vec::len).sum();
        assert!(found >= 4 * sources.len(), "n-best lists too short");
        assert_scored_as_forced_decoding(&ens, &sources, &out, &cfg);
    }
}

/// Every hypothesis in `out` (n-best lists of `sources`) has the log-probability and
/// score that forced decoding gives its output.
fn assert_scored_as_forced_decoding(
    ens: &Ensemble,
    sources: &[Vec<u32>],
    out: &[Vec<Hypothesis>],
    cfg: &SearchConfig,
) {
    let mut srcs = Vec::new();
    let mut outputs = Vec::new();
    let mut found = Vec::new();
    for (src, nbest) in sources.iter().zip(out) {
        for h in nbest {
            srcs.push(src.clone());
            outputs.push((h.tokens.clone(), h.ended));
            found.push(h);
        }
    }
    let rescored = force_decode(ens, &srcs, &outputs, cfg, &Device::Cpu).unwrap();
    for (h, r) in found.iter().zip(&rescored) {
        assert!(
            (h.log_prob - r.log_prob).abs() < 1e-3 && (h.score - r.score).abs() < 1e-3,
            "α={}, β={}: search {}/{} vs forced decoding {}/{} for {:?}",
            cfg.alpha,
            cfg.beta,
            h.log_prob,
            h.score,
            r.log_prob,
            r.score,
            h.tokens
        );
    }
}

#[test]
fn prefix_decoding_forces_the_start_and_scores_it_as_forced_decoding_does() {
    let tiny = tiny_model();
    let model = tiny.load();
    let ens = Ensemble::single(&model);
    let sources = tiny.encoded(12);
    let cfg = config(4, 0.6, 0.2, 3);
    let plain = beam_search(&ens, &sources, &cfg, &Device::Cpu).unwrap();
    // An empty prefix is plain search, exactly.
    let empty = vec![Vec::new(); sources.len()];
    assert_eq!(
        beam_search_with_prefixes(&ens, &sources, &empty, &cfg, &Device::Cpu).unwrap(),
        plain
    );
    // Each sentence is forced to start as the next sentence's best output does: a start
    // the model does not pick for it. The last sentence gets no prefix.
    let mut prefixes: Vec<Vec<u32>> = (1..sources.len())
        .map(|j| plain[j][0].tokens.iter().take(3).copied().collect())
        .collect();
    prefixes.push(Vec::new());
    assert!(
        prefixes
            .iter()
            .zip(&plain)
            .filter(|(p, n)| !p.is_empty() && !n[0].tokens.starts_with(p))
            .count()
            >= 3,
        "the prefixes must differ from what search finds alone"
    );
    let out = beam_search_with_prefixes(&ens, &sources, &prefixes, &cfg, &Device::Cpu).unwrap();
    assert_eq!(out.last(), plain.last(), "no prefix: as plain search");
    for (i, nbest) in out.iter().enumerate() {
        assert!(!nbest.is_empty());
        assert_sorted_distinct(nbest, &format!("sentence {i} with a prefix"));
        for h in nbest {
            assert!(
                h.tokens.starts_with(&prefixes[i]),
                "sentence {i}: {:?} does not start with {:?}",
                h.tokens,
                prefixes[i]
            );
        }
    }
    // The prefix is scored: log-probability and score are forced decoding's of the whole
    // output.
    assert_scored_as_forced_decoding(&ens, &sources, &out, &cfg);
}

#[test]
fn batching_does_not_change_results() {
    let tiny = tiny_model();
    let model = tiny.load();
    let ens = Ensemble::single(&model);
    let sources = tiny.encoded(16);
    for cfg in [config(1, 0.6, 0.2, 1), config(4, 0.6, 0.2, 2)] {
        let batched = search(&ens, &sources, &cfg, &Device::Cpu).unwrap();
        for (i, src) in sources.iter().enumerate() {
            let alone = search(&ens, std::slice::from_ref(src), &cfg, &Device::Cpu).unwrap();
            let (a, b) = (&alone[0], &batched[i]);
            assert_eq!(a.len(), b.len(), "sentence {i}");
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x.tokens, y.tokens, "sentence {i}, beam {}", cfg.beam);
                assert!((x.score - y.score).abs() < 1e-4, "sentence {i}");
            }
        }
    }
}

#[test]
fn ensembles_average_log_probabilities() {
    let tiny = tiny_model();
    let (a, b) = (tiny.load(), tiny.load_other());
    let sources = tiny.encoded(12);
    let cfg = config(3, 0.0, 0.0, 1);
    let pair = Ensemble::new(vec![&a, &b]).unwrap();
    let out = beam_search(&pair, &sources, &cfg, &Device::Cpu).unwrap();
    let outputs: Vec<(Vec<u32>, bool)> = out
        .iter()
        .map(|h| (h[0].tokens.clone(), h[0].ended))
        .collect();
    let score = |ens: &Ensemble| force_decode(ens, &sources, &outputs, &cfg, &Device::Cpu).unwrap();
    let (both, alone_a, alone_b) = (
        score(&pair),
        score(&Ensemble::single(&a)),
        score(&Ensemble::single(&b)),
    );
    let mut differ = 0;
    for i in 0..sources.len() {
        let mean = (alone_a[i].log_prob + alone_b[i].log_prob) / 2.0;
        assert!((both[i].log_prob - mean).abs() < 1e-3, "sentence {i}");
        assert!((both[i].log_prob - out[i][0].log_prob).abs() < 1e-3);
        differ += usize::from((alone_a[i].log_prob - alone_b[i].log_prob).abs() > 1e-2);
    }
    assert!(differ > 0, "the two members score identically");
    // A model twice is the model.
    let twice = Ensemble::new(vec![&a, &a]).unwrap();
    let single = Ensemble::single(&a);
    let x = beam_search(&twice, &sources, &cfg, &Device::Cpu).unwrap();
    let y = beam_search(&single, &sources, &cfg, &Device::Cpu).unwrap();
    for (p, q) in x.iter().zip(&y) {
        assert_eq!(p[0].tokens, q[0].tokens);
    }
}

#[test]
fn attention_rows_cover_every_step() {
    let tiny = tiny_model();
    let model = tiny.load();
    let ens = Ensemble::single(&model);
    let sources = tiny.encoded(6);
    for beam in [1, 3] {
        let cfg = SearchConfig {
            keep_attention: true,
            ..config(beam, 0.6, 0.2, 1)
        };
        let out = search(&ens, &sources, &cfg, &Device::Cpu).unwrap();
        for (src, h) in sources.iter().zip(&out) {
            let att = h[0].attention.as_ref().expect("attention kept");
            assert_eq!(att.len(), h[0].steps());
            for row in att {
                assert_eq!(row.len(), src.len() + 1);
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-3, "attention row sums to {sum}");
            }
        }
    }
}

#[test]
fn shortlist_search_is_full_search_with_the_other_words_masked() {
    // Normalising over the shortlist's columns is the full softmax with every other
    // target subword's bias at -inf: same outputs, same scores.
    let tiny = tiny_model();
    let (model, cfg, vars) = rnmt::model::load_model_with_vars(&tiny.dir, &Device::Cpu).unwrap();
    let list = tiny.shortlist(10);
    let sources = tiny.encoded(24);
    let size = ShortlistSize {
        frequent: 8,
        per_word: 2,
    };
    let ids = list.target_ids(&sources, size);
    assert!(
        ids.len() * 2 < cfg.tgt_vocab_size,
        "{} of {} target ids: not a real restriction",
        ids.len(),
        cfg.tgt_vocab_size
    );
    let restricted = Ensemble::single(&model).with_shortlist(&list, size);
    let short: Vec<Vec<Vec<Hypothesis>>> = [config(1, 0.6, 0.2, 1), config(4, 0.6, 0.2, 2)]
        .iter()
        .map(|cfg| search(&restricted, &sources, cfg, &Device::Cpu).unwrap())
        .collect();

    let bias_var = vars
        .data()
        .lock()
        .unwrap()
        .get("decoder.output.bias")
        .expect("the output bias")
        .clone();
    let mut bias = bias_var.as_tensor().to_vec1::<f32>().unwrap();
    let mut outside = 0;
    for (id, b) in bias.iter_mut().enumerate() {
        if ids.binary_search(&(id as u32)).is_err() {
            *b = -1e30;
            outside += 1;
        }
    }
    assert!(outside > 0);
    bias_var
        .set(&Tensor::new(bias.as_slice(), &Device::Cpu).unwrap())
        .unwrap();
    let full = Ensemble::single(&model);
    let mut changed = 0;
    for (i, cfg) in [config(1, 0.6, 0.2, 1), config(4, 0.6, 0.2, 2)]
        .iter()
        .enumerate()
    {
        let masked = search(&full, &sources, cfg, &Device::Cpu).unwrap();
        for (j, (a, b)) in short[i].iter().zip(&masked).enumerate() {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x.tokens, y.tokens, "beam {}, sentence {j}", cfg.beam);
                assert!((x.log_prob - y.log_prob).abs() < 1e-3, "sentence {j}");
                assert!(x.tokens.iter().all(|t| ids.binary_search(t).is_ok()));
            }
        }
    }
    // The restriction matters: unmasked search uses other subwords on some sentence, or
    // scores differ (the shortlist renormalises).
    let unmasked = tiny.load();
    let plain = search(
        &Ensemble::single(&unmasked),
        &sources,
        &config(4, 0.6, 0.2, 2),
        &Device::Cpu,
    )
    .unwrap();
    for (a, b) in short[1].iter().zip(&plain) {
        changed += usize::from((a[0].log_prob - b[0].log_prob).abs() > 1e-4);
    }
    assert!(changed > 0, "the shortlist changed no score");
}

#[test]
fn looked_up_bottom_projections_search_like_computed_ones() {
    // `load_model` prepares for search (the bottom layer's E·W_ih as a table);
    // `load_model_with_vars` does not: both must find the same outputs with the same scores.
    let tiny = tiny_model();
    let prepared = tiny.load();
    let (plain, cfg, _) = rnmt::model::load_model_with_vars(&tiny.dir, &Device::Cpu).unwrap();
    assert!(!cfg.input_feeding, "the table exists for the GNMT wiring");
    let sources = tiny.encoded(20);
    for cfg in [config(1, 0.6, 0.2, 1), config(4, 0.6, 0.2, 2)] {
        let a = search(&Ensemble::single(&prepared), &sources, &cfg, &Device::Cpu).unwrap();
        let b = search(&Ensemble::single(&plain), &sources, &cfg, &Device::Cpu).unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            for (p, q) in x.iter().zip(y) {
                assert_eq!(p.tokens, q.tokens, "sentence {i}, beam {}", cfg.beam);
                assert!((p.log_prob - q.log_prob).abs() < 1e-4, "sentence {i}");
            }
        }
    }
}

#[test]
fn ensembles_search_over_the_shortlist_too() {
    let tiny = tiny_model();
    let (a, b) = (tiny.load(), tiny.load_other());
    let list = tiny.shortlist(10);
    let size = ShortlistSize {
        frequent: 8,
        per_word: 2,
    };
    let sources = tiny.encoded(12);
    let ids = list.target_ids(&sources, size);
    let cfg = config(3, 0.0, 0.0, 1);
    let pair = Ensemble::new(vec![&a, &b])
        .unwrap()
        .with_shortlist(&list, size);
    let out = beam_search(&pair, &sources, &cfg, &Device::Cpu).unwrap();
    // A model twice is the model, with the shortlist as without it.
    let twice = Ensemble::new(vec![&a, &a])
        .unwrap()
        .with_shortlist(&list, size);
    let single = Ensemble::single(&a).with_shortlist(&list, size);
    let x = beam_search(&twice, &sources, &cfg, &Device::Cpu).unwrap();
    let y = beam_search(&single, &sources, &cfg, &Device::Cpu).unwrap();
    for ((p, q), r) in x.iter().zip(&y).zip(&out) {
        assert_eq!(p[0].tokens, q[0].tokens);
        assert!((p[0].log_prob - q[0].log_prob).abs() < 1e-4);
        assert!(r[0].tokens.iter().all(|t| ids.binary_search(t).is_ok()));
    }
}
