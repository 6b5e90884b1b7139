"""Tests for the numpy reference RNN/LSTM/GRU against golden examples and torch, and of the numpy classifier
forward as the oracle for both the torch classifier and its ONNX export run by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.classifier import ClassifierConfig, RNNClassifier
from models.reference import (
    classifier_forward,
    elman_worked_example,
    identity,
    memory_cell_worked_example,
    rnn_cell,
    run_rnn,
)
from service.engine.text import pad_batch
from training.classifier_export import export_classifier

TORCH_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
INPUT_SIZE, HIDDEN_SIZE = 3, 4
LENGTHS = np.array([5, 2, 7, 1])  # unsorted on purpose: exercises enforce_sorted=False
MAX_LEN = 7


def _torch_model(cell: str, num_layers: int, bidirectional: bool) -> nn.Module:
    torch.manual_seed(0)
    return TORCH_CELLS[cell](
        INPUT_SIZE, HIDDEN_SIZE, num_layers=num_layers, bidirectional=bidirectional, batch_first=True
    )


def _numpy_params(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: t.detach().numpy().astype(np.float64) for name, t in model.state_dict().items()}


def _padded_batch(lengths: np.ndarray, max_len: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((len(lengths), max_len, INPUT_SIZE)).astype(np.float32)
    for b, length in enumerate(lengths):
        x[b, length:] = 0.0
    return x


def _torch_packed_forward(model: nn.Module, x: np.ndarray, lengths: np.ndarray):
    packed = pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        out_packed, state = model(packed)
    out, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=x.shape[1])
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    return out.numpy(), h_n.numpy(), None if c_n is None else c_n.numpy()


def test_elman_worked_example() -> None:
    y = elman_worked_example([[1, 1], [1, 1], [2, 2]])
    np.testing.assert_array_equal(y, [[4, 4], [12, 12], [32, 32]])
    # Same inputs, different order, different outputs: the memory carries history.
    y = elman_worked_example([[1, 1], [2, 2], [1, 1]])
    np.testing.assert_array_equal(y, [[4, 4], [16, 16], [36, 36]])


def test_lstm_memory_cell_worked_example() -> None:
    inputs = [[3, 1, 0], [4, 1, 0], [2, 0, 0], [1, 0, 1], [3, -1, 0]]
    c, h = memory_cell_worked_example(inputs)
    np.testing.assert_allclose(c, [3, 7, 7, 7, 0], atol=1e-3)
    np.testing.assert_allclose(h, [0, 0, 0, 7, 0], atol=1e-3)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_run_rnn_matches_torch_packed(cell: str, num_layers: int, bidirectional: bool) -> None:
    model = _torch_model(cell, num_layers, bidirectional)
    x = _padded_batch(LENGTHS, MAX_LEN)
    out_ref, h_ref, c_ref = _torch_packed_forward(model, x, LENGTHS)

    params = _numpy_params(model)
    out, h_n, c_n = run_rnn(cell, params, x.astype(np.float64), LENGTHS, num_layers, bidirectional)

    dirs = 2 if bidirectional else 1
    assert out.shape == (len(LENGTHS), MAX_LEN, dirs * HIDDEN_SIZE)
    assert h_n.shape == (num_layers * dirs, len(LENGTHS), HIDDEN_SIZE)
    np.testing.assert_allclose(out, out_ref, atol=1e-5)
    np.testing.assert_allclose(h_n, h_ref, atol=1e-5)
    if cell == "lstm":
        np.testing.assert_allclose(c_n, c_ref, atol=1e-5)
    else:
        assert c_n is None


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_run_rnn_is_pad_invariant(cell: str) -> None:
    params = _numpy_params(_torch_model(cell, num_layers=2, bidirectional=True))
    x = _padded_batch(LENGTHS, MAX_LEN).astype(np.float64)
    b, length = 1, LENGTHS[1]

    out_batch, h_batch, c_batch = run_rnn(cell, params, x, LENGTHS, 2, True)
    out_alone, h_alone, c_alone = run_rnn(cell, params, x[b : b + 1, :length], np.array([length]), 2, True)

    np.testing.assert_allclose(out_batch[b, :length], out_alone[0], atol=1e-12)
    np.testing.assert_array_equal(out_batch[b, length:], 0.0)
    np.testing.assert_allclose(h_batch[:, b], h_alone[:, 0], atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(c_batch[:, b], c_alone[:, 0], atol=1e-12)


@pytest.mark.parametrize(
    ("w", "expected"),
    [(1.0, 1.0), (1.01, 20959.16), (0.99, 4.317e-5)],
    ids=["stable", "exploding", "vanishing"],
)
def test_linear_rnn_gradient_through_1000_steps_is_w_pow_1000(w: float, expected: float) -> None:
    steps = 1000
    w_hh = torch.tensor([[w]], dtype=torch.float64)
    w_ih = torch.tensor([[0.5]], dtype=torch.float64)  # irrelevant: inputs are zero
    x = torch.zeros(steps, 1, 1, dtype=torch.float64)
    h_0 = torch.ones(1, 1, dtype=torch.float64, requires_grad=True)

    h_t = h_0
    for t in range(steps):
        h_t = x[t] @ w_ih.T + h_t @ w_hh.T
    (grad,) = torch.autograd.grad(h_t.sum(), h_0)

    assert grad.item() == pytest.approx(w**steps, rel=1e-12)
    assert grad.item() == pytest.approx(expected, rel=1e-3)

    # With h_0 = 1 and x = 0 the forward value h_1000 equals the same factor w**1000.
    h_np = np.ones((1, 1))
    for _ in range(steps):
        h_np = rnn_cell(np.zeros((1, 1)), h_np, w_ih.numpy(), w_hh.numpy(), activation=identity)
    assert h_np.item() == pytest.approx(expected, rel=1e-3)
    assert h_np.item() == pytest.approx(h_t.item(), rel=1e-12)


VOCAB = 40
TEXTS = [[5, 9, 13, 2, 7], [7, 8], [4, 11, 12, 30, 31, 32, 39], [3]]  # ids of texts of different lengths


@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_classifier_forward_is_the_oracle_for_torch_and_onnxruntime(
    cell: str, num_layers: int, bidirectional: bool, pooling: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    cfg = ClassifierConfig(vocab_size=VOCAB, num_classes=3, cell=cell, emb_dim=5, hidden=4, layers=num_layers,
                           bidirectional=bidirectional, pooling=pooling, dropout=0.0)
    model = RNNClassifier(cfg).eval()
    ids, lengths = pad_batch(TEXTS)  # (B, T) int64, padded with 0 after each text
    ids = np.pad(ids, ((0, 0), (0, 2)))  # two steps of padding past the longest text too

    expected = classifier_forward(_numpy_params(model), ids, lengths, cell, num_layers, bidirectional, pooling)
    assert expected.shape == (len(TEXTS), 3)
    with torch.no_grad():
        from_torch = model(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
    np.testing.assert_allclose(from_torch, expected, rtol=1e-4, atol=1e-5)

    export_classifier(model, tmp_path / "model.onnx", TEXTS)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (from_onnx,) = session.run(["logits"], {"ids": ids, "lengths": lengths})
    np.testing.assert_allclose(from_onnx, expected, rtol=1e-4, atol=1e-5)
