#!/usr/bin/env python3
"""Builds tests/goldens/bleu/goldens.json: sacreBLEU's unrounded scores for cases built from
the shared corpora by simple recipes that tests/bleu_goldens.rs rebuilds line by line.

No corpus text is written: a case stores its recipe (file, line range, word operations) and
sacreBLEU's numbers; tokenizer checks store a sha256 of the tokenized file.

Usage: RNMT_CORPORA=/work/shared/corpora python3 tests/goldens/bleu/make_goldens.py
Requires: pip install sacrebleu (2.x).

Recipes. A line source is {"file", "start", "end", "ops"}: lines [start, end) of
$RNMT_CORPORA/<file> (split on "\\n", nothing stripped), then each op in order, with i the
index within the slice and words = line.split(" "):
  ["shift", s]      line i becomes line (i + s) % n of the slice
  ["drop", k]       remove words whose index j has j % k == k - 1
  ["swap", k]       on lines with i % k == 0, swap words 0 and 1 (when there are two)
  ["reverse"]       reverse the word order
  ["trunc", m]      keep the first m words
  ["lower", k]      lowercase lines with i % k == 0
  ["empty", k]      lines with i % k == 0 become ""
  ["replace", a, b] str.replace(a, b) on every line
"""
import hashlib
import json
import os
import sys

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_char import TokenizerChar
from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International

CORPORA = os.environ.get("RNMT_CORPORA", "corpora")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens.json")


def read(file):
    with open(os.path.join(CORPORA, file), encoding="utf-8", newline="\n") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def apply_op(lines, op):
    name, args = op[0], op[1:]
    n = len(lines)
    out = []
    for i, line in enumerate(lines):
        words = line.split(" ")
        if name == "shift":
            line = lines[(i + args[0]) % n]
        elif name == "drop":
            k = args[0]
            line = " ".join(w for j, w in enumerate(words) if j % k != k - 1)
        elif name == "swap":
            if i % args[0] == 0 and len(words) >= 2:
                words[0], words[1] = words[1], words[0]
            line = " ".join(words)
        elif name == "reverse":
            line = " ".join(reversed(words))
        elif name == "trunc":
            line = " ".join(words[: args[0]])
        elif name == "lower":
            if i % args[0] == 0:
                line = line.lower()
        elif name == "empty":
            if i % args[0] == 0:
                line = ""
        elif name == "replace":
            line = line.replace(args[0], args[1])
        else:
            raise ValueError(f"unknown op {op}")
        out.append(line)
    return out


def build(src):
    lines = read(src["file"])[src["start"]: src["end"]]
    for op in src.get("ops", []):
        lines = apply_op(lines, op)
    return lines


def src(file, start, end, *ops):
    return {"file": file, "start": start, "end": end, "ops": [list(o) for o in ops]}


M = "multi30k/test_2016_flickr.en"
MF = "multi30k/test_2016_flickr.fr"
MC = "multi30k/test_2016_flickr.cs"
MV = "multi30k/val.de"
W = "wmt-news/newstest2021_deen.en"
WE = "wmt-news/newstest2021_ende.en"
WD = "wmt-news/newstest2021_ende.de"
T = "tatoeba-deu-eng/test.en"
TD = "tatoeba-deu-eng/test.de"

# Synthetic lines: HTML entities, numbers with separators, hyphens, empty lines.
SYN_REF = [
    "The &quot;quick&quot; brown fox &amp; the lazy dog.",
    "It cost $1,000.50 in 1999, not 1.000,50 EUR.",
    "A well-known 3-4 year-old state-of-the-art model.",
    "",
    "Tom's &lt;b&gt;bold&lt;/b&gt; claim -- really?",
    "Prices rose 12.5% (from 4,000 to 4,500) on 2021-05-01.",
    "Sie sagte: „Das ist gut“ – und ging.",
    "Empty hypothesis line follows.",
]
SYN_HYP = [
    "The \"quick\" brown fox & the lazy dog .",
    "It cost $ 1,000.50 in 1999 , not 1.000,50 EUR",
    "A well known 3 - 4 year-old state-of-the-art model.",
    "",
    "Tom's <b>bold</b> claim--really ?",
    "Prices rose 12.5 % (from 4,000 to 4.500) on 2021-05-01",
    "Sie sagte: \"Das ist gut\" - und ging.",
    "",
]
SYN_REF2 = [
    "The quick brown fox and the lazy dog.",
    "It cost 1,000.50 dollars in 1999.",
    "A well known model, 3-4 years old.",
    "Nothing.",
    "Tom's bold claim, really?",
    "Prices rose by 12.5% on 2021-05-01.",
    "Sie sagte, das sei gut, und ging.",
    "",
]


def cases():
    c = {}

    def bleu(name, hyp, refs, **cfg):
        c[name] = {"metric": "bleu", "config": cfg, "hyp": hyp, "refs": refs}

    def chrf(name, hyp, refs, **cfg):
        c[name] = {"metric": "chrf", "config": cfg, "hyp": hyp, "refs": refs}

    bleu("bleu_13a_m30k_drop4", src(M, 0, 300, ("drop", 4)), [src(M, 0, 300)])
    bleu("bleu_13a_wmt_drop3", src(W, 0, 500, ("drop", 3)), [src(W, 0, 500)])
    bleu("bleu_13a_wmt_swap_lower", src(W, 200, 700, ("swap", 2), ("lower", 5)), [src(W, 200, 700)])
    bleu("bleu_13a_tatoeba_de_drop5", src(TD, 0, 1740, ("drop", 5)), [src(TD, 0, 1740)])
    bleu("bleu_13a_val_de_trunc8", src(MV, 0, 1014, ("trunc", 8)), [src(MV, 0, 1014)])
    bleu("bleu_lc_wmt_lower", src(W, 0, 400, ("drop", 5), ("lower", 3)), [src(W, 0, 400)], lowercase=True)
    bleu("bleu_lc_intl_fr", src(MF, 0, 500, ("lower", 2), ("drop", 6)), [src(MF, 0, 500)],
         lowercase=True, tokenize="intl")
    bleu("bleu_intl_fr_drop4", src(MF, 0, 600, ("drop", 4)), [src(MF, 0, 600)], tokenize="intl")
    bleu("bleu_intl_wmt_de_drop3", src(WD, 0, 1002, ("drop", 3)), [src(WD, 0, 1002)], tokenize="intl")
    bleu("bleu_char_cs_drop3", src(MC, 0, 400, ("drop", 3)), [src(MC, 0, 400)], tokenize="char")
    bleu("bleu_char_wmt_de_swap", src(WD, 0, 300, ("swap", 1)), [src(WD, 0, 300)], tokenize="char")
    bleu("bleu_none_m30k_drop3", src(M, 500, 1000, ("drop", 3)), [src(M, 500, 1000)], tokenize="none")
    bleu("bleu_multiref2_m30k", src(M, 0, 500, ("drop", 3)), [src(M, 0, 500), src(M, 0, 500, ("drop", 5))])
    bleu("bleu_multiref3_wmt", src(W, 0, 600, ("swap", 2)),
         [src(W, 0, 600), src(W, 0, 600, ("drop", 4)), src(W, 0, 600, ("trunc", 8))])
    bleu("bleu_multiref2_intl_lc", src(WD, 100, 500, ("drop", 4), ("lower", 2)),
         [src(WD, 100, 500, ("trunc", 12)), src(WD, 100, 500)], tokenize="intl", lowercase=True)
    bleu("bleu_shifted_tatoeba", src(T, 0, 1000, ("shift", 1)), [src(T, 0, 1000)])
    for method in ["exp", "floor", "add-k", "none"]:
        bleu(f"bleu_reversed_{method}", src(T, 0, 400, ("reverse",)), [src(T, 0, 400)], smooth_method=method)
    bleu("bleu_reversed_floor_0.5", src(T, 0, 400, ("reverse",)), [src(T, 0, 400)],
         smooth_method="floor", smooth_value=0.5)
    bleu("bleu_trunc3_no_4grams", src(W, 0, 300, ("trunc", 3)), [src(W, 0, 300)])
    bleu("bleu_empty_lines", src(M, 0, 400, ("drop", 4), ("empty", 7)), [src(M, 0, 400, ("empty", 11))])
    bleu("bleu_all_empty_hyp", src(M, 0, 100, ("empty", 1)), [src(M, 0, 100)])
    bleu("bleu_html_entities_13a", src(WE, 0, 500, ("replace", "\"", "&quot;"), ("replace", " & ", " &amp; "),
                                        ("drop", 7)), [src(WE, 0, 500)])
    bleu("bleu_html_entities_intl", src(WE, 0, 500, ("replace", "\"", "&quot;"), ("drop", 7)), [src(WE, 0, 500)],
         tokenize="intl")
    bleu("bleu_synthetic_13a", {"lines": SYN_HYP}, [{"lines": SYN_REF}, {"lines": SYN_REF2}])
    bleu("bleu_synthetic_intl", {"lines": SYN_HYP}, [{"lines": SYN_REF}], tokenize="intl")
    bleu("bleu_synthetic_char_lc", {"lines": SYN_HYP}, [{"lines": SYN_REF}], tokenize="char", lowercase=True)
    chrf("chrf_m30k_drop4", src(M, 0, 300, ("drop", 4)), [src(M, 0, 300)])
    chrf("chrf_wmt_swap_lower", src(W, 0, 500, ("swap", 2), ("lower", 4)), [src(W, 0, 500)])
    chrf("chrf_lowercase_wmt", src(W, 0, 500, ("lower", 2), ("drop", 5)), [src(W, 0, 500)], lowercase=True)
    chrf("chrf_multiref3_cs", src(MC, 0, 500, ("drop", 3)),
         [src(MC, 0, 500, ("trunc", 6)), src(MC, 0, 500), src(MC, 0, 500, ("reverse",))])
    chrf("chrf_empty_lines", src(M, 0, 400, ("drop", 4), ("empty", 5)), [src(M, 0, 400, ("empty", 9))])
    chrf("chrf_all_empty_hyp", src(T, 0, 100, ("empty", 1)), [src(T, 0, 100)])
    chrf("chrf_whitespace_fr", src(MF, 0, 300, ("drop", 4)), [src(MF, 0, 300)], whitespace=True)
    chrf("chrf_synthetic", {"lines": SYN_HYP}, [{"lines": SYN_REF}, {"lines": SYN_REF2}])
    chrf("chrfpp_wmt_drop3", src(W, 0, 1000, ("drop", 3)), [src(W, 0, 1000)], word_order=2)
    chrf("chrfpp_fr_swap", src(MF, 0, 1000, ("swap", 1), ("drop", 6)), [src(MF, 0, 1000)], word_order=2)
    chrf("chrfpp_multiref2_tatoeba_de", src(TD, 0, 800, ("shift", 3), ("trunc", 5)),
         [src(TD, 0, 800), src(TD, 0, 800, ("drop", 2))], word_order=2)
    bleu("bleu_13a_numbers_hyphens_ende", src(WE, 0, 1002, ("drop", 4), ("swap", 3)), [src(WE, 0, 1002)])
    chrf("chrfpp_lowercase_entities", src(WE, 0, 300, ("replace", "\"", "&quot;"), ("lower", 3)), [src(WE, 0, 300)],
         word_order=2, lowercase=True)
    chrf("chrfpp_synthetic", {"lines": SYN_HYP}, [{"lines": SYN_REF}], word_order=2)
    # Sentence-level scores (sacreBLEU enables effective order for sentence BLEU).
    c["sentence_bleu_wmt"] = {"metric": "bleu", "sentence": True, "config": {"effective_order": True},
                              "hyp": src(W, 0, 60, ("drop", 3), ("empty", 13)), "refs": [src(W, 0, 60)]}
    c["sentence_chrfpp_m30k"] = {"metric": "chrf", "sentence": True, "config": {"word_order": 2},
                                 "hyp": src(M, 0, 60, ("swap", 1), ("empty", 17)), "refs": [src(M, 0, 60)]}
    return c


def lines_of(s):
    return s["lines"] if "lines" in s else build(s)


def score_case(case):
    hyp = lines_of(case["hyp"])
    refs = [lines_of(r) for r in case["refs"]]
    cfg = dict(case["config"])
    metric = BLEU(**cfg) if case["metric"] == "bleu" else CHRF(**cfg)
    if case.get("sentence"):
        return {"scores": [metric.sentence_score(h, list(r)).score for h, *r in zip(hyp, *refs)]}
    s = metric.corpus_score(hyp, refs)
    out = {"score": s.score, "signature": str(metric.get_signature())}
    if case["metric"] == "bleu":
        out.update(sys_len=s.sys_len, ref_len=s.ref_len, counts=list(s.counts), totals=list(s.totals),
                   precisions=list(s.precisions), bp=s.bp)
    return out


def tokenizer_digests():
    toks = {"13a": Tokenizer13a(), "intl": TokenizerV14International(), "char": TokenizerChar()}
    files = [M, MF, MC, W, WE, WD, T, TD, MV]
    out = {}
    for name, tok in toks.items():
        for f in files:
            for lc in [False, True]:
                lines = read(f)
                # The token sequence BLEU sees (the char tokenizer alone leaves runs of spaces).
                text = "\n".join(" ".join(tok((l.lower() if lc else l).rstrip()).split()) for l in lines)
                out[f"{name}|{'lc' if lc else 'mixed'}|{f}"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return out


def main():
    if not os.path.exists(os.path.join(CORPORA, M)):
        sys.exit(f"no corpora under {CORPORA}; set RNMT_CORPORA")
    all_cases = cases()
    for name, case in all_cases.items():
        case.update(score_case(case))
    doc = {
        "sacrebleu_version": sacrebleu.__version__,
        "cases": all_cases,
        "tokenizer_sha256": tokenizer_digests(),
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(all_cases)} cases and {len(doc['tokenizer_sha256'])} tokenizer digests to {OUT}")


if __name__ == "__main__":
    main()
