"""A recurrent text classifier: embedding -> (bi)RNN/LSTM/GRU over packed sequences -> pooling -> linear."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
POOLINGS = ("mean", "max", "last")


@dataclass
class ClassifierConfig:
    vocab_size: int = 8000  # training: the tokenizer's target size, then the size it reached
    num_classes: int = 2  # training: set from the labels in the data
    cell: str = "lstm"
    emb_dim: int = 128
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3
    pooling: str = "max"

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class RNNClassifier(nn.Module):
    """Pad-aware by construction: the RNN sees packed sequences and pooling masks padded steps."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=0)
        self.rnn = CELLS[cfg.cell](
            cfg.emb_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        dirs = 2 if cfg.bidirectional else 1
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(dirs * cfg.hidden, cfg.num_classes)

    def forward(self, ids: Tensor, lengths: Tensor, perturb: Tensor | None = None) -> Tensor:
        """ids (B, T) int64, lengths (B,) int64 -> logits (B, C).

        `perturb` (B, T, E) is added to the embeddings (adversarial training); the embeddings of the last
        call stay in `self.embedded` so a training step can take the loss gradient with respect to them.
        """
        self.embedded = self.embedding(ids)  # (B, T, E)
        x = self.dropout(self.embedded if perturb is None else self.embedded + perturb)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.size(1))  # (B, T, dirs*H)
        if self.cfg.pooling == "last":
            # The last layer's final states, read from its outputs rather than h_n: the exporter cannot
            # slice h_n of a one-layer packed RNN. Forward ends at each text's last step, backward at step 0.
            H = self.cfg.hidden
            h_t = h[torch.arange(ids.size(0), device=ids.device), lengths - 1, :H]  # (B, H)
            pooled = torch.cat([h_t, h[:, 0, H:]], dim=-1) if self.cfg.bidirectional else h_t  # (B, dirs*H)
        else:
            mask = (torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None])[..., None]
            if self.cfg.pooling == "max":
                pooled = h.masked_fill(~mask, float("-inf")).amax(dim=1)  # (B, dirs*H)
            else:
                pooled = (h * mask).sum(dim=1) / lengths[:, None].to(h.dtype)  # (B, dirs*H)
        return self.out(self.dropout(pooled))  # (B, C)
