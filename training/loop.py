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
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from tqdm import tqdm

from service.engine.text import SPECIAL_TOKENS
from service.errors import UserError

log = logging.getLogger("seqserve.train")

Batch = dict[str, Tensor]
LOG_EVERY_S = 30.0
CHECKPOINT = "last.pt"  # model, optimizer and history after the latest epoch, for --resume
EPOCH_CHECKPOINT = "epoch-{epoch}.safetensors"  # the last epochs' weights, kept for --average-last
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # train_tokenizer's floor: the special tokens and the 256 bytes


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
    lr_decay: float = 1.0  # the learning rate is multiplied by this after an epoch without improvement (1: never)
    lr_decay_from: int = 0  # from this epoch on, after every epoch instead (Zaremba et al. 2014's schedule); 0: never
    average_last: int = 0  # average the weights of the last N epochs at the end, kept if it validates better; 0/1: off

    def __post_init__(self) -> None:
        check_at_least(1, epochs=self.epochs, batch_size=self.batch_size, patience=self.patience)
        check_at_least(0, weight_decay=self.weight_decay, seed=self.seed, lr_decay_from=self.lr_decay_from,
                       average_last=self.average_last)
        check_above(0, lr=self.lr, clip=self.clip, lr_decay=self.lr_decay)
        if self.lr_decay > 1:
            raise UserError(f"--lr-decay must be at most 1, got {self.lr_decay}")


def _flag(name: str) -> str:
    """An option as the CLI spells it: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def check_at_least(minimum: float, **values: float) -> None:
    """UserError naming the first option below `minimum`; jobs and configs validate with these at construction."""
    for name, value in values.items():
        if not value >= minimum:  # NaN fails too
            raise UserError(f"{_flag(name)} must be at least {minimum}, got {value}")


def check_above(minimum: float, **values: float) -> None:
    for name, value in values.items():
        if not value > minimum:
            raise UserError(f"{_flag(name)} must be above {minimum}, got {value}")


def check_fraction(**values: float) -> None:
    """Each value in [0, 1): dropout, label smoothing, split fractions."""
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise UserError(f"{_flag(name)} must be at least 0 and below 1, got {value}")


def check_split(valid_fraction: float, test_fraction: float) -> None:
    """Split fractions each in [0, 1) that leave some data to train on."""
    check_fraction(valid_fraction=valid_fraction, test_fraction=test_fraction)
    if valid_fraction + test_fraction >= 1:
        raise UserError(f"--valid-fraction and --test-fraction add up to {valid_fraction + test_fraction:g}; "
                        "they must stay below 1 to leave data to train on")


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
    averaged: dict[str, Any] | None = None  # the checkpoint average: its epochs, validation and whether it was kept


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"  # this process's device: cuda:LOCAL_RANK under torchrun on GPUs

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sums over every process; the values themselves in a single process."""
        if self.world == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return [float(v) for v in total.tolist()]


def init_distributed(device: str) -> Dist:
    """This process's place: its device, and under torchrun (WORLD_SIZE > 1) its rank in the process group
    (NCCL on GPUs, gloo on CPU; one thread per process on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = rank_device(device, local_rank, world, torch.cuda.device_count() if device.startswith("cuda") else 0)
    if name.startswith("cuda"):
        torch.cuda.set_device(torch.device(name))  # before NCCL starts: each rank on its own GPU
    if world == 1:
        return Dist(device=name)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if name.startswith("cuda") else "gloo")
    if name == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return Dist(dist.get_rank(), dist.get_world_size(), name)


def rank_device(name: str, local_rank: int, world: int, cuda_devices: int) -> str:
    """The device of the process with this LOCAL_RANK: under torchrun `cuda:LOCAL_RANK` of the node's GPUs, alone
    `cuda` (or the `cuda:N` asked for), or the CPU."""
    if name.startswith("cuda"):
        if cuda_devices < 1:
            raise UserError("--device cuda was asked for but no CUDA device is available")
        index = name.removeprefix("cuda").removeprefix(":")
        if world == 1 and index.isdigit() and int(index) < cuda_devices:
            return f"cuda:{index}"
        if name != "cuda":
            raise UserError(f"--device {name!r}: give cuda (under torchrun each process takes the GPU of its "
                            f"LOCAL_RANK), or cuda:N with N below {cuda_devices}")
        if local_rank >= cuda_devices:
            raise UserError(f"process with LOCAL_RANK {local_rank} has no GPU of its own ({cuda_devices} visible); "
                            "start at most one process per GPU (torchrun --nproc-per-node)")
        return f"cuda:{local_rank}"
    if name != "cpu":
        raise UserError(f"--device must be cpu or cuda, got {name!r}")
    return "cpu"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy takes 32 bits; epoch seeds are seed * 1000 + ...
    torch.manual_seed(seed)


def prepare_work_dir(work_dir: Path, resume: bool) -> None:
    """Create the work dir up front; to resume, it must hold the checkpoint of an earlier run."""
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--work-dir {work_dir}: cannot create the folder ({exc.strerror or exc})") from None
    if resume:
        _require_checkpoint(work_dir)


def _require_checkpoint(work_dir: Path) -> None:
    if not (work_dir / CHECKPOINT).is_file():
        raise UserError(f"--resume: nothing to resume in {work_dir} (no {CHECKPOINT} from an earlier run)")


def check_same_model(work_dir: Path, model: dict[str, Any]) -> None:
    """Refuse to resume a run whose model.json describes another architecture (dropout may change)."""
    path = work_dir / "model.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    changed = [k for k, v in model.items() if k != "dropout" and k in before and before[k] != v]
    if changed:
        what = ", ".join(f"{k} {model[k]} (was {before[k]})" for k in changed)
        raise UserError(f"--resume: the model options differ from the run being resumed in {work_dir}: {what}")


def fit(model: nn.Module, task: Task, cfg: TrainConfig, work_dir: Path, env: Dist,
        resume: bool = False) -> History:
    """Train until early stopping; the best weights end in work_dir/best.safetensors."""
    device = torch.device(env.device)
    model.to(device)
    wrapped: nn.Module = model
    if env.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=None if device.index is None
                                                      else [device.index])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history, start_epoch = History(), 0
    state_path = work_dir / CHECKPOINT
    if resume:
        history = _resume(model, optimizer, state_path, device)
        start_epoch = len(history.epochs)
        if env.main:
            log.info("resumed from %s at epoch %d", state_path, start_epoch + 1)
    elif env.main:
        for old in _epoch_checkpoints(work_dir):  # a fresh run in a reused work dir: never average another run's
            old.unlink()
        (work_dir / "averaged.safetensors").unlink(missing_ok=True)
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
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **stats,
                  **{f"valid_{k}": v for k, v in valid.items()}}
        history.epochs.append(record)
        improved = valid["score"] > history.best_score
        if improved:
            history.best_score, history.best_epoch, stale = valid["score"], epoch, 0
        else:
            stale += 1
        if (epoch + 1 >= cfg.lr_decay_from) if cfg.lr_decay_from else not improved:
            for group in optimizer.param_groups:  # smaller steps from now on (the optimizer state keeps them)
                group["lr"] *= cfg.lr_decay
        if env.main:
            log.info("epoch %d %s%s", epoch + 1, json.dumps({k: round(v, 4) for k, v in record.items()}),
                     " (best)" if improved else "")
            if improved:
                save_model(model, str(work_dir / "best.safetensors"))  # handles tied weights
            if cfg.average_last > 1:
                _keep_epoch_checkpoint(model, work_dir, epoch + 1, cfg.average_last)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "history": asdict(history)}, state_path)
            plot_history(history, work_dir / "curves.png")
        env.barrier()
        if cfg.max_steps and steps >= cfg.max_steps:
            break
    if cfg.average_last > 1 and (history.averaged is None
                                 or history.averaged["epochs"] != _epoch_numbers(work_dir, cfg.average_last)):
        _average_checkpoints(model, task, history, work_dir, cfg.average_last, env)  # none yet, or of older epochs
    load_model(model, str(work_dir / "best.safetensors"), device=str(device))
    return history


def _epoch_checkpoints(work_dir: Path) -> list[Path]:
    """The kept per-epoch weights, oldest first."""
    return sorted(work_dir.glob(EPOCH_CHECKPOINT.format(epoch="*")))


def _epoch_numbers(work_dir: Path, keep: int) -> list[int]:
    return [int(p.stem.split("-")[1]) for p in _epoch_checkpoints(work_dir)[-keep:]]


def _keep_epoch_checkpoint(model: nn.Module, work_dir: Path, epoch: int, keep: int) -> None:
    save_model(model, str(work_dir / EPOCH_CHECKPOINT.format(epoch=f"{epoch:03d}")))
    for old in _epoch_checkpoints(work_dir)[:-keep]:
        old.unlink()


def average_state(paths: Sequence[Path]) -> dict[str, Tensor]:
    """The element-wise mean of the tensors saved in `paths` (same keys in each), in float64 then cast back."""
    from safetensors.torch import load_file

    total: dict[str, Tensor] = {}
    for path in paths:
        for key, value in load_file(str(path)).items():
            total[key] = total[key] + value.double() if key in total else value.double()
    first = load_file(str(paths[0]))
    return {key: (value / len(paths)).to(first[key].dtype) for key, value in total.items()}


def _average_checkpoints(model: nn.Module, task: Task, history: History, work_dir: Path, keep: int,
                         env: Dist) -> None:
    """Average the last `keep` epochs' weights (Junczys-Dowmunt et al. 2016; Vaswani et al. 2017). The average
    replaces best.safetensors only if its validation score is at least the best single epoch's, which stays as
    best-epoch.safetensors; the decision, made on validation data alone, is recorded in the history."""
    from safetensors.torch import save_file

    paths = _epoch_checkpoints(work_dir)[-keep:]
    if len(paths) < 2:
        return
    averaged_path = work_dir / "averaged.safetensors"
    if env.main:
        save_file(average_state(paths), str(averaged_path))
    env.barrier()
    load_model(model, str(averaged_path), device=str(next(model.parameters()).device))
    model.eval()
    with torch.no_grad():
        valid = task.validate(model)
    model.train()
    kept = valid["score"] >= history.best_score
    history.averaged = {"epochs": _epoch_numbers(work_dir, keep), "kept": kept,
                        **{f"valid_{k}": v for k, v in valid.items()}}
    if env.main:
        log.info("average of epochs %s: %s (%s the best epoch's %.4f)", history.averaged["epochs"],
                 json.dumps({k: round(v, 4) for k, v in valid.items()}), "kept over" if kept else "below",
                 history.best_score)
        if kept:
            (work_dir / "best.safetensors").replace(work_dir / "best-epoch.safetensors")
            averaged_path.replace(work_dir / "best.safetensors")
        state = torch.load(work_dir / CHECKPOINT, weights_only=False)
        state["history"] = asdict(history)
        torch.save(state, work_dir / CHECKPOINT)
    env.barrier()


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer, state_path: Path,
            device: torch.device) -> History:
    """Load the checkpoint into `model` and `optimizer`; a model of other sizes is the user's mistake."""
    _require_checkpoint(state_path.parent)
    state = torch.load(state_path, map_location=device, weights_only=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:  # torch lists every mismatched tensor; the first says enough
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise UserError(f"--resume: the model options differ from the run being resumed in {state_path.parent} "
                        f"({detail})") from None
    optimizer.load_state_dict(state["optimizer"])
    return History(**state["history"])


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
    # Every rank trained on its own shard: the epoch's loss is the mean over all of them.
    total_loss, all_units = env.all_sum([total_loss, float(total_units)], next(model.parameters()).device)
    return {"train_loss": total_loss / max(all_units, 1), "grad_norm": float(np.mean(norms)) if norms else 0.0,
            "grad_norm_max": float(np.max(norms)) if norms else 0.0,
            f"{task.unit}_per_s": all_units / elapsed, "steps": steps}


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
