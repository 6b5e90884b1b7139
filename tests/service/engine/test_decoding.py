"""ONNX seq2seq decoding against the torch model, on tiny models trained to reverse random token sequences."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from models.seq2seq import Seq2Seq, Seq2SeqConfig, greedy_decode
from service.engine.decoding import (
    BeamSearch,
    GreedySearch,
    Hypothesis,
    Search,
    SearchFactory,
    Seq2SeqRunner,
    max_output_length,
    search_factory,
    top_k_rows,
    translate_batch,
)
from service.engine.text import BOS_ID, EOS_ID, PAD_ID, pad_batch
from training import seq2seq_export
from training.seq2seq_export import ExportParityError, export_seq2seq

VOCAB = 16  # ids 4..15 are "words"
REPO = Path(__file__).resolve().parents[3]


def random_sequences(rng: np.random.Generator, n: int, max_len: int = 8) -> list[list[int]]:
    return [rng.integers(EOS_ID + 1, VOCAB, rng.integers(1, max_len + 1)).tolist() for _ in range(n)]


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy machine those threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_reverser(cfg: Seq2SeqConfig, steps: int, seed: int = 0) -> Seq2Seq:
    """A few seconds of Adam on "reverse the sequence": good but imperfect, so search matters."""
    torch.manual_seed(seed)
    model = Seq2Seq.from_config(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        seqs = random_sequences(rng, 64)
        src_ids, src_lengths = (torch.from_numpy(a) for a in pad_batch(seqs))
        tgt_in = torch.from_numpy(pad_batch([[BOS_ID, *s[::-1]] for s in seqs])[0])
        tgt_out = torch.from_numpy(pad_batch([[*s[::-1], EOS_ID] for s in seqs])[0])
        logits = model(src_ids, src_lengths, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


@dataclass
class Exported:
    model: Seq2Seq
    runner: Seq2SeqRunner
    spec: dict


def export_and_load(model: Seq2Seq, out_dir: Path) -> Exported:
    with one_thread():
        spec = export_seq2seq(model, model.cfg, out_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(out_dir / spec[g]["file"]), opts, providers=["CPUExecutionProvider"])
                for g in ("encoder", "decoder")]
    return Exported(model, Seq2SeqRunner(*sessions), spec)


@pytest.fixture(scope="module")
def attn(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    cfg = Seq2SeqConfig(src_vocab=VOCAB, tgt_vocab=VOCAB, cell="lstm", emb_dim=32, enc_hidden=32,
                        dec_hidden=64, attention="general", input_feeding=True, dropout=0.0)
    with one_thread():
        model = train_reverser(cfg, steps=200)
    return export_and_load(model, tmp_path_factory.mktemp("attn"))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    cfg = Seq2SeqConfig(src_vocab=VOCAB, tgt_vocab=VOCAB, cell="gru", emb_dim=32, enc_hidden=32,
                        dec_hidden=64, attention="none", input_feeding=False, dropout=0.0)
    with one_thread():
        model = train_reverser(cfg, steps=100)
    return export_and_load(model, tmp_path_factory.mktemp("baseline"))


@pytest.fixture(scope="module")
def sources() -> list[list[int]]:
    return random_sequences(np.random.default_rng(123), 200)


def decode(
    runner: Seq2SeqRunner, seqs: list[list[int]], make_search: SearchFactory, batch_size: int = 32
) -> list[Hypothesis]:
    out: list[Hypothesis] = []
    for start in range(0, len(seqs), batch_size):
        src_ids, src_lengths = pad_batch(seqs[start : start + batch_size])
        out += translate_batch(runner, src_ids, src_lengths, make_search)
    return out


def torch_greedy(model: Seq2Seq, seqs: list[list[int]]) -> list[list[int]]:
    src_ids, src_lengths = (torch.from_numpy(a) for a in pad_batch(seqs))
    return greedy_decode(model, src_ids, src_lengths, [max_output_length(len(s)) for s in seqs])


def test_decoding_module_does_not_import_torch() -> None:
    code = "import sys, service.engine.decoding; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_runner_learns_the_interface_from_the_graphs(attn: Exported, baseline: Exported) -> None:
    assert attn.runner.state_names == attn.spec["states"] == ["h", "c", "feed"]
    assert attn.runner.step_inputs == ["tokens", "memory", "keys", "src_mask", "h", "c", "feed", "top_k"]
    assert attn.runner.attends and attn.runner.top_k_in_graph and attn.runner.vocab == VOCAB
    assert baseline.runner.state_names == ["h", "context"]
    assert baseline.runner.step_inputs == ["tokens", "h", "context", "top_k"]
    assert not baseline.runner.attends and baseline.runner.top_k_in_graph


def test_model_learned_the_task(attn: Exported, sources: list[list[int]]) -> None:
    hyps = decode(attn.runner, sources, search_factory())
    assert np.mean([h.tokens == s[::-1] for h, s in zip(hyps, sources, strict=True)]) > 0.8


@pytest.mark.parametrize("which", ["attn", "baseline"])
def test_onnx_greedy_matches_torch_greedy(which: str, request: pytest.FixtureRequest,
                                          sources: list[list[int]]) -> None:
    exported: Exported = request.getfixturevalue(which)
    onnx_tokens = [h.tokens for h in decode(exported.runner, sources, search_factory())]
    torch_tokens = torch_greedy(exported.model, sources)
    agree = np.mean([a == b for a, b in zip(onnx_tokens, torch_tokens, strict=True)])
    assert agree >= 0.99


def rng_tokens(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(EOS_ID + 1, VOCAB, n)


def test_step_candidates_and_attention_match_torch(attn: Exported, sources: list[list[int]]) -> None:
    seqs = sources[:16]
    src_ids, src_lengths = pad_batch(seqs)
    encoded = attn.runner.encode(src_ids, src_lengths)
    states = encoded.states
    with torch.no_grad():
        memory, keys, src_mask, state = attn.model.encode(*map(torch.from_numpy, (src_ids, src_lengths)))
        tokens = torch.full((len(seqs),), BOS_ID)
        for t in range(6):
            logits, weights, state = attn.model.decoder.step(tokens, state, memory, keys, src_mask)
            step = attn.runner.step(tokens.numpy(), encoded.memory, encoded.keys, encoded.src_mask, states, k=5)
            expected = F.log_softmax(logits, dim=1).numpy()
            assert step.top_ids.shape == step.top_log_probs.shape == (len(seqs), 5)
            np.testing.assert_allclose(step.top_log_probs, np.sort(expected, axis=1)[:, ::-1][:, :5], atol=1e-4)
            np.testing.assert_allclose(step.top_log_probs, np.take_along_axis(expected, step.top_ids, 1), atol=1e-4)
            assert (np.diff(step.top_log_probs, axis=1) <= 0).all()
            assert step.attention is not None and weights is not None
            np.testing.assert_allclose(step.attention, weights.numpy(), atol=1e-5, rtol=0)
            assert (step.attention[~encoded.src_mask] == 0).all()
            states = step.states
            tokens = torch.from_numpy(rng_tokens(t, len(seqs)))  # arbitrary inputs, not just the argmax


def test_numpy_candidates_order_as_the_graph_topk() -> None:
    log_probs = np.log(np.array([[0.1, 0.3, 0.3, 0.2, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]], dtype=np.float32))
    values, ids = top_k_rows(log_probs, 3)
    assert ids.tolist() == [[1, 2, 3], [0, 1, 2]]  # equal values: lower id first, as ONNX TopK and argmax
    np.testing.assert_allclose(values, np.take_along_axis(log_probs, ids, 1))
    assert top_k_rows(log_probs, 9)[1].tolist() == [[1, 2, 3, 0, 4], [0, 1, 2, 3, 4]]  # k above the width


@pytest.mark.parametrize("beam_size", [1, 4])
def test_graph_and_numpy_candidates_decode_identically(attn: Exported, sources: list[list[int]],
                                                       beam_size: int) -> None:
    numpy_runner = Seq2SeqRunner(attn.runner.encoder, attn.runner.decoder, graph_top_k=False)
    assert not numpy_runner.top_k_in_graph
    make = search_factory(beam_size=beam_size, length_penalty=0.6)
    in_graph = decode(attn.runner, sources[:40], make)
    in_numpy = decode(numpy_runner, sources[:40], make)
    assert [h.tokens for h in in_graph] == [h.tokens for h in in_numpy]
    np.testing.assert_allclose([h.score for h in in_graph], [h.score for h in in_numpy], atol=1e-6)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_sentence_decodes_the_same_alone_and_in_a_padded_batch(attn: Exported, sources: list[list[int]],
                                                               beam_size: int) -> None:
    seqs = sorted(sources[:12], key=len)  # the shortest sit beside much longer ones
    make = search_factory(beam_size=beam_size, length_penalty=0.6)
    src_ids, src_lengths = pad_batch(seqs)
    batched = translate_batch(attn.runner, src_ids, src_lengths, make)
    for seq, hyp in zip(seqs, batched, strict=True):
        (alone,) = translate_batch(attn.runner, *pad_batch([seq]), make)
        assert alone.tokens == hyp.tokens
        assert abs(alone.score - hyp.score) <= 1e-5
        assert alone.attention is not None and hyp.attention is not None
        assert hyp.attention.shape == alone.attention.shape == (len(hyp.tokens), len(seq))
        np.testing.assert_allclose(alone.attention, hyp.attention, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_one_equals_greedy(attn: Exported, sources: list[list[int]], alpha: float) -> None:
    greedy = decode(attn.runner, sources[:64], lambda n: GreedySearch(max_output_length(n), alpha))
    beam = decode(attn.runner, sources[:64], lambda n: BeamSearch(1, max_output_length(n), alpha))
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert [h.score for h in beam] == [h.score for h in greedy]


@pytest.mark.parametrize("which", ["attn", "baseline"])
def test_best_beam_scores_at_least_greedy(which: str, request: pytest.FixtureRequest,
                                          sources: list[list[int]]) -> None:
    # Not a theorem for beam search, but it holds here; the weaker baseline is where beam often differs.
    runner = request.getfixturevalue(which).runner
    greedy = decode(runner, sources, search_factory(beam_size=1, length_penalty=0.0))
    beam = decode(runner, sources, search_factory(beam_size=4, length_penalty=0.0))
    assert all(b.score >= g.score - 1e-6 for b, g in zip(beam, greedy, strict=True))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_max_length_is_respected(attn: Exported, sources: list[list[int]], beam_size: int) -> None:
    make = search_factory(beam_size=beam_size, max_len_a=0.5, max_len_b=0.0)
    hyps = decode(attn.runner, sources[:40], make)
    for seq, hyp in zip(sources[:40], hyps, strict=True):
        limit = max_output_length(len(seq), 0.5, 0.0)
        assert len(hyp.tokens) + int(hyp.finished) <= limit
        assert hyp.finished or len(hyp.tokens) == limit
    assert not all(h.finished for h in hyps)  # the cap did cut some short


def test_hypotheses_end_at_eos_with_normalized_attention(attn: Exported, sources: list[list[int]]) -> None:
    hyps = decode(attn.runner, sources[:32], search_factory(beam_size=3, length_penalty=0.6))
    for seq, hyp in zip(sources[:32], hyps, strict=True):
        assert EOS_ID not in hyp.tokens and BOS_ID not in hyp.tokens
        assert hyp.finished
        assert hyp.attention is not None and hyp.attention.shape == (len(hyp.tokens), len(seq))
        np.testing.assert_allclose(hyp.attention.sum(axis=1), 1.0, atol=1e-5)
        length = len(hyp.tokens) + 1
        assert hyp.score == pytest.approx(hyp.log_prob / ((5 + length) / 6) ** 0.6)


def test_each_sentence_can_bring_its_own_search(attn: Exported, sources: list[list[int]]) -> None:
    seqs = sources[:6]
    makers = [search_factory(beam_size=1 + i % 3, length_penalty=0.6) for i in range(len(seqs))]
    mixed = translate_batch(attn.runner, *pad_batch(seqs), makers)
    for seq, make, hyp in zip(seqs, makers, mixed, strict=True):
        (alone,) = translate_batch(attn.runner, *pad_batch([seq]), make)
        assert alone.tokens == hyp.tokens and abs(alone.score - hyp.score) <= 1e-5
    with pytest.raises(ValueError, match="factories"):
        translate_batch(attn.runner, *pad_batch(seqs), makers[:2])


def test_max_tokens_caps_every_search(attn: Exported, sources: list[list[int]]) -> None:
    for beam_size in (1, 3):
        hyps = decode(attn.runner, sources[:20], search_factory(beam_size=beam_size, max_tokens=2))
        assert all(len(h.tokens) + int(h.finished) <= 2 for h in hyps)


def drive(search: Search, model: Callable[[list[int]], np.ndarray]) -> Hypothesis:
    """Run a search against a scripted model, log-probs as a function of the prefix (BOS first)."""
    prefixes: list[list[int]] = [[]]
    while not search.done:
        prefixes = [[*p, int(t)] for p, t in zip(prefixes, search.tokens(), strict=True)]
        follow = search.advance(*top_k_rows(np.stack([model(p) for p in prefixes]), search.candidates), None)
        prefixes = [prefixes[i] for i in follow]
        assert len(prefixes) == search.rows
    return search.result()


def scripted(prefix: list[int]) -> np.ndarray:
    """After BOS: 4 (0.6) or 5 (0.4); after 4: 4 or 5 (0.35 each) or EOS; after 5: EOS (0.9); then EOS."""
    p = np.full(6, 1e-6)
    if prefix == [BOS_ID]:
        p[4], p[5] = 0.6, 0.4
    elif prefix == [BOS_ID, 4]:
        p[4], p[5], p[EOS_ID] = 0.35, 0.35, 0.3
    elif prefix == [BOS_ID, 5]:
        p[EOS_ID], p[4] = 0.9, 0.1
    else:
        p[EOS_ID] = 1.0
    return np.log(p / p.sum())


def test_beam_search_finds_what_greedy_misses() -> None:
    greedy = drive(GreedySearch(max_len=10), scripted)
    assert greedy.tokens == [4, 4] and greedy.score == pytest.approx(np.log(0.6 * 0.35), abs=1e-4)
    beam = drive(BeamSearch(beam_size=2, max_len=10), scripted)
    assert beam.tokens == [5] and beam.score == pytest.approx(np.log(0.4 * 0.9), abs=1e-4)
    assert beam.finished and beam.attention is None
    assert drive(BeamSearch(beam_size=1, max_len=10), scripted).tokens == greedy.tokens
    capped = drive(BeamSearch(beam_size=2, max_len=1), scripted)
    assert capped.tokens == [4] and not capped.finished


def test_baseline_decodes_with_beam_and_no_attention(baseline: Exported, sources: list[list[int]]) -> None:
    hyps = decode(baseline.runner, sources[:32], search_factory(beam_size=3))
    assert all(h.attention is None for h in hyps)
    assert np.mean([h.tokens == s[::-1] for h, s in zip(hyps, sources[:32], strict=True)]) > 0.3


def test_empty_batch_and_bad_lengths(attn: Exported) -> None:
    empty = np.zeros((0, 1), np.int64), np.zeros(0, np.int64)
    assert translate_batch(attn.runner, *empty, search_factory()) == []
    with pytest.raises(ValueError, match="empty batch"):
        attn.runner.encode(np.zeros((0, 1), np.int64), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="source length"):
        attn.runner.encode(np.array([[5, 6]]), np.array([0]))
    with pytest.raises(ValueError, match="source length"):
        attn.runner.encode(np.array([[5, 6]]), np.array([3]))


def test_runner_rejects_mismatched_graphs(attn: Exported, baseline: Exported) -> None:
    with pytest.raises(ValueError, match="states"):
        Seq2SeqRunner(attn.runner.encoder, baseline.runner.decoder)


# One row per variant the lead's recipes may pick; untrained models are enough for parity.
@pytest.mark.parametrize(
    "overrides",
    [
        {"cell": "gru", "attention": "additive", "input_feeding": False, "enc_layers": 2, "dec_layers": 2},
        {"cell": "lstm", "attention": "dot", "dec_hidden": 16},
        {"cell": "lstm", "attention": "none", "input_feeding": False},
        {"cell": "gru", "attention": "none", "input_feeding": True, "emb_dim": 24, "tie_embeddings": True},
    ],
    ids=["gru-additive-2l", "lstm-dot", "lstm-baseline", "gru-baseline-feed-tied"],
)
def test_every_variant_exports_and_decodes(tmp_path: Path, overrides: dict) -> None:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(**{"src_vocab": 20, "tgt_vocab": 18, "emb_dim": 12, "enc_hidden": 8,
                           "dec_hidden": 24, "dropout": 0.1, **overrides})
    exported = export_and_load(Seq2Seq.from_config(cfg), tmp_path)
    assert exported.model.training  # export leaves the caller's mode alone
    assert exported.runner.state_names == cfg.state_names
    seqs = [[5, 6, 7], [9], [4, 4, 8, 10, 11]]
    hyps = translate_batch(exported.runner, *pad_batch(seqs), search_factory(beam_size=2, max_len_b=4))
    limits = [max_output_length(len(s), b=4) for s in seqs]
    assert [len(h.tokens) <= n for h, n in zip(hyps, limits, strict=True)] == [True] * 3


def test_export_fails_loudly_on_parity_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Seq2SeqConfig(src_vocab=20, tgt_vocab=18, emb_dim=8, enc_hidden=4, dec_hidden=8)
    monkeypatch.setattr(seq2seq_export, "check_parity", lambda model, out_dir: 0.25)
    with pytest.raises(ExportParityError, match="0.25"):
        export_seq2seq(Seq2Seq.from_config(cfg), cfg, tmp_path)


@pytest.mark.parametrize("n", [2, 4])
def test_the_n_best_come_best_first_distinct_and_led_by_the_answer(attn: Exported, sources: list[list[int]],
                                                                    n: int) -> None:
    plain = decode(attn.runner, sources[:40], search_factory(beam_size=4, length_penalty=0.6))
    nbest = decode(attn.runner, sources[:40], search_factory(beam_size=4, length_penalty=0.6, num_hypotheses=n))
    for one, best in zip(plain, nbest, strict=True):
        assert best.tokens == one.tokens and best.score == one.score  # asking for more changes no answer
        assert len(best.alternatives) == n and best.alternatives[0].tokens == best.tokens
        scores = [h.score for h in best.alternatives]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in best.alternatives}) == n
        for h in best.alternatives:  # each score is its own log-prob under the length penalty
            length = len(h.tokens) + int(h.finished)
            assert h.score == pytest.approx(h.log_prob / ((5 + length) / 6) ** 0.6)
    assert all(not h.alternatives for h in plain)
    with pytest.raises(ValueError, match="num_hypotheses"):
        search_factory(beam_size=2, num_hypotheses=3)
