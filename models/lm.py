"""A recurrent language model: embedding -> RNN/LSTM/GRU layers -> projection -> output layer tied to the embedding.

The state is a dict of batch-first tensors (`h`, and `c` for an LSTM), each (B, layers, hidden), the layout the
ONNX graphs use, so a runtime selects or repeats rows with `arr[idx]`. `forward` reads whole padded prefixes
(packed, so each row's final state is the one after its own last token); `step` reads one token per row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from service.engine.text import EOS_ID, PAD_ID

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
State = dict[str, Tensor]


@dataclass
class LMConfig:
    vocab_size: int = 8000  # training: the tokenizer's target size, then the size it reached
    cell: str = "lstm"
    emb_dim: int = 128  # also the output layer's width: it is tied to the embedding
    hidden: int = 384
    layers: int = 1
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.vocab_size <= EOS_ID:
            raise ValueError(f"vocab_size must leave room for the special ids 0..{EOS_ID}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("emb_dim", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def state_names(self) -> list[str]:
        return ["h", "c"] if self.cell == "lstm" else ["h"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class RNNLanguageModel(nn.Module):
    """Next-token logits over the vocabulary; the output weights are the embedding (Press & Wolf 2017), reached
    through a projection from the hidden width to the embedding width when the two differ."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=PAD_ID)
        self.rnn = CELLS[cfg.cell](cfg.emb_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                                   dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.proj = nn.Linear(cfg.hidden, cfg.emb_dim) if cfg.hidden != cfg.emb_dim else None
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.dropout = nn.Dropout(cfg.dropout)

    def logits(self, h: Tensor) -> Tensor:
        """(N, H) -> (N, V). Two-dimensional on purpose: the exporter writes a Gemm on the embedding itself (transB)
        rather than a MatMul on a transposed copy, so the graphs hold the tied weights once."""
        x = self.dropout(h)
        if self.proj is not None:
            x = self.proj(x)  # (N, E)
        return F.linear(x, self.embedding.weight, self.out_bias)  # (N, V)

    def _initial(self, state: State | None) -> Tensor | tuple[Tensor, Tensor] | None:
        if state is None:
            return None
        h = state["h"].transpose(0, 1).contiguous()  # (L, B, H)
        if self.cfg.cell == "lstm":
            return h, state["c"].transpose(0, 1).contiguous()
        return h

    def _state(self, final: Tensor | tuple[Tensor, Tensor]) -> State:
        if isinstance(final, tuple):
            return {"h": final[0].transpose(0, 1), "c": final[1].transpose(0, 1)}  # (B, L, H) each
        return {"h": final.transpose(0, 1)}

    def forward(self, ids: Tensor, lengths: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) int64 padded, lengths (B,) -> logits (B, T, V) at every position, the state after each
        row's last real token."""
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed, self._initial(state))
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.size(1))  # (B, T, H)
        logits = self.logits(h.reshape(-1, h.size(-1))).reshape(ids.size(0), ids.size(1), -1)  # (B, T, V)
        return logits, self._state(final)

    def step(self, tokens: Tensor, state: State | None) -> tuple[Tensor, State]:
        """tokens (R,) int64, state each (R, L, H) -> logits (R, V), the next state."""
        x = self.dropout(self.embedding(tokens))[:, None]  # (R, 1, E)
        out, final = self.rnn(x, self._initial(state))
        return self.logits(out[:, 0]), self._state(final)
