"""Each process's device under torchrun, decided without a GPU: cuda:LOCAL_RANK, set before NCCL starts."""

import pytest
import torch

from service.errors import UserError
from training import loop
from training.loop import rank_device


@pytest.mark.parametrize(("name", "local_rank", "world", "gpus", "device"), [
    ("cpu", 0, 1, 0, "cpu"),
    ("cpu", 3, 4, 8, "cpu"),
    ("cuda", 0, 1, 1, "cuda:0"),
    ("cuda", 0, 4, 4, "cuda:0"),
    ("cuda", 3, 4, 4, "cuda:3"),  # torchrun --nproc-per-node 4: the fourth process on the fourth GPU
    ("cuda", 1, 2, 8, "cuda:1"),
    ("cuda:2", 0, 1, 4, "cuda:2"),  # one process may pick its GPU
])
def test_each_rank_gets_its_own_device(name, local_rank, world, gpus, device):
    assert rank_device(name, local_rank, world, gpus) == device


@pytest.mark.parametrize(("name", "local_rank", "world", "gpus", "message"), [
    ("cuda", 0, 1, 0, "no CUDA device is available"),
    ("cuda", 4, 8, 4, "LOCAL_RANK 4 has no GPU of its own (4 visible)"),
    ("cuda:1", 1, 2, 2, "under torchrun each process takes the GPU of its LOCAL_RANK"),
    ("cuda:7", 0, 1, 2, "cuda:N with N below 2"),
    ("tpu", 0, 1, 0, "--device must be cpu or cuda"),
])
def test_device_mistakes_are_user_errors(name, local_rank, world, gpus, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rank_device(name, local_rank, world, gpus)


def test_init_distributed_sets_the_cuda_device_before_training(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    env = loop.init_distributed("cuda")
    assert (env.rank, env.world, env.device) == (0, 1, "cuda:0")
    assert chosen == [torch.device("cuda:0")]
    assert loop.init_distributed("cpu").device == "cpu" and len(chosen) == 1


class _FlatTask:
    """A task whose validation never improves after the first epoch (or, `improving`, always does)."""

    unit = "examples"

    def __init__(self, improving: bool = False) -> None:
        self.epochs, self.improving = 0, improving

    def train_batches(self, epoch, batch_size):
        return [{"x": torch.ones(4, 2)}]

    def step(self, model, batch):
        return model(batch["x"]).pow(2).mean(), 4

    def validate(self, model):
        self.epochs += 1
        return {"score": float(self.epochs) if self.improving else 1.0 if self.epochs == 1 else 0.5}


@pytest.mark.parametrize(("decay", "start", "improving", "rates"), [
    (1.0, 0, False, [0.1, 0.1, 0.1, 0.1]), (0.5, 0, False, [0.1, 0.1, 0.05, 0.025]),
    (0.5, 0, True, [0.1, 0.1, 0.1, 0.1]), (0.5, 2, True, [0.1, 0.1, 0.05, 0.025])])
def test_the_learning_rate_decays_on_plateaus_or_from_an_epoch_on(tmp_path, decay, start, improving, rates):
    cfg = loop.TrainConfig(epochs=4, lr=0.1, patience=5, lr_decay=decay, lr_decay_from=start)
    history = loop.fit(torch.nn.Linear(2, 1), _FlatTask(improving), cfg, tmp_path, loop.Dist())
    assert [e["lr"] for e in history.epochs] == pytest.approx(rates)  # each epoch trained at its rate
    with pytest.raises(UserError, match="--lr-decay"):
        loop.TrainConfig(lr_decay=1.5)
