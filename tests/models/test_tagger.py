"""Tests for the tagger: the Jordan golden example, the numpy Jordan and tagger references against torch and against
the ONNX export run by onnxruntime, and the torch and numpy CRFs against each other and brute force."""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.reference import JORDAN_WORDS, jordan_worked_example, run_jordan, tagger_forward
from models.tagger import CELLS, CRF, JordanRNN, RNNTagger, TaggerConfig
from service.engine.tags import Crf
from service.engine.text import pad_batch

INPUT_SIZE, HIDDEN_SIZE, NUM_TAGS = 3, 4, 5
LENGTHS = np.array([5, 2, 7, 1])  # unsorted on purpose
MAX_LEN = 8  # one step of padding past the longest row too


def _numpy_params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: t.detach().numpy().astype(np.float64) for name, t in model.state_dict().items()}


def _padded_batch(lengths: np.ndarray, max_len: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((len(lengths), max_len, INPUT_SIZE))
    for b, length in enumerate(lengths):
        x[b, length:] = 0.0
    return x


def _valid(lengths: np.ndarray, steps: int) -> np.ndarray:
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]  # (B, T)


# --- the Jordan golden example --------------------------------------------------------------------------------------

SQRT3 = math.sqrt(3.0)


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        ("arrive", [[0.75, 0.25], [SQRT3 / (1 + SQRT3), 1 / (1 + SQRT3)]]),  # taipei is the destination
        ("leave", [[0.25, 0.75], [1 / (1 + SQRT3), SQRT3 / (1 + SQRT3)]]),  # taipei is the origin
    ],
)
def test_jordan_worked_example(first: str, expected: list[list[float]]) -> None:
    y = jordan_worked_example([JORDAN_WORDS[first], JORDAN_WORDS["taipei"]])
    assert y.shape == (2, 2)
    assert y.ravel().tolist() == pytest.approx(np.ravel(expected).tolist(), abs=1e-12)
    assert y[1].tolist() == pytest.approx([0.6340, 0.3660][:: 1 if first == "arrive" else -1], abs=1e-4)
    np.testing.assert_allclose(y.sum(axis=1), 1.0)


def test_jordan_worked_example_same_word_different_tag() -> None:
    arrive = jordan_worked_example([JORDAN_WORDS["arrive"], JORDAN_WORDS["taipei"]])
    leave = jordan_worked_example([JORDAN_WORDS["leave"], JORDAN_WORDS["taipei"]])
    assert arrive[1].argmax() == 0  # destination
    assert leave[1].argmax() == 1  # origin
    np.testing.assert_allclose(arrive, leave[:, ::-1], atol=1e-12)


# --- JordanRNN against run_jordan -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_run_jordan_matches_torch(num_layers: int, bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = JordanRNN(INPUT_SIZE, HIDDEN_SIZE, NUM_TAGS, num_layers, bidirectional).double().eval()
    with torch.no_grad():  # larger than the default init, so the softmax memory is far from uniform
        for p in model.parameters():
            p.mul_(3.0)
    x = _padded_batch(LENGTHS, MAX_LEN)
    with torch.no_grad():
        expected = model(torch.from_numpy(x), torch.from_numpy(LENGTHS)).numpy()

    out = run_jordan(_numpy_params(model), x, LENGTHS, num_layers, bidirectional)

    dirs = 2 if bidirectional else 1
    assert out.shape == (len(LENGTHS), MAX_LEN, dirs * HIDDEN_SIZE)
    valid = _valid(LENGTHS, MAX_LEN)
    np.testing.assert_allclose(out[valid], expected[valid], atol=1e-12)
    np.testing.assert_array_equal(out[~valid], 0.0)


def test_run_jordan_is_pad_invariant() -> None:
    torch.manual_seed(0)
    params = _numpy_params(JordanRNN(INPUT_SIZE, HIDDEN_SIZE, NUM_TAGS, 2, bidirectional=True))
    x = _padded_batch(LENGTHS, MAX_LEN)
    b, length = 0, LENGTHS[0]
    batch = run_jordan(params, x, LENGTHS, 2, True)
    alone = run_jordan(params, x[b : b + 1, :length], np.array([length]), 2, True)
    np.testing.assert_allclose(batch[b, :length], alone[0], atol=1e-12)


# --- RNNTagger against tagger_forward, in torch and in onnxruntime ---------------------------------------------------

VOCAB = 40
TEXTS = [[5, 9, 13, 2, 7], [7, 8], [4, 11, 12, 30, 31, 32, 39], [3]]  # ids of texts of different lengths
LONGER = [[5, 9, 13, 2, 7, 1, 6, 22, 18, 33, 21], [7, 8], [4, 11, 12, 30], [3, 3, 3]]  # longer than TEXTS


def _tagger(cell: str, num_intents: int, layers: int = 1, bidirectional: bool = True,
            intent_head: str = "max") -> RNNTagger:
    torch.manual_seed(0)
    cfg = TaggerConfig(vocab_size=VOCAB, num_tags=NUM_TAGS, num_intents=num_intents, cell=cell, emb_dim=6,
                       hidden=4, layers=layers, bidirectional=bidirectional, dropout=0.3, intent_head=intent_head)
    return RNNTagger(cfg).eval()  # eval: the dropout of 0.3 must be off


@pytest.mark.parametrize("num_intents", [0, 3], ids=["tags", "tags+intent"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_tagger_forward_matches_torch(cell: str, layers: int, num_intents: int) -> None:
    model = _tagger(cell, num_intents, layers)
    ids, lengths = pad_batch(TEXTS)
    ids = np.pad(ids, ((0, 0), (0, 2)))  # two steps of padding past the longest text too
    with torch.no_grad():
        outputs = model(torch.from_numpy(ids), torch.from_numpy(lengths))

    emissions, intent = tagger_forward(_numpy_params(model), ids, lengths, cell, layers, True)

    assert emissions.shape == (len(TEXTS), ids.shape[1], NUM_TAGS)
    valid = _valid(lengths, ids.shape[1])
    np.testing.assert_allclose(emissions[valid], outputs[0].numpy()[valid], atol=1e-5)
    if num_intents:
        assert len(outputs) == 2
        assert intent is not None and intent.shape == (len(TEXTS), num_intents)
        np.testing.assert_allclose(intent, outputs[1].numpy(), atol=1e-5)
    else:
        assert len(outputs) == 1 and intent is None


@pytest.mark.parametrize("intent_head", ["max_mean", "tokens"])
@pytest.mark.parametrize("cell", ["jordan", "gru"])
def test_each_intent_head_matches_the_reference_in_torch_and_onnx(cell: str, intent_head: str, tmp_path: Path) -> None:
    model = _tagger(cell, 3, intent_head=intent_head)
    ids, lengths = pad_batch(TEXTS)
    with torch.no_grad():
        outputs = model(torch.from_numpy(ids), torch.from_numpy(lengths))
    _, intent = tagger_forward(_numpy_params(model), ids, lengths, cell, 1, True, intent_head)
    np.testing.assert_allclose(intent, outputs[1].numpy(), atol=1e-5)
    _export(model, tmp_path / "tagger.onnx")
    session = ort.InferenceSession(str(tmp_path / "tagger.onnx"), providers=["CPUExecutionProvider"])
    _, onnx_intent = session.run(None, {"ids": ids, "lengths": lengths})
    np.testing.assert_allclose(onnx_intent, intent, atol=1e-4)


def _export(model: RNNTagger, path: Path) -> None:
    ids, lengths = pad_batch(TEXTS)
    with_intent = model.intent is not None
    names = ["emissions", "intent_logits"] if with_intent else ["emissions"]
    axes = {"ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "emissions": {0: "batch", 1: "time"}}
    if with_intent:
        axes["intent_logits"] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.from_numpy(ids), torch.from_numpy(lengths)), str(path),
            input_names=["ids", "lengths"], output_names=names, opset_version=17, dynamo=False,
            dynamic_axes=axes,
        )


@pytest.mark.parametrize("num_intents", [0, 3], ids=["tags", "tags+intent"])
@pytest.mark.parametrize("cell", ["jordan", "lstm"])
def test_onnx_export_matches_reference_with_a_longer_length(cell: str, num_intents: int, tmp_path: Path) -> None:
    model = _tagger(cell, num_intents, layers=2)
    _export(model, tmp_path / "tagger.onnx")
    session = ort.InferenceSession(str(tmp_path / "tagger.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == (["emissions", "intent_logits"] if num_intents else ["emissions"])

    ids, lengths = pad_batch(LONGER)
    assert ids.shape[1] > max(map(len, TEXTS))  # the dynamic time axis is kept
    outputs = session.run(names, {"ids": ids, "lengths": lengths})
    emissions, intent = tagger_forward(_numpy_params(model), ids, lengths, cell, 2, True)
    valid = _valid(lengths, ids.shape[1])
    assert outputs[0].shape == emissions.shape
    np.testing.assert_allclose(outputs[0][valid], emissions[valid], atol=1e-4)
    if num_intents:
        np.testing.assert_allclose(outputs[1], intent, atol=1e-4)

    for b, text in enumerate(LONGER):  # a text alone equals itself inside the padded batch
        alone = session.run(names, {"ids": np.array([text]), "lengths": np.array([len(text)])})
        np.testing.assert_allclose(alone[0][0], outputs[0][b, : len(text)], atol=1e-5)
        if num_intents:
            np.testing.assert_allclose(alone[1][0], outputs[1][b], atol=1e-5)


# --- the CRFs: torch against numpy, and both against brute force ----------------------------------------------------


def _random_crf(rng: np.random.Generator, k: int) -> tuple[CRF, Crf]:
    start, transitions, end = rng.normal(size=k), rng.normal(size=(k, k)), rng.normal(size=k)
    crf = CRF(k).double()
    with torch.no_grad():
        crf.start.copy_(torch.from_numpy(start))
        crf.transitions.copy_(torch.from_numpy(transitions))
        crf.end.copy_(torch.from_numpy(end))
    return crf, Crf(start, transitions, end)


def _path_score(crf: Crf, emissions: np.ndarray, path: tuple[int, ...]) -> float:
    score = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[w, t] for w, t in enumerate(path))
    return float(score + sum(crf.transitions[a, b] for a, b in itertools.pairwise(path)))


def test_viterbi_numpy_matches_torch_on_random_sentences() -> None:
    rng = np.random.default_rng(0)
    k, n = 5, 50
    torch_crf, numpy_crf = _random_crf(rng, k)
    lengths = rng.integers(1, 12, size=n)
    emissions = rng.normal(scale=2.0, size=(n, lengths.max(), k))  # garbage past each length: the mask hides it
    mask = torch.from_numpy(_valid(lengths, lengths.max()))

    paths = torch_crf.viterbi(torch.from_numpy(emissions), mask)

    assert [len(p) for p in paths] == lengths.tolist()
    for b, length in enumerate(lengths):
        assert numpy_crf.viterbi(emissions[b, :length]) == paths[b]
    # the whole padded batch at once, as the service decodes it
    batch_paths = numpy_crf.viterbi_batch(emissions, lengths)
    batch_marginals = numpy_crf.marginals_batch(emissions, lengths)
    for b, length in enumerate(lengths):
        assert batch_paths[b, :length].tolist() == paths[b]
        np.testing.assert_allclose(batch_marginals[b, :length], numpy_crf.marginals(emissions[b, :length]),
                                   atol=1e-12)
        assert not batch_marginals[b, length:].any()


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_crf_against_brute_force(length: int) -> None:
    rng = np.random.default_rng(length)
    k, pad = 3, 2
    torch_crf, numpy_crf = _random_crf(rng, k)
    emissions = rng.normal(size=(length, k))
    paths = list(itertools.product(range(k), repeat=length))
    scores = np.array([_path_score(numpy_crf, emissions, p) for p in paths])
    log_z = float(np.logaddexp.reduce(scores))

    best = list(paths[int(scores.argmax())])
    assert numpy_crf.viterbi(emissions) == best

    probs = np.exp(scores - log_z)
    brute = np.zeros((length, k))
    for p, prob in zip(paths, probs, strict=True):
        brute[np.arange(length), list(p)] += prob
    marginals = numpy_crf.marginals(emissions)
    np.testing.assert_allclose(marginals, brute, atol=1e-12)
    np.testing.assert_allclose(marginals.sum(axis=1), 1.0, atol=1e-12)

    # torch, in a batch of two rows: this text padded by `pad` garbage steps, and a full-length row.
    padded = np.concatenate([emissions, rng.normal(size=(pad, k))])
    batch = torch.from_numpy(np.stack([padded, rng.normal(size=(length + pad, k))]))
    mask = torch.from_numpy(_valid(np.array([length, length + pad]), length + pad))
    assert torch_crf.viterbi(batch, mask)[0] == best
    assert torch_crf.log_partition(batch, mask)[0].item() == pytest.approx(log_z, abs=1e-10)
    tags = torch.from_numpy(rng.integers(0, k, size=(2, length + pad)))
    nll = torch_crf.nll(batch, tags, mask)
    assert (nll >= 0).all()
    row = tuple(tags[0, :length].tolist())
    assert nll[0].item() == pytest.approx(log_z - _path_score(numpy_crf, emissions, row), abs=1e-10)
