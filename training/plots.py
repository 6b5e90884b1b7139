"""Attention heatmaps: source tokens x target tokens, one PNG per example."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service.engine.translator import Translation


def plot_attention_maps(translations: Sequence[Translation], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, t in enumerate(translations):
        if t.attention is None or not len(t.target_tokens):
            continue
        weights = t.attention[: len(t.target_tokens), : len(t.source_tokens)]  # (T, S)
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(t.source_tokens)), max(3, 0.4 * len(t.target_tokens))))
        ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(t.source_tokens)), [s.strip() or "␣" for s in t.source_tokens], rotation=90)
        ax.set_yticks(range(len(t.target_tokens)), [s.strip() or "␣" for s in t.target_tokens])
        ax.set_xlabel("source tokens")
        ax.set_ylabel("target tokens")
        ax.set_title(t.text[:80], fontsize=8)
        fig.tight_layout()
        path = out_dir / f"attention_{i:03d}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
