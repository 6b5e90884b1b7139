"""Recurrent encoder-decoder translator: bidirectional encoder, Bahdanau/Luong attention, input feeding.

The decoder runs one step at a time on a state dict of batch-first tensors (`h`, `c` for LSTM, `feed`
with input feeding, `context` for the no-attention baseline); the ONNX step graph has exactly this
interface, so training, torch decoding and serving share one `Decoder.step`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from service.engine.text import BOS_ID, EOS_ID, PAD_ID

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
ATTENTIONS = ("additive", "dot", "general", "none")

State = dict[str, Tensor]


@dataclass
class Seq2SeqConfig:
    src_vocab: int
    tgt_vocab: int
    cell: str = "lstm"
    emb_dim: int = 256
    enc_hidden: int = 256  # per direction, so memory is 2 * enc_hidden wide
    enc_layers: int = 1
    dec_hidden: int = 512
    dec_layers: int = 1
    attention: str = "general"
    input_feeding: bool = True
    dropout: float = 0.2
    tie_embeddings: bool = False
    share_embeddings: bool = False  # one embedding for source and target (needs a shared vocabulary)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention == "dot" and self.dec_hidden != 2 * self.enc_hidden:
            raise ValueError(f"dot attention needs dec_hidden == 2 * enc_hidden, got {self.dec_hidden} "
                             f"and {self.enc_hidden}")
        if self.tie_embeddings and self.emb_dim != self.dec_hidden:
            raise ValueError(f"tie_embeddings needs emb_dim == dec_hidden, got {self.emb_dim} "
                             f"and {self.dec_hidden}")
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ValueError("share_embeddings needs one vocabulary for source and target")
        for name in ("src_vocab", "tgt_vocab"):
            if getattr(self, name) <= EOS_ID:
                raise ValueError(f"{name} must leave room for the special ids 0..{EOS_ID}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def memory_dim(self) -> int:
        return 2 * self.enc_hidden

    @property
    def state_names(self) -> list[str]:
        """Names of the decoder state tensors, in the order the ONNX graphs use."""
        names = ["h"] + (["c"] if self.cell == "lstm" else [])
        names += ["feed"] if self.input_feeding else []
        names += ["context"] if self.attention == "none" else []
        return names

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Seq2SeqConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _rnn(cfg: Seq2SeqConfig, input_size: int, hidden: int, layers: int, bidirectional: bool) -> nn.RNNBase:
    return CELLS[cfg.cell](
        input_size, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
        dropout=cfg.dropout if layers > 1 else 0.0,
    )


def source_mask(src_lengths: Tensor, src_len: int) -> Tensor:
    """(B, S) bool, True at real tokens."""
    return torch.arange(src_len, device=src_lengths.device)[None, :] < src_lengths[:, None]


class Encoder(nn.Module):
    """Embedding -> multi-layer bidirectional RNN over packed sequences -> memory and the bridged state."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.src_vocab, cfg.emb_dim, padding_idx=PAD_ID)
        self.rnn = _rnn(cfg, cfg.emb_dim, cfg.enc_hidden, cfg.enc_layers, bidirectional=True)
        self.dropout = nn.Dropout(cfg.dropout)
        final_dim = 2 * cfg.enc_layers * cfg.enc_hidden
        self.dec_shape = (cfg.dec_layers, cfg.dec_hidden)
        self.bridge_h = nn.Linear(final_dim, cfg.dec_layers * cfg.dec_hidden)
        self.bridge_c = nn.Linear(final_dim, cfg.dec_layers * cfg.dec_hidden) if cfg.cell == "lstm" else None

    def forward(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor, State]:
        """-> memory (B, S, 2H), summary (B, 2H) = top layer's final fwd/bwd states, initial decoder state."""
        x = self.dropout(self.embedding(src_ids))  # (B, S, E)
        packed = pack_padded_sequence(x, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src_ids.size(1))  # (B, S, 2H)
        h_n, c_n = final if isinstance(final, tuple) else (final, None)  # (2L, B, H) each
        h_n = h_n.transpose(0, 1)  # (B, 2L, H)
        summary = h_n[:, -2:].flatten(1)  # (B, 2H)
        state = {"h": torch.tanh(self.bridge_h(h_n.flatten(1))).unflatten(1, self.dec_shape)}  # (B, Ld, Hd)
        if self.bridge_c is not None and c_n is not None:
            c_n = c_n.transpose(0, 1).flatten(1)  # (B, 2L*H)
            state["c"] = torch.tanh(self.bridge_c(c_n)).unflatten(1, self.dec_shape)  # (B, Ld, Hd)
        return self.dropout(memory), summary, state


class Attention(nn.Module):
    """score(h_t, h_s): additive v^T tanh(W_k h_s + W_q h_t), dot h_t^T h_s, or general h_t^T W_a h_s."""

    def __init__(self, kind: str, query_dim: int, memory_dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "additive":
            self.W_k = nn.Linear(memory_dim, query_dim, bias=False)
            self.W_q = nn.Linear(query_dim, query_dim)
            self.v = nn.Linear(query_dim, 1, bias=False)
        elif kind == "general":
            self.W_a = nn.Linear(memory_dim, query_dim, bias=False)
        elif kind != "dot":
            raise ValueError(f"unknown attention {kind!r}")

    def precompute_keys(self, memory: Tensor) -> Tensor:
        """The query-independent half of the score, computed once per sentence: (B, S, K)."""
        if self.kind == "additive":
            return self.W_k(memory)
        if self.kind == "general":
            return self.W_a(memory)
        return memory

    def forward(self, h_t: Tensor, keys: Tensor, memory: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        """h_t (B, Hd) -> context (B, M), weights (B, S) with exactly 0 on padding."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(keys + self.W_q(h_t)[:, None, :])).squeeze(2)  # (B, S)
        else:
            scores = torch.bmm(keys, h_t[:, :, None]).squeeze(2)  # (B, S)
        weights = scores.masked_fill(~src_mask, float("-inf")).softmax(dim=1)  # (B, S)
        context = torch.bmm(weights[:, None, :], memory).squeeze(1)  # (B, M)
        return context, weights


class Decoder(nn.Module):
    """One step: y_{t-1} (+ h~_{t-1} with input feeding, + c for the baseline) -> RNN -> h~_t -> logits."""

    def __init__(self, cfg: Seq2SeqConfig, attention: Attention | None) -> None:
        super().__init__()
        self.cell = cfg.cell
        self.input_feeding = cfg.input_feeding
        self.attention = attention
        self.embedding = nn.Embedding(cfg.tgt_vocab, cfg.emb_dim, padding_idx=PAD_ID)
        input_size = cfg.emb_dim + (cfg.dec_hidden if cfg.input_feeding else 0)
        input_size += cfg.memory_dim if attention is None else 0
        self.rnn = _rnn(cfg, input_size, cfg.dec_hidden, cfg.dec_layers, bidirectional=False)
        self.W_c = nn.Linear(cfg.memory_dim + cfg.dec_hidden, cfg.dec_hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dec_hidden, cfg.tgt_vocab)
        if cfg.tie_embeddings:
            self.out.weight = self.embedding.weight

    def init_state(self, bridged: State, summary: Tensor) -> State:
        """Complete the bridged h (and c) with a zero h~_0 and, for the baseline, the fixed context c."""
        state = dict(bridged)
        if self.input_feeding:
            h = bridged["h"]
            state["feed"] = h.new_zeros(h.size(0), h.size(2))  # (B, Hd)
        if self.attention is None:
            state["context"] = summary  # (B, M)
        return state

    def step(
        self, y_prev: Tensor, state: State,
        memory: Tensor | None, keys: Tensor | None, src_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor | None, State]:
        """y_prev (B,) -> logits (B, V), attention weights (B, S) or None, the next state."""
        inputs = [self.dropout(self.embedding(y_prev))]  # (B, E)
        if self.input_feeding:
            inputs.append(state["feed"])
        if self.attention is None:
            inputs.append(state["context"])
        x_t = torch.cat(inputs, dim=1)[:, None, :]  # (B, 1, In)
        h_prev = state["h"].transpose(0, 1).contiguous()  # (Ld, B, Hd)
        if self.cell == "lstm":
            c_prev = state["c"].transpose(0, 1).contiguous()  # (Ld, B, Hd)
            out, (h, c) = self.rnn(x_t, (h_prev, c_prev))
            new_state = {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}  # (B, Ld, Hd) each
        else:
            out, h = self.rnn(x_t, h_prev)
            new_state = {"h": h.transpose(0, 1)}  # (B, Ld, Hd)
        h_t = out.squeeze(1)  # (B, Hd)
        if self.attention is None:
            context, weights = state["context"], None
            new_state["context"] = context
        else:
            assert memory is not None and keys is not None and src_mask is not None
            context, weights = self.attention(h_t, keys, memory, src_mask)  # (B, M), (B, S)
        h_tilde = torch.tanh(self.W_c(torch.cat([context, h_t], dim=1)))  # (B, Hd)
        if self.input_feeding:
            new_state["feed"] = h_tilde
        return self.out(self.dropout(h_tilde)), weights, new_state


class Seq2Seq(nn.Module):
    """Encoder + decoder; `forward` returns logits for `F.cross_entropy(..., ignore_index=PAD_ID)`."""

    def __init__(self, encoder: Encoder, decoder: Decoder, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def from_config(cls, cfg: Seq2SeqConfig) -> Seq2Seq:
        attention = None
        if cfg.attention != "none":
            attention = Attention(cfg.attention, cfg.dec_hidden, cfg.memory_dim)
        encoder, decoder = Encoder(cfg), Decoder(cfg, attention)
        if cfg.share_embeddings:
            decoder.embedding.weight = encoder.embedding.weight
            if cfg.tie_embeddings:
                decoder.out.weight = encoder.embedding.weight
        return cls(encoder, decoder, cfg)

    def encode(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor | None, Tensor, State]:
        """-> memory (B, S, M), keys (B, S, K) or None without attention, src_mask (B, S), decoder state."""
        memory, summary, bridged = self.encoder(src_ids, src_lengths)
        attention = self.decoder.attention
        keys = None if attention is None else attention.precompute_keys(memory)
        src_mask = source_mask(src_lengths, src_ids.size(1))  # (B, S)
        return memory, keys, src_mask, self.decoder.init_state(bridged, summary)

    def forward(
        self, src_ids: Tensor, src_lengths: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0
    ) -> Tensor:
        """src_ids (B, S), tgt_in (B, T) starting with BOS -> logits (B, T, V) predicting tgt_in shifted left.

        With teacher_forcing < 1, each step flips one coin for the whole batch: the gold token or the
        model's own argmax is fed to the next step (scheduled sampling).
        """
        memory, keys, src_mask, state = self.encode(src_ids, src_lengths)
        y_prev = tgt_in[:, 0]  # (B,)
        logits = []
        for t in range(tgt_in.size(1)):
            logits_t, _, state = self.decoder.step(y_prev, state, memory, keys, src_mask)  # (B, V)
            logits.append(logits_t)
            if t + 1 < tgt_in.size(1):
                gold = teacher_forcing >= 1.0 or torch.rand(()).item() < teacher_forcing
                y_prev = tgt_in[:, t + 1] if gold else logits_t.argmax(dim=1)
        return torch.stack(logits, dim=1)  # (B, T, V)


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq, src_ids: Tensor, src_lengths: Tensor, max_lens: list[int]
) -> list[list[int]]:
    """Reference greedy decoding in torch: ids per sentence without BOS/EOS, at most max_lens[b] steps."""
    memory, keys, src_mask, state = model.encode(src_ids, src_lengths)
    y_prev = torch.full((src_ids.size(0),), BOS_ID, dtype=torch.long)
    outputs: list[list[int]] = [[] for _ in range(src_ids.size(0))]
    finished = [False] * src_ids.size(0)
    for t in range(max(max_lens)):
        logits, _, state = model.decoder.step(y_prev, state, memory, keys, src_mask)
        y_prev = F.log_softmax(logits, dim=1).argmax(dim=1)  # (B,)
        for b, y in enumerate(y_prev.tolist()):
            if finished[b]:
                continue
            if y == EOS_ID:
                finished[b] = True
            else:
                outputs[b].append(y)
                finished[b] = t + 1 >= max_lens[b]
        if all(finished):
            break
    return outputs
