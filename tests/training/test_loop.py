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


class _ScriptedTask(_FlatTask):
    """Validation scores from a script (one per call, the last call is the checkpoint average's); it records the
    weights it was shown."""

    def __init__(self, scores):
        super().__init__()
        self.scores, self.seen = list(scores), []

    def validate(self, model):
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"score": self.scores[len(self.seen) - 1]}


@pytest.mark.parametrize("average_wins", [True, False])
def test_the_last_epochs_are_averaged_and_kept_only_if_they_validate_better(tmp_path, average_wins):
    scores = [1.0, 3.0, 2.0, 2.5, 4.0 if average_wins else 2.9]  # best single epoch: the second
    task = _ScriptedTask(scores)
    model = torch.nn.Linear(2, 1)
    cfg = loop.TrainConfig(epochs=4, lr=0.1, patience=5, average_last=3)
    history = loop.fit(model, task, cfg, tmp_path, loop.Dist())
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == [f"epoch-00{i}.safetensors" for i in (2, 3, 4)]
    mean = {k: sum(seen[k] for seen in task.seen[1:4]) / 3 for k in task.seen[0]}
    for key, value in mean.items():  # validation saw the mean of epochs 2 to 4
        torch.testing.assert_close(task.seen[4][key], value)
    expected = mean if average_wins else task.seen[1]  # ... and training ends on it, or on the best epoch
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    assert history.best_epoch == 1 and history.averaged is not None
    assert history.averaged["epochs"] == [2, 3, 4] and history.averaged["kept"] is average_wins
    assert history.averaged["valid_score"] == scores[4]
    assert (tmp_path / "best-epoch.safetensors").is_file() is average_wins
    again = loop.fit(torch.nn.Linear(2, 1), _ScriptedTask(scores), cfg, tmp_path, loop.Dist(), resume=True)
    assert again.averaged == history.averaged  # a finished run resumes to the same answer, averaged once
    longer = loop.TrainConfig(epochs=6, lr=0.1, patience=9, average_last=3)
    more = loop.fit(torch.nn.Linear(2, 1), _ScriptedTask([0.1, 0.2, 0.3]), longer, tmp_path, loop.Dist(), resume=True)
    assert more.averaged is not None and more.averaged["epochs"] == [4, 5, 6]  # resumed for more: averaged again
    short = loop.TrainConfig(epochs=2, lr=0.1, patience=5, average_last=3)
    fresh = loop.fit(torch.nn.Linear(2, 1), _ScriptedTask([1.0, 2.0, 0.5]), short, tmp_path, loop.Dist())
    assert fresh.averaged is not None and fresh.averaged["epochs"] == [1, 2]  # never the earlier run's epochs


def test_average_state_is_the_elementwise_mean(tmp_path):
    from safetensors.torch import save_file

    paths = []
    for i, value in enumerate([1.0, 2.0, 6.0]):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file({"w": torch.full((2, 2), value), "b": torch.tensor([value], dtype=torch.float16)}, str(paths[-1]))
    state = loop.average_state(paths)
    torch.testing.assert_close(state["w"], torch.full((2, 2), 3.0))
    assert state["b"].dtype == torch.float16 and float(state["b"]) == 3.0
    with pytest.raises(UserError, match="--average-last"):
        loop.TrainConfig(average_last=-1)
