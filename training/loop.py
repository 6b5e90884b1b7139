"""One training loop for every model kind: what differs is `task.step(model, batch)`.

Handles AdamW, gradient-norm clipping (logged), early stopping on a validation score, the best
checkpoint as safetensors, resuming, a progress bar, curves as PNG, and DistributedDataParallel
when launched by torchrun (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from tqdm import tqdm

from service.errors import UserError

log = logging.getLogger("seqserve.train")

Batch = dict[str, Tensor]
LOG_EVERY_S = 30.0


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    clip: float = 1.0
    patience: int = 3
    seed: int = 0
    device: str = "cpu"
    max_steps: int = 0  # 0 = no limit; a small number makes a dry run

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.clip <= 0:
            raise UserError("--lr and --clip must be positive")


class Task(Protocol):
    """The part of training that depends on the model kind."""

    unit: str  # what throughput counts: "examples" or "tokens"

    def train_batches(self, epoch: int, batch_size: int) -> Sequence[Batch]: ...

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        """Mean loss over the batch and how many units it covered."""
        ...

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation figures; `score` (higher is better) drives early stopping."""
        ...


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = -1


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1; one thread per process on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return Dist(dist.get_rank(), dist.get_world_size())


def resolve_device(name: str, rank: int = 0) -> torch.device:
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is available")
        return torch.device(f"cuda:{rank % torch.cuda.device_count()}")
    if name != "cpu":
        raise UserError(f"--device must be cpu or cuda, got {name!r}")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(model: nn.Module, task: Task, cfg: TrainConfig, work_dir: Path, env: Dist,
        resume: bool = False) -> History:
    """Train until early stopping; the best weights end in work_dir/best.safetensors."""
    device = resolve_device(cfg.device, env.rank)
    model.to(device)
    wrapped: nn.Module = model
    if env.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history, start_epoch = History(), 0
    state_path = work_dir / "last.pt"
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = History(**state["history"])
        start_epoch = len(history.epochs)
        log.info("resumed from %s at epoch %d", state_path, start_epoch + 1)
    stale = sum(1 for e in history.epochs[history.best_epoch + 1:]) if history.best_epoch >= 0 else 0
    steps = 0
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        stats = _train_epoch(wrapped, task, optimizer, cfg, epoch, env, steps)
        steps += int(stats.pop("steps"))
        model.eval()
        with torch.no_grad():
            valid = task.validate(model)
        model.train()
        record = {"epoch": epoch + 1, **stats, **{f"valid_{k}": v for k, v in valid.items()}}
        history.epochs.append(record)
        improved = valid["score"] > history.best_score
        if improved:
            history.best_score, history.best_epoch, stale = valid["score"], epoch, 0
        else:
            stale += 1
        log.info("epoch %d %s%s", epoch + 1, json.dumps({k: round(v, 4) for k, v in record.items()}),
                 " (best)" if improved else "")
        if env.main:
            if improved:
                save_model(model, str(work_dir / "best.safetensors"))  # handles tied weights
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "history": asdict(history)}, state_path)
            plot_history(history, work_dir / "curves.png")
        env.barrier()
        if cfg.max_steps and steps >= cfg.max_steps:
            break
    load_model(model, str(work_dir / "best.safetensors"), device=str(device))
    return history


def _train_epoch(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 epoch: int, env: Dist, steps_before: int) -> dict[str, float]:
    seed_everything(cfg.seed * 1000 + epoch * env.world + env.rank)
    batches = list(task.train_batches(epoch, max(1, cfg.batch_size // env.world)))
    batches = batches[env.rank: len(batches) // env.world * env.world: env.world]  # equal count per rank
    model.train()
    total_loss, total_units, norms, steps = 0.0, 0, [], 0
    start = last_log = time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}", disable=not env.main or None, leave=False)
    for batch in bar:
        loss, units = task.step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip))
        optimizer.step()
        total_loss += loss.item() * units
        total_units += units
        norms.append(norm)
        steps += 1
        rate = total_units * env.world / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss.item():.3f}", grad_norm=f"{norm:.2f}", **{f"{task.unit}/s": f"{rate:.0f}"})
        if env.main and bar.disable and time.perf_counter() - last_log > LOG_EVERY_S:  # no bar: log instead
            last_log = time.perf_counter()
            log.info("epoch %d step %d/%d loss %.4f grad_norm %.2f %s/s %.0f", epoch + 1, steps, len(batches),
                     loss.item(), norm, task.unit, rate)
        if cfg.max_steps and steps_before + steps >= cfg.max_steps:
            break
    elapsed = time.perf_counter() - start
    return {"train_loss": total_loss / max(total_units, 1), "grad_norm": float(np.mean(norms)) if norms else 0.0,
            "grad_norm_max": float(np.max(norms)) if norms else 0.0,
            f"{task.unit}_per_s": total_units * env.world / elapsed, "steps": steps}


def plot_history(history: History, path: Path) -> None:
    """Training loss and validation figures per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in history.epochs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [e["train_loss"] for e in history.epochs], marker="o", label="train loss")
    if all("valid_loss" in e for e in history.epochs):
        left.plot(epochs, [e["valid_loss"] for e in history.epochs], marker="o", label="valid loss")
    left.set_xlabel("epoch")
    left.legend()
    for key in sorted({k for e in history.epochs for k in e if k.startswith("valid_") and k != "valid_loss"}):
        right.plot(epochs, [e.get(key, float("nan")) for e in history.epochs], marker="o", label=key)
    right.set_xlabel("epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
