"""What the CLI's commands share: the parser that exits 2 on a mistake, version options, training options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from service.errors import UserError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit code 2, like every other user mistake."""
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def train_options(p: argparse.ArgumentParser, cells: tuple[str, ...] = ("rnn", "lstm", "gru")) -> None:
    p.add_argument("--out", required=True, type=Path, help="model folder, e.g. model_repository/NAME")
    version_options(p)
    p.add_argument("--work-dir", type=Path, help="checkpoints and resume state (default: runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue from the work dir's last epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping threshold")
    p.add_argument("--patience", type=int, default=3, help="epochs without improvement before stopping")
    p.add_argument("--lr-decay", type=float, default=1.0, help="multiply the learning rate by this after each epoch "
                   "without improvement (default 1: never)")
    p.add_argument("--lr-decay-from", type=int, default=0, metavar="EPOCH", help="instead, multiply it by --lr-decay "
                   "after every epoch from this one on (0: only on plateaus)")
    p.add_argument("--average-last", type=int, default=0, metavar="N", help="average the weights of the last N "
                   "epochs at the end, kept if it validates at least as well as the best epoch (0: off)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dry-run", action="store_true", help="a few steps only (for CI)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-length", type=int, default=256, help="tokens kept per text")
    p.add_argument("--cell", choices=list(cells), default="lstm")
    p.add_argument("--emb-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.3)


def version_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", type=int, help="version number to write (default: the next one)")
    p.add_argument("--overwrite", action="store_true", help="replace --version if it already exists")


def check_version(out: Path, version: int | None, overwrite: bool) -> None:
    """Up front, before any work: --out can be created and --version N is new (or --overwrite was given)."""
    if version is not None and version < 1:
        raise UserError(f"--version must be at least 1, got {version}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    if version is not None and (out / str(version)).exists() and not overwrite:
        raise UserError(f"version {version} already exists in {out}; pass --overwrite to replace it")


def train_config(a: argparse.Namespace) -> Any:
    from training.loop import TrainConfig

    return TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                       clip=a.clip, patience=a.patience, seed=a.seed, device=a.device,
                       max_steps=3 if a.dry_run else 0, lr_decay=a.lr_decay,
                       lr_decay_from=a.lr_decay_from, average_last=a.average_last)


def model_config(cls: type[Any], **options: Any) -> Any:
    """The kind's model config, built once from the options; its own rules become one-line user errors."""
    try:
        return cls(**options)
    except ValueError as exc:
        raise UserError(f"model options: {exc}") from None
