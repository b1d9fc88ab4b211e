"""PyTorch reference of exactly rnmt's model (src/model), for side-by-side benchmarks.

Reads rnmt's `config.json` (ModelConfig) and `model.safetensors` with the same parameter
names, so a model trained by either framework runs in the other. Definitions follow the
Rust code:

* LSTM layers: gate order (i, f, g, o) as torch.nn.LSTM; rnmt's single bias `bias` goes
  into `bias_ih_l0`, `bias_hh_l0` stays zero and frozen (two biases would be two
  parameters for Adam and change the update). Bidirectional layers run on packed
  sequences, so the reverse direction starts at the last real token, as in rnmt;
  unidirectional layers run on the padded batch (padding only follows the real tokens,
  and every use of a padded position is masked: encoder memory, attention, loss).
* GRU layers (`cell = "gru"`): torch.nn.GRU is rnmt's GRU (gate order r, z, n, reset
  applied after the recurrent product), so `weight_ih`, `weight_hh`, `bias_ih` and
  `bias_hh` map one to one, both biases trained; packing as for the LSTM. A GRU step
  returns its state as the pair (h, h), so decoder states look the same for both cells.
* cGRU (`cgru = true`, Marian's conditional GRU): the bottom decoder layer is
  `s' = GRU1(y, s)`, `c = attention(s')`, `s = GRU2(c, s')` (`decoder.conditional`),
  run step by step like input feeding.
* Encoder: embeddings; every layer reads dropout(input); layer 1 (or every layer with
  `bidirectional = "all"`) is bidirectional with hidden/2 per direction, concatenated;
  residual `out + dropout(input)` from `residual_from`; memory zeroed at padding.
* Attention: additive, normalized_additive (GNMT: bias in the tanh, v scaled to
  gain/||v||), dot, general, multi_head_additive; padded positions get -1e9.
* Decoder: GNMT wiring (bottom layer over the whole sequence, attention for all steps at
  once, upper layers read [h; context]) or Luong input feeding (sequential); output
  tanh(W[h; ctx] + b), dropout, projection (tied to the target embeddings if configured).
* Loss: label smoothing as src/train/loss.rs (target keeps 1-s, s spread over the other
  V-1 tokens), summed over real tokens, divided by their count.

Layer norm (RNMT+ cells) is not implemented: `layer_norm = true` is rejected, and so is
the language model (`task = "lm"`).
"""

import ctypes
import json
import math
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MASKED_SCORE = -1e9


# ----------------------------------------------------------------------------- safetensors
# A tiny reader/writer (the format is an 8-byte header length, a JSON header, raw data), so
# the reference needs nothing beyond torch.

_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16}


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=_DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).to(torch.float32)
    return out


def save_safetensors(tensors, path):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous().cpu()
        raw = ctypes.string_at(t.data_ptr(), t.numel() * 4)
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


# ----------------------------------------------------------------------------- config

DEFAULTS = dict(
    task="translation", cell="lstm", cgru=False, src_lang=None, tgt_lang=None,
    src_vocab_size=8000, tgt_vocab_size=8000, embedding_size=256, hidden_size=256,
    encoder_layers=2, decoder_layers=2, bidirectional="bottom", residual_from=3, dropout=0.2,
    layer_norm=False, attention="normalized_additive", attention_heads=4, input_feeding=False,
    tie_target_embeddings=False, max_decode_len_a=1.5, max_decode_len_b=10, decode_alpha=0.6,
    decode_beta=0.2,
)


class Config:
    def __init__(self, **kw):
        unknown = set(kw) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"model config: unknown keys {sorted(unknown)}")
        for k, v in {**DEFAULTS, **kw}.items():
            setattr(self, k, v)
        if self.layer_norm:
            raise ValueError("the PyTorch reference does not implement layer_norm = true")
        if self.task != "translation":
            raise ValueError(f"the PyTorch reference implements task = \"translation\" only, not {self.task!r}")
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"model config: unknown cell {self.cell!r}")
        if self.cgru and (self.cell != "gru" or self.input_feeding):
            raise ValueError('model config: cgru = true needs cell = "gru" and input_feeding = false')
        if self.attention not in ("additive", "normalized_additive", "dot", "general", "multi_head_additive"):
            raise ValueError(f"model config: unknown attention {self.attention!r}")

    @classmethod
    def from_json(cls, path):
        with open(path) as f:
            return cls(**json.load(f))

    def has_residual(self, layer):
        return self.residual_from != 0 and layer + 1 >= self.residual_from and layer > 0


# ----------------------------------------------------------------------------- modules


class Dropout(nn.Module):
    """Dropout that can be switched off globally (reference checks run without it)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training) if self.p > 0 else x


def run_padded(rnn, x, lengths):
    """A batch-first torch RNN over padded sequences x [B, T, I] with lengths (cpu int64
    [B]) → [B, T, H(*2)]."""
    if not rnn.bidirectional:
        # Trailing padding cannot reach the real positions of a forward RNN: the plain
        # padded call is exact there, and cheaper than packing.
        return rnn(x)[0]
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


class LstmLayer(nn.Module):
    """One (optionally bidirectional) LSTM layer over padded sequences."""

    def __init__(self, input_size, hidden_size, bidirectional):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=bidirectional)
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias_hh"):
                nn.init.zeros_(p)
                p.requires_grad_(False)

    def forward(self, x, lengths):
        """x: [B, T, I], lengths: cpu int64 [B] → [B, T, H(*2)] (zero at padding when
        bidirectional; a unidirectional layer's outputs at padding are never used)."""
        return run_padded(self.lstm, x, lengths)

    def step(self, x, state):
        """One unidirectional step: x [B, I], state (h, c) → (h, c)."""
        m = self.lstm
        return torch.lstm_cell(x, state, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)


class GruLayer(nn.Module):
    """One (optionally bidirectional) GRU layer over padded sequences: rnmt's GRU is
    torch.nn.GRU, both biases included."""

    def __init__(self, input_size, hidden_size, bidirectional):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=bidirectional)

    def forward(self, x, lengths):
        """As LstmLayer.forward."""
        return run_padded(self.gru, x, lengths)

    def step(self, x, state):
        """One unidirectional step: x [B, I], state (h, h) → (h', h') (a GRU has no cell
        state; the pair keeps decoder states shaped as the LSTM's)."""
        m = self.gru
        h = torch.gru_cell(x, state[0], m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
        return h, h


def recurrent_layer(cfg, input_size, hidden_size, bidirectional):
    layer = GruLayer if cfg.cell == "gru" else LstmLayer
    return layer(input_size, hidden_size, bidirectional)


class Attention(nn.Module):
    def __init__(self, kind, heads, size):
        super().__init__()
        self.kind = kind
        self.heads = heads if kind == "multi_head_additive" else 1
        if kind == "general":
            self.key = nn.Linear(size, size, bias=False)
        if kind in ("additive", "normalized_additive", "multi_head_additive"):
            self.query = nn.Linear(size, size, bias=False)
            self.key = nn.Linear(size, size, bias=False)
            self.v = nn.Parameter(torch.empty(size))
        if kind == "normalized_additive":
            self.bias = nn.Parameter(torch.zeros(size))
            self.gain = nn.Parameter(torch.full((1,), 1.0 / math.sqrt(size)))
        if self.heads > 1:
            self.value = nn.Linear(size, size, bias=False)

    def memory(self, memory, mask):
        keys = memory if self.kind == "dot" else self.key(memory)
        values = self.value(memory) if self.heads > 1 else memory
        mask_bias = ((1.0 - mask) * MASKED_SCORE).unsqueeze(1)  # [B, 1, S]
        return keys, values, mask_bias

    def forward(self, query, mem):
        """query [B, T, H] → context [B, T, H], weights [B, T, S] (mean over heads)."""
        keys, values, mask_bias = mem
        if self.kind in ("dot", "general"):
            scores = query @ keys.transpose(1, 2)
        else:
            q = self.query(query)
            v = self.v
            if self.kind == "normalized_additive":
                q = q + self.bias
                v = v * (self.gain / v.norm())
            e = torch.tanh(q.unsqueeze(2) + keys.unsqueeze(1)) * v  # [B, T, S, U]
            b, t, s, u = e.shape
            scores = e.reshape(b, t, s, self.heads, u // self.heads).sum(-1)
            scores = scores.squeeze(3) if self.heads == 1 else scores.permute(0, 3, 1, 2)
        if self.heads == 1:
            weights = torch.softmax(scores + mask_bias, dim=-1)
            return weights @ values, weights
        b, h, t, s = scores.shape
        weights = torch.softmax(scores + mask_bias.unsqueeze(1), dim=-1)  # [B, h, T, S]
        dv = values.shape[2] // h
        v = values.reshape(b, s, h, dv).permute(0, 2, 1, 3)
        context = (weights @ v).permute(0, 2, 1, 3).reshape(b, t, h * dv)
        return context, weights.mean(1)


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h = cfg.hidden_size
        self.embedding = nn.Embedding(cfg.src_vocab_size, cfg.embedding_size)
        self.layers = nn.ModuleList()
        self.residual = []
        for l in range(cfg.encoder_layers):
            bi = l == 0 or cfg.bidirectional == "all"
            inp = cfg.embedding_size if l == 0 else h
            self.layers.append(recurrent_layer(cfg, inp, h // 2 if bi else h, bi))
            self.residual.append(cfg.has_residual(l))
        self.dropout = Dropout(cfg.dropout)

    def forward(self, src, lengths, mask):
        x = self.embedding(src)
        for layer, residual in zip(self.layers, self.residual):
            inp = self.dropout(x)
            x = layer(inp, lengths)
            if residual:
                x = x + inp
        return x * mask.unsqueeze(2)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h = cfg.hidden_size
        self.hidden_size = h
        self.input_feeding = cfg.input_feeding
        self.embedding = nn.Embedding(cfg.tgt_vocab_size, cfg.embedding_size)
        self.layers = nn.ModuleList()
        for l in range(cfg.decoder_layers):
            if l == 0:
                inp = cfg.embedding_size + (h if cfg.input_feeding else 0)
            else:
                inp = h if cfg.input_feeding else 2 * h
            self.layers.append(recurrent_layer(cfg, inp, h, False))
        # cGRU: the second cell of the bottom transition, reading the context.
        self.conditional = recurrent_layer(cfg, h, h, False) if cfg.cgru else None
        self.residual = [cfg.has_residual(l) for l in range(cfg.decoder_layers)]
        self.attention = Attention(cfg.attention, cfg.attention_heads, h)
        self.combine = nn.Linear(2 * h, h)
        self.tied = cfg.tie_target_embeddings
        if not self.tied:
            self.output_weight = nn.Parameter(torch.empty(cfg.tgt_vocab_size, h))
        self.output_bias = nn.Parameter(torch.zeros(cfg.tgt_vocab_size))
        self.dropout = Dropout(cfg.dropout)

    def logits(self, attentional):
        w = self.embedding.weight if self.tied else self.output_weight
        return F.linear(attentional, w, self.output_bias)

    def forward(self, mem, tgt_in, tgt_lengths):
        emb = self.dropout(self.embedding(tgt_in))
        if self.input_feeding or self.conditional is not None:
            state = self.init(emb.shape[0], emb)
            outs, ws = [], []
            for t in range(emb.shape[1]):
                o, state, w = self.advance(mem, state, emb[:, t])
                outs.append(o)
                ws.append(w)
            attentional, weights = torch.stack(outs, 1), torch.stack(ws, 1)
        else:
            h = self.layers[0](emb, tgt_lengths)
            context, weights = self.attention(h, mem)
            for layer, residual in zip(self.layers[1:], self.residual[1:]):
                out = layer(self.dropout(torch.cat([h, context], 2)), tgt_lengths)
                h = out + h if residual else out
            attentional = torch.tanh(self.combine(torch.cat([h, context], 2)))
        return self.logits(self.dropout(attentional)), weights

    def init(self, batch, like):
        z = like.new_zeros(batch, self.hidden_size)
        return [(z, z) for _ in self.layers], z

    def advance(self, mem, state, x):
        layer_states, feed = state
        new = []

        def attend(h):
            c, w = self.attention(h.unsqueeze(1), mem)
            return c.squeeze(1), w.squeeze(1)

        if self.input_feeding:
            inp = torch.cat([x, feed], 1)
            h = inp
            for l, layer in enumerate(self.layers):
                if l > 0:
                    inp = self.dropout(h)
                s = layer.step(inp, layer_states[l])
                h = s[0] + h if self.residual[l] else s[0]
                new.append(s)
            context, weights = attend(h)
        else:
            s = self.layers[0].step(x, layer_states[0])
            context, weights = attend(s[0])
            if self.conditional is not None:  # cGRU: the attention read s'; s = GRU2(c, s')
                s = self.conditional.step(context, s)
            new.append(s)
            h = s[0]
            for l in range(1, len(self.layers)):
                s = self.layers[l].step(self.dropout(torch.cat([h, context], 1)), layer_states[l])
                h = s[0] + h if self.residual[l] else s[0]
                new.append(s)
        o = torch.tanh(self.combine(torch.cat([h, context], 1)))
        return o, (new, o), weights

    def step(self, mem, state, prev):
        o, state, weights = self.advance(mem, state, self.embedding(prev))
        return torch.log_softmax(self.logits(o), -1), state, weights


class Seq2Seq(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, src, src_lengths):
        mask = (torch.arange(src.shape[1])[None, :] < src_lengths[:, None]).float()
        memory = self.encoder(src, src_lengths, mask)
        return self.decoder.attention.memory(memory, mask)

    def forward(self, src, src_lengths, tgt_in, tgt_lengths):
        mem = self.encode(src, src_lengths)
        return self.decoder(mem, tgt_in, tgt_lengths)[0]

    # -------------------------------------------------- rnmt's parameter names

    def rnmt_names(self):
        """{rnmt name: torch parameter}; one entry per rnmt tensor."""
        out = {}
        for name, p in self.named_parameters():
            if "lstm.bias_hh" in name:  # frozen zeros; rnmt's LSTM has one bias
                continue
            out[_to_rnmt_name(name)] = p
        return out

    def load_rnmt(self, path):
        tensors = load_safetensors(path)
        own = self.rnmt_names()
        missing = sorted(set(own) - set(tensors))
        extra = sorted(set(tensors) - set(own))
        if missing or extra:
            raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {extra}")
        with torch.no_grad():
            for name, p in own.items():
                t = tensors[name]
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"{path}: tensor {name} has shape {list(t.shape)}, expected {list(p.shape)}")
                p.copy_(t)

    def save_rnmt(self, path):
        save_safetensors({n: p for n, p in self.rnmt_names().items()}, path)


def _to_rnmt_name(name):
    """torch parameter name → rnmt's (see src/model/*.rs VarBuilder paths)."""
    parts = name.split(".")
    if parts[-2] in ("lstm", "gru"):  # encoder.layers.0.lstm.weight_ih_l0_reverse
        prefix = ".".join(parts[:-2])
        kind, *rest = parts[-1].split("_l0")
        if parts[-2] == "lstm" and kind == "bias_ih":
            kind = "bias"
        if prefix.startswith("encoder"):
            direction = "backward" if rest and rest[0] == "_reverse" else "forward"
            return f"{prefix}.{direction}.{kind}"
        return f"{prefix}.{kind}"
    if name == "decoder.output_weight":
        return "decoder.output.weight"
    if name == "decoder.output_bias":
        return "decoder.output.bias"
    return name


def load_model(model_dir):
    cfg = Config.from_json(f"{model_dir}/config.json")
    model = Seq2Seq(cfg)
    model.load_rnmt(f"{model_dir}/model.safetensors")
    return model


# ----------------------------------------------------------------------------- loss


def label_smoothed_loss(logits, targets, lengths, smoothing):
    """(sum over real tokens of -Σ q log p, number of real tokens), as src/train/loss.rs."""
    vocab = logits.shape[-1]
    every = smoothing / max(vocab - 1.0, 1.0)
    target = 1.0 - smoothing - every
    lp = torch.log_softmax(logits, -1)
    nll = -lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    per_token = target * nll - every * lp.sum(-1) if smoothing > 0 else nll
    mask = torch.arange(targets.shape[1])[None, :] < lengths[:, None]
    return (per_token * mask).sum(), int(lengths.sum())


# ----------------------------------------------------------------------------- search


def max_len(cfg, src_subwords):
    """src/search/mod.rs SearchConfig::max_len: the source counts its EOS."""
    return math.ceil(cfg.max_decode_len_a * (src_subwords + 1)) + cfg.max_decode_len_b


def source_batch(sources):
    """Subword ids without EOS → (padded ids with EOS, lengths incl. EOS)."""
    lengths = torch.tensor([len(s) + 1 for s in sources])
    src = torch.zeros(len(sources), int(lengths.max()), dtype=torch.long)
    for i, s in enumerate(sources):
        src[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        src[i, len(s)] = EOS_ID
    return src, lengths


def select_mem(mem, rows):
    return tuple(t.index_select(0, rows) for t in mem)


def select_state(state, rows):
    layers, feed = state
    return [(h.index_select(0, rows), c.index_select(0, rows)) for h, c in layers], feed.index_select(0, rows)


@torch.no_grad()
def greedy(model, sources):
    """Greedy decoding as src/search/greedy.rs: finished sentences leave the batch."""
    src, lengths = source_batch(sources)
    mem = model.encode(src, lengths)
    state = model.decoder.init(len(sources), mem[1])
    out = [[] for _ in sources]
    rows = [i for i, s in enumerate(sources) if max_len(model.cfg, len(s)) > 0]
    if len(rows) < len(sources) and rows:
        keep = torch.tensor(rows)
        mem, state = select_mem(mem, keep), select_state(state, keep)
    while rows:
        prev = torch.tensor([out[i][-1] if out[i] else BOS_ID for i in rows])
        lp, nxt, _ = model.decoder.step(mem, state, prev)
        kept, kept_rows = [], []
        for j, (i, t) in enumerate(zip(rows, lp.argmax(-1).tolist())):
            if t == EOS_ID:
                continue
            out[i].append(t)
            if len(out[i]) >= max_len(model.cfg, len(sources[i])):
                continue
            kept.append(j)
            kept_rows.append(i)
        if kept_rows and len(kept_rows) < len(rows):
            keep = torch.tensor(kept)
            mem, nxt = select_mem(mem, keep), select_state(nxt, keep)
        rows, state = kept_rows, nxt
    return out


def length_penalty(n, alpha):
    return 1.0 if alpha == 0 else ((5.0 + n) / 6.0) ** alpha


def coverage_penalty(coverage, beta):
    if beta == 0:
        return 0.0
    return beta * float(torch.log(coverage.clamp(1e-20, 1.0)).sum())


@torch.no_grad()
def beam_search(model, sources, beam, alpha=0.6, beta=0.2):
    """GNMT beam search as src/search/beam.rs (2k candidates per sentence, EOS among the
    top k finishes a hypothesis, length and coverage penalties, the same stopping rule);
    returns the best token list per sentence."""
    k = beam
    src, lengths = source_batch(sources)
    mem0 = model.encode(src, lengths)
    sents = []
    for s in sources:
        sents.append(dict(src_len=len(s), max_len=max_len(model.cfg, len(s)), finished=[],
                          live=[dict(tokens=[], log_prob=0.0, score=0.0, coverage=torch.zeros(len(s)))]))
    rows = [i for i, s in enumerate(sents) for _ in s["live"]]
    mem = select_mem(mem0, torch.tensor(rows))
    state = model.decoder.init(len(rows), mem0[1])
    while rows:
        prev = torch.tensor([h["tokens"][-1] if h["tokens"] else BOS_ID for s in sents for h in s["live"]])
        lp, nxt, weights = model.decoder.step(mem, state, prev)
        top_lp, top_ids = lp.topk(2 * k, dim=-1)
        top_lp, top_ids = top_lp.tolist(), top_ids.tolist()
        parents, r = [], 0
        for s in sents:
            if not s["live"]:
                continue
            first = r
            r += len(s["live"])
            steps = len(s["live"][0]["tokens"]) + 1
            lp_norm = length_penalty(steps, alpha)
            cands, covs = [], []
            for j, h in enumerate(s["live"]):
                cov = h["coverage"] + weights[first + j, : s["src_len"]]
                cp = coverage_penalty(cov, beta)
                covs.append(cov)
                for l, tok in zip(top_lp[first + j], top_ids[first + j]):
                    logp = h["log_prob"] + l
                    cands.append((logp / lp_norm + cp, logp, j, tok))
            cands.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
            cands = cands[: 2 * k]
            live, ended = [], []
            for pos, (score, logp, j, tok) in enumerate(cands):
                parent = s["live"][j]
                if tok == EOS_ID:
                    if pos < k:
                        ended.append((dict(tokens=parent["tokens"], log_prob=logp), score))
                elif len(live) < k:
                    live.append(dict(tokens=parent["tokens"] + [tok], log_prob=logp, score=score, coverage=covs[j]))
                    parents.append(first + j)
            s["finished"].extend((score, h["log_prob"], h["tokens"]) for h, score in ended)
            if steps >= s["max_len"]:
                del parents[len(parents) - len(live):]
                s["finished"].extend((h["score"], h["log_prob"], h["tokens"]) for h in live)
                live = []
            s["live"] = live
            if _is_done(s, k, alpha):
                del parents[len(parents) - len(s["live"]):]
                s["live"] = []
        new_rows = [i for i, s in enumerate(sents) for _ in s["live"]]
        if not new_rows:
            break
        state = select_state(nxt, torch.tensor(parents))
        if new_rows != rows:
            mem = select_mem(mem0, torch.tensor(new_rows))
        rows = new_rows
    out = []
    for s in sents:
        best = sorted(s["finished"], key=lambda f: (-f[0], -f[1]))
        out.append(best[0][2] if best else [])
    return out


def _is_done(s, k, alpha, nbest=1):
    if not s["live"]:
        return True
    best_live = max(h["score"] for h in s["live"])
    if len(s["finished"]) < nbest:
        return False
    scores = sorted((f[0] for f in s["finished"]), reverse=True)
    nth = scores[nbest - 1]
    bound = lambda lp: min(lp, 0.0) / length_penalty(s["max_len"], alpha)
    if all(bound(h["log_prob"]) <= nth for h in s["live"]):
        return True
    return len(s["finished"]) >= k and best_live <= scores[k - 1]
