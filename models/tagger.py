"""A recurrent sequence tagger with an optional intent head: embedding -> Elman, Jordan, LSTM or GRU encoder ->
tag emissions per position -> an optional CRF; the intent head reads the encoder states (a joint model, as in
Liu & Lane 2016 and Goo et al. 2018), by default at every piece (`INTENT_HEADS`).

The graph works on subword pieces; a word's tag is read off its first piece (the training task gathers those
positions, and so does the serving runtime). The CRF runs over words, in torch for training and for the parity
tests, and in numpy when serving (`service/engine/tagging.py`).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS = ("rnn", "jordan", "lstm", "gru")
# How the intent head reads the encoder states: "max" pools them; "max_mean" concatenates max and mean pooling;
# "tokens" predicts the intent at every piece and averages the distributions (token-level intent detection, as
# Stack-Propagation, Qin et al. 2019), trained on every piece.
INTENT_HEADS = ("max", "max_mean", "tokens")
_TORCH_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class TaggerConfig:
    vocab_size: int = 8000  # training: the tokenizer's target size, then the size it reached
    num_tags: int = 3  # training: set from the tags in the data
    num_intents: int = 0  # 0: no intent head (training: set from the intents in the data)
    cell: str = "lstm"
    emb_dim: int = 128
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3
    crf: bool = True
    intent_head: str = "tokens"  # docs/tagging.md: on ATIS, 96.7 % intent accuracy against max pooling's 96.3

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {list(CELLS)}, got {self.cell!r}")
        if self.num_tags < 1:
            raise ValueError(f"num_tags must be at least 1, got {self.num_tags}")
        if self.intent_head not in INTENT_HEADS:
            raise ValueError(f"intent_head must be one of {list(INTENT_HEADS)}, got {self.intent_head!r}")
        if self.num_intents == 1 or self.num_intents < 0:
            raise ValueError(f"num_intents must be 0 (no intent head) or at least 2, got {self.num_intents}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaggerConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _jordan_scan(xw: Tensor, w_yh: Tensor, w_hy: Tensor, b_hy: Tensor) -> Tensor:
    """The Jordan recurrence over time-major input projections xw (T, B, H) = W_ih x_t + b_ih:

        h_t = tanh(xw_t + W_yh y_{t-1}),  y_t = softmax(W_hy h_t + b_hy),  y_0 = 0

    y_t is the step's output, a distribution over the tags; it, not h_t, carries the memory. Scripted, so the
    exported graph holds an ONNX Loop and keeps its dynamic length. Returns the hidden states (T, B, H)."""
    y = torch.zeros(xw.size(1), w_hy.size(0), dtype=xw.dtype, device=xw.device)
    hs: list[Tensor] = []
    for t in range(xw.size(0)):
        h = torch.tanh(xw[t] + torch.matmul(y, w_yh.t()))
        y = torch.softmax(torch.matmul(h, w_hy.t()) + b_hy, dim=-1)
        hs.append(h)
    return torch.stack(hs)


with warnings.catch_warnings():
    # TorchScript is deprecated, but it is how the TorchScript-based ONNX exporter (the one every graph here goes
    # through) turns a loop into an ONNX Loop instead of unrolling it; torch.export unrolls Python loops.
    warnings.simplefilter("ignore", DeprecationWarning)
    jordan_scan = torch.jit.script(_jordan_scan)


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row's first lengths[b] steps reversed, padding left where it is: x (B, T, D)."""
    steps = torch.arange(x.size(1), device=x.device)[None, :]  # (1, T)
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # (B, T)
    return x.gather(1, index[..., None].expand(-1, -1, x.size(2)))


class JordanRNN(nn.Module):
    """Stacked, optionally bidirectional Jordan layers, batch-first and pad-aware: the backward direction starts at
    each text's last real step. Parameters per layer and direction, in torch's (out, in) layout: weight_ih (H, I),
    bias_ih (H), weight_yh (H, K), weight_hy (K, H), bias_hy (K); the reverse direction's names end in _reverse
    (`models/reference.py: run_jordan` is the numpy twin)."""

    def __init__(self, input_size: int, hidden: int, num_tags: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden, self.num_layers, self.bidirectional = hidden, num_layers, bidirectional
        self.dropout = nn.Dropout(dropout)
        dirs = 2 if bidirectional else 1
        bound = hidden ** -0.5
        for layer in range(num_layers):
            size = input_size if layer == 0 else dirs * hidden
            for suffix in self.suffixes:
                key = f"l{layer}{suffix}"
                for name, shape in ((f"weight_ih_{key}", (hidden, size)), (f"bias_ih_{key}", (hidden,)),
                                    (f"weight_yh_{key}", (hidden, num_tags)), (f"weight_hy_{key}", (num_tags, hidden)),
                                    (f"bias_hy_{key}", (num_tags,))):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    @property
    def suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T, I) -> outputs (B, T, dirs * H); steps past a row's length are not meaningful."""
        for layer in range(self.num_layers):
            if layer:
                x = self.dropout(x)
            outputs = []
            for suffix in self.suffixes:
                key = f"l{layer}{suffix}"
                inp = reverse_padded(x, lengths) if suffix else x
                xw = torch.matmul(inp, getattr(self, f"weight_ih_{key}").t()) + getattr(self, f"bias_ih_{key}")
                h = jordan_scan(xw.transpose(0, 1), getattr(self, f"weight_yh_{key}"),
                                getattr(self, f"weight_hy_{key}"), getattr(self, f"bias_hy_{key}")).transpose(0, 1)
                outputs.append(reverse_padded(h, lengths) if suffix else h)  # (B, T, H)
            x = torch.cat(outputs, dim=-1)
        return x


class CRF(nn.Module):
    """A linear-chain CRF over word positions: start, transition (from, to) and end scores."""

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Negative log-likelihood per sequence (B,): emissions (B, W, K), tags (B, W), mask (B, W) bool with at
        least one word per row, the real words first."""
        return self.log_partition(emissions, mask) - self.score(emissions, tags, mask)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        rows = torch.arange(emissions.size(0), device=emissions.device)
        m = mask.to(emissions.dtype)
        emit = emissions.gather(2, tags[..., None]).squeeze(2)  # (B, W)
        total = self.start[tags[:, 0]] + (emit * m).sum(1)
        total = total + (self.transitions[tags[:, :-1], tags[:, 1:]] * m[:, 1:]).sum(1)
        last = tags[rows, mask.sum(1) - 1]
        return total + self.end[last]

    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """The forward algorithm: log of the sum over every tag sequence."""
        alpha = self.start + emissions[:, 0]  # (B, K)
        for w in range(1, emissions.size(1)):
            step = torch.logsumexp(alpha[:, :, None] + self.transitions[None] + emissions[:, w, None, :], dim=1)
            alpha = torch.where(mask[:, w, None], step, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def viterbi(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:
        """The best tag sequence per row (of its real words)."""
        score = self.start + emissions[:, 0]  # (B, K)
        back = []
        for w in range(1, emissions.size(1)):
            cand = score[:, :, None] + self.transitions[None]  # (B, K from, K to)
            best, arg = cand.max(dim=1)
            back.append(arg)
            score = torch.where(mask[:, w, None], best + emissions[:, w], score)
        score = score + self.end
        paths = []
        for b, n in enumerate(mask.sum(1).tolist()):
            tag = int(score[b].argmax())
            path = [tag]
            for w in range(n - 1, 0, -1):
                tag = int(back[w - 1][b, tag])
                path.append(tag)
            paths.append(path[::-1])
        return paths


class RNNTagger(nn.Module):
    """ids (B, T), lengths (B,) -> tag emissions (B, T, K) per piece, and intent logits (B, I) with an intent head."""

    def __init__(self, cfg: TaggerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=0)
        between = cfg.dropout if cfg.layers > 1 else 0.0
        if cfg.cell == "jordan":
            self.rnn: nn.Module = JordanRNN(cfg.emb_dim, cfg.hidden, cfg.num_tags, cfg.layers, cfg.bidirectional,
                                            between)
        else:
            self.rnn = _TORCH_CELLS[cfg.cell](cfg.emb_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                                              bidirectional=cfg.bidirectional, dropout=between)
        width = (2 if cfg.bidirectional else 1) * cfg.hidden
        self.dropout = nn.Dropout(cfg.dropout)
        self.emit = nn.Linear(width, cfg.num_tags)
        pooled_width = 2 * width if cfg.intent_head == "max_mean" else width
        self.intent = nn.Linear(pooled_width, cfg.num_intents) if cfg.num_intents else None
        self.token_intent_logits: Tensor | None = None  # "tokens": the last forward's per-piece logits (B, T, I)
        self.crf = CRF(cfg.num_tags) if cfg.crf else None

    def encode(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Encoder states (B, T, dirs * H), zero past each row's length."""
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        if isinstance(self.rnn, JordanRNN):
            h = self.rnn(x, lengths)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            h, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.size(1))  # (B, T, dirs*H)
        valid = torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None]  # (B, T)
        return h * valid[..., None].to(h.dtype)

    def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        h = self.encode(ids, lengths)
        emissions = self.emit(self.dropout(h))  # (B, T, K)
        if self.intent is None:
            return (emissions,)
        valid = (torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
        if self.cfg.intent_head == "tokens":
            self.token_intent_logits = logits = self.intent(self.dropout(h))  # (B, T, I)
            probs = torch.softmax(logits, dim=-1) * valid.to(logits.dtype)
            mean = probs.sum(dim=1) / lengths[:, None].to(logits.dtype)  # (B, I)
            return emissions, torch.log(mean.clamp_min(1e-30))  # log-probabilities: their softmax is `mean`
        pooled = h.masked_fill(~valid, float("-inf")).amax(dim=1)  # (B, dirs*H)
        if self.cfg.intent_head == "max_mean":
            mean = h.sum(dim=1) / lengths[:, None].to(h.dtype)  # h is zero past each length
            pooled = torch.cat([pooled, mean], dim=-1)  # (B, 2*dirs*H)
        return emissions, self.intent(self.dropout(pooled))  # (B, I)
