"""Numpy-only reference forward of Elman RNN, LSTM and GRU in PyTorch's weight layout, and of the classifier."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

Activation = Callable[[np.ndarray], np.ndarray]

_GATES_PER_CELL = {"rnn": 1, "lstm": 4, "gru": 3}


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, written to avoid overflow for large |x|."""
    return np.exp(-np.logaddexp(0.0, -x))


def identity(x: np.ndarray) -> np.ndarray:
    """Linear activation."""
    return x


def _affine(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """x @ w.T + b with torch's (out, in) weight layout; b may be None."""
    y = x @ w.T
    return y if b is None else y + b


def rnn_cell(
    x_t: np.ndarray,
    h_prev: np.ndarray,
    w_ih: np.ndarray,
    w_hh: np.ndarray,
    b_ih: np.ndarray | None = None,
    b_hh: np.ndarray | None = None,
    activation: Activation = np.tanh,
) -> np.ndarray:
    """Elman step: h_t = act(W_ih x_t + b_ih + W_hh h_prev + b_hh)."""
    return activation(_affine(x_t, w_ih, b_ih) + _affine(h_prev, w_hh, b_hh))


def lstm_cell(
    x_t: np.ndarray,
    h_prev: np.ndarray,
    c_prev: np.ndarray,
    w_ih: np.ndarray,
    w_hh: np.ndarray,
    b_ih: np.ndarray | None = None,
    b_hh: np.ndarray | None = None,
    gate: Activation = sigmoid,
    cell_act: Activation = np.tanh,
    out_act: Activation = np.tanh,
) -> tuple[np.ndarray, np.ndarray]:
    """LSTM step with torch gate order (i, f, g, o); returns (h_t, c_t)."""
    pre = _affine(x_t, w_ih, b_ih) + _affine(h_prev, w_hh, b_hh)  # (B, 4H)
    pre_i, pre_f, pre_g, pre_o = np.split(pre, 4, axis=-1)
    i_t = gate(pre_i)
    f_t = gate(pre_f)
    g_t = cell_act(pre_g)
    o_t = gate(pre_o)
    c_t = f_t * c_prev + i_t * g_t
    h_t = o_t * out_act(c_t)
    return h_t, c_t


def gru_cell(
    x_t: np.ndarray,
    h_prev: np.ndarray,
    w_ih: np.ndarray,
    w_hh: np.ndarray,
    b_ih: np.ndarray | None = None,
    b_hh: np.ndarray | None = None,
    gate: Activation = sigmoid,
    activation: Activation = np.tanh,
) -> np.ndarray:
    """GRU step with torch gate order (r, z, n)."""
    x_r, x_z, x_n = np.split(_affine(x_t, w_ih, b_ih), 3, axis=-1)  # 3 x (B, H)
    h_r, h_z, h_n = np.split(_affine(h_prev, w_hh, b_hh), 3, axis=-1)  # 3 x (B, H)
    r_t = gate(x_r + h_r)
    z_t = gate(x_z + h_z)
    # r_t gates the hidden projection *including* b_hn, as torch (and cuDNN) do.
    n_t = activation(x_n + r_t * h_n)
    return (1.0 - z_t) * n_t + z_t * h_prev


def _run_direction(
    cell: str,
    weights: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None],
    x: np.ndarray,
    lengths: np.ndarray,
    hidden_size: int,
    reverse: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One layer, one direction over a padded batch; returns (outputs, h_n, c_n)."""
    batch, steps, _ = x.shape
    h_t = np.zeros((batch, hidden_size), dtype=x.dtype)
    c_t = np.zeros_like(h_t) if cell == "lstm" else None
    out = np.zeros((batch, steps, hidden_size), dtype=x.dtype)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    for t in order:
        # Padded steps leave the state untouched, so the forward pass freezes at lengths[b] - 1
        # and the reverse pass effectively starts there from a zero state.
        valid = (t < lengths)[:, None]  # (B, 1)
        if cell == "lstm":
            h_new, c_new = lstm_cell(x[:, t], h_t, c_t, *weights)
            c_t = np.where(valid, c_new, c_t)
        elif cell == "gru":
            h_new = gru_cell(x[:, t], h_t, *weights)
        else:
            h_new = rnn_cell(x[:, t], h_t, *weights)
        h_t = np.where(valid, h_new, h_t)
        out[:, t] = np.where(valid, h_t, 0.0)
    return out, h_t, c_t


def run_rnn(
    cell: str,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    lengths: np.ndarray,
    num_layers: int,
    bidirectional: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Pad-aware forward matching torch packed sequences; returns (output, h_n, c_n)."""
    if cell not in _GATES_PER_CELL:
        raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(_GATES_PER_CELL)}")
    lengths = np.asarray(lengths)
    hidden_size = params["weight_hh_l0"].shape[0] // _GATES_PER_CELL[cell]
    suffixes = ["", "_reverse"] if bidirectional else [""]
    layer_in = x
    h_n: list[np.ndarray] = []
    c_n: list[np.ndarray] = []
    for layer in range(num_layers):
        outputs = []
        for suffix in suffixes:
            key = f"l{layer}{suffix}"
            weights = (
                params[f"weight_ih_{key}"],
                params[f"weight_hh_{key}"],
                params.get(f"bias_ih_{key}"),
                params.get(f"bias_hh_{key}"),
            )
            out, h_last, c_last = _run_direction(
                cell, weights, layer_in, lengths, hidden_size, reverse=suffix == "_reverse"
            )
            outputs.append(out)
            h_n.append(h_last)
            if c_last is not None:
                c_n.append(c_last)
        layer_in = np.concatenate(outputs, axis=-1)  # (B, T, dirs * H)
    return layer_in, np.stack(h_n), np.stack(c_n) if cell == "lstm" else None


def pool(
    out: np.ndarray, h_n: np.ndarray, lengths: np.ndarray, pooling: str, bidirectional: bool
) -> np.ndarray:
    """Pool per-step outputs (B, T, D) over each text's real steps, or take the top layer's final states."""
    lengths = np.asarray(lengths)
    if pooling == "last":
        dirs = 2 if bidirectional else 1
        return h_n[-dirs:].transpose(1, 0, 2).reshape(out.shape[0], -1)  # (dirs, B, H) -> (B, dirs * H)
    valid = (np.arange(out.shape[1])[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
    if pooling == "max":
        return np.where(valid, out, -np.inf).max(axis=1)  # (B, D)
    if pooling == "mean":
        return np.where(valid, out, 0.0).sum(axis=1) / lengths[:, None]  # (B, D)
    raise ValueError(f"unknown pooling {pooling!r}; expected one of last, max, mean")


def classifier_forward(
    params: dict[str, np.ndarray],
    ids: np.ndarray,
    lengths: np.ndarray,
    cell: str,
    num_layers: int,
    bidirectional: bool,
    pooling: str,
) -> np.ndarray:
    """Numpy twin of models.classifier.RNNClassifier in eval mode: embed -> recurrent layers -> pool -> linear.

    `params` is the classifier's state_dict as numpy arrays (keys `embedding.weight`, `rnn.*`, `out.*`);
    ids (B, T) are padded after each text's length; returns logits (B, C).
    """
    x_t = params["embedding.weight"][ids]  # (B, T, E)
    rnn = {name.removeprefix("rnn."): w for name, w in params.items() if name.startswith("rnn.")}
    out, h_n, _ = run_rnn(cell, rnn, x_t, lengths, num_layers, bidirectional)  # (B, T, dirs * H)
    pooled = pool(out, h_n, lengths, pooling, bidirectional)  # (B, dirs * H)
    return _affine(pooled, params["out.weight"], params["out.bias"])  # (B, C)


def elman_worked_example(inputs: ArrayLike) -> np.ndarray:
    """All-ones, bias-free, linear 2-2-2 Elman net from h_0 = 0; returns y_t = W_hy h_t per step."""
    w_ih = np.ones((2, 2))
    w_hh = np.ones((2, 2))
    w_hy = np.ones((2, 2))
    h_t = np.zeros((1, 2))
    outputs = []
    for x_t in np.asarray(inputs, dtype=float):
        h_t = rnn_cell(x_t[None, :], h_t, w_ih, w_hh, activation=identity)
        outputs.append((h_t @ w_hy.T)[0])
    return np.stack(outputs)  # (T, 2)


def memory_cell_params() -> dict[str, np.ndarray]:
    """Hand-set 1-unit LSTM, input size 3, torch layout: g = x1, i/f = 100 x2 -/+ 10, o = 100 x3 - 10."""
    weight_ih = np.array(
        [
            [0.0, 100.0, 0.0],  # i
            [0.0, 100.0, 0.0],  # f
            [1.0, 0.0, 0.0],  # g
            [0.0, 0.0, 100.0],  # o
        ]
    )  # (4H, I)
    return {
        "weight_ih_l0": weight_ih,
        "weight_hh_l0": np.zeros((4, 1)),  # (4H, H)
        "bias_ih_l0": np.array([-10.0, 10.0, 0.0, -10.0]),
        "bias_hh_l0": np.zeros(4),
    }


def memory_cell_worked_example(inputs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Run the hand-set LSTM memory cell with linear cell/output activations; returns (c_t, h_t) per step."""
    p = memory_cell_params()
    weights = (p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    h_t = np.zeros((1, 1))
    c_t = np.zeros((1, 1))
    cs, hs = [], []
    for x_t in np.asarray(inputs, dtype=float):
        h_t, c_t = lstm_cell(x_t[None, :], h_t, c_t, *weights, cell_act=identity, out_act=identity)
        cs.append(c_t[0, 0])
        hs.append(h_t[0, 0])
    return np.array(cs), np.array(hs)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along `axis`, shifted by the maximum so large scores do not overflow."""
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def jordan_cell(
    x_t: np.ndarray,
    y_prev: np.ndarray,
    w_ih: np.ndarray,
    b_ih: np.ndarray | None,
    w_yh: np.ndarray,
    w_hy: np.ndarray,
    b_hy: np.ndarray | None,
    activation: Activation = np.tanh,
) -> tuple[np.ndarray, np.ndarray]:
    """Jordan step: h_t = act(W_ih x_t + b_ih + W_yh y_prev), y_t = softmax(W_hy h_t + b_hy); returns (h_t, y_t).

    The memory is the previous step's output distribution y_prev (B, K), not the hidden state."""
    h_t = activation(_affine(x_t, w_ih, b_ih) + y_prev @ w_yh.T)  # (B, H)
    y_t = softmax(_affine(h_t, w_hy, b_hy))  # (B, K)
    return h_t, y_t


def _run_jordan_direction(
    weights: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    x: np.ndarray,
    lengths: np.ndarray,
    reverse: bool,
) -> np.ndarray:
    """One Jordan layer, one direction over a padded batch; returns the hidden states (B, T, H), 0 past lengths."""
    w_ih, b_ih, w_yh, w_hy, b_hy = weights
    batch, steps, _ = x.shape
    y_t = np.zeros((batch, w_hy.shape[0]), dtype=x.dtype)
    out = np.zeros((batch, steps, w_ih.shape[0]), dtype=x.dtype)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    for t in order:
        # As in _run_direction: padded steps leave y untouched, so the reverse pass starts at lengths[b] - 1
        # from y_0 = 0.
        valid = (t < lengths)[:, None]  # (B, 1)
        h_new, y_new = jordan_cell(x[:, t], y_t, w_ih, b_ih, w_yh, w_hy, b_hy)
        y_t = np.where(valid, y_new, y_t)
        out[:, t] = np.where(valid, h_new, 0.0)
    return out


def run_jordan(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    lengths: np.ndarray,
    num_layers: int,
    bidirectional: bool,
) -> np.ndarray:
    """Numpy twin of models.tagger.JordanRNN: pad-aware, stacked like run_rnn; returns outputs (B, T, dirs * H).

    `params` uses JordanRNN's names: weight_ih_l{k}{suffix} (H, I), bias_ih_ (H), weight_yh_ (H, K),
    weight_hy_ (K, H), bias_hy_ (K), suffix "" or "_reverse"."""
    lengths = np.asarray(lengths)
    suffixes = ["", "_reverse"] if bidirectional else [""]
    layer_in = x
    for layer in range(num_layers):
        outputs = []
        for suffix in suffixes:
            key = f"l{layer}{suffix}"
            weights = tuple(params[f"{name}_{key}"] for name in
                            ("weight_ih", "bias_ih", "weight_yh", "weight_hy", "bias_hy"))
            outputs.append(_run_jordan_direction(weights, layer_in, lengths, reverse=suffix == "_reverse"))
        layer_in = np.concatenate(outputs, axis=-1)  # (B, T, dirs * H)
    return layer_in


JORDAN_WORDS = {"arrive": [1.0, 0.0, 0.0], "leave": [0.0, 1.0, 0.0], "taipei": [0.0, 0.0, 1.0]}
JORDAN_TAGS = ("destination", "origin")


def jordan_worked_example(inputs: ArrayLike) -> np.ndarray:
    """A hand-set linear Jordan net from y_0 = 0; returns the output distributions y_t (T, 2) per step.

    Inputs are one-hot over 3 words (arrive = [1,0,0], leave = [0,1,0], taipei = [0,0,1], see JORDAN_WORDS);
    H = 2 hidden units, K = 2 tags (destination, origin, JORDAN_TAGS); identity hidden activation and

        W_ih = [[1,0,0],[0,1,0]], b_ih = 0, W_yh = I (h copies the previous output), W_hy = ln(3) I, b_hy = 0.

    "arrive taipei":
        t=1 "arrive": h = W_ih x = [1, 0]                   -> y = softmax([ln 3, 0]) = [3, 1] / 4 = [3/4, 1/4]
        t=2 "taipei": h = W_ih x + y_prev = [0,0] + [3/4, 1/4] -> y = softmax(ln 3 [3/4, 1/4])
            = [3^(3/4), 3^(1/4)] / (3^(3/4) + 3^(1/4)) = [√3, 1] / (1 + √3) ≈ [0.6340, 0.3660]   (destination)
    "leave taipei" is the mirror image: [1/4, 3/4], then [1, √3] / (1 + √3) ≈ [0.3660, 0.6340]   (origin).

    "taipei" is the same input both times; only the memory of the previous output tells destination from
    origin, the slot-filling case Jordan networks were applied to (Mesnil et al. 2013)."""
    w_ih = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # (H, I)
    b_ih = np.zeros(2)
    w_yh = np.eye(2)  # (H, K)
    w_hy = np.log(3.0) * np.eye(2)  # (K, H)
    b_hy = np.zeros(2)
    y_t = np.zeros((1, 2))
    outputs = []
    for x_t in np.asarray(inputs, dtype=float):
        _, y_t = jordan_cell(x_t[None, :], y_t, w_ih, b_ih, w_yh, w_hy, b_hy, activation=identity)
        outputs.append(y_t[0])
    return np.stack(outputs)  # (T, 2)


def tagger_forward(
    params: dict[str, np.ndarray],
    ids: np.ndarray,
    lengths: np.ndarray,
    cell: str,
    num_layers: int,
    bidirectional: bool,
    intent_head: str = "max",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Numpy twin of models.tagger.RNNTagger in eval mode: embed -> encoder -> zero past lengths -> emit linear.

    `params` is the tagger's state_dict as numpy arrays (keys `embedding.weight`, `rnn.*`, `emit.*`, optionally
    `intent.*`; `crf.*` is ignored); returns (emissions (B, T, K), intent logits (B, I) or None). The intent head
    reads the encoder states max-pooled over each text's real steps ("max"), max- and mean-pooled ("max_mean"), or
    every step ("tokens": the log of the mean of the steps' intent distributions)."""
    lengths = np.asarray(lengths)
    x_t = params["embedding.weight"][ids]  # (B, T, E)
    rnn = {name.removeprefix("rnn."): w for name, w in params.items() if name.startswith("rnn.")}
    if cell == "jordan":
        h = run_jordan(rnn, x_t, lengths, num_layers, bidirectional)
    else:
        h, _, _ = run_rnn(cell, rnn, x_t, lengths, num_layers, bidirectional)  # (B, T, dirs * H)
    valid = (np.arange(h.shape[1])[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
    h = np.where(valid, h, 0.0)
    emissions = _affine(h, params["emit.weight"], params["emit.bias"])  # (B, T, K)
    if "intent.weight" not in params:
        return emissions, None
    if intent_head == "tokens":
        probs = np.where(valid, softmax(_affine(h, params["intent.weight"], params["intent.bias"])), 0.0)  # (B, T, I)
        return emissions, np.log(probs.sum(axis=1) / lengths[:, None])  # (B, I)
    pooled = pool(h, np.empty(0), lengths, "max", bidirectional)  # (B, dirs * H)
    if intent_head == "max_mean":
        pooled = np.concatenate([pooled, pool(h, np.empty(0), lengths, "mean", bidirectional)], axis=-1)
    return emissions, _affine(pooled, params["intent.weight"], params["intent.bias"])
