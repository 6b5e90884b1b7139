"""Lexical shortlists: the candidate sets, the shortlist step graph, and decoding with it against full-vocabulary
decoding, on the tiny reversers of test_decoding (real onnxruntime sessions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.engine.decoding import BeamSearch, Seq2SeqRunner, search_factory, translate_batch
from service.engine.shortlist import CandidateUnion, Shortlist
from service.engine.text import EOS_ID, pad_batch
from tests.service.engine.test_decoding import VOCAB, Exported, attn, baseline, sources  # noqa: F401
from training.shortlist import add_shortlist_graph, learn_shortlist, model1

RNG = np.random.default_rng(7)


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def with_shortlist_graph(exported: Exported, tmp_path: Path) -> Seq2SeqRunner:
    folder = tmp_path / "graphs"
    folder.mkdir(exist_ok=True)
    add_shortlist_graph(Path(exported.runner.decoder._model_path), folder / "decoder_shortlist.onnx")
    return Seq2SeqRunner(exported.runner.encoder, exported.runner.decoder,
                         shortlist_session=session(folder / "decoder_shortlist.onnx"))


@pytest.fixture(scope="module")
def runner(attn: Exported, tmp_path_factory: pytest.TempPathFactory) -> Seq2SeqRunner:  # noqa: F811
    return with_shortlist_graph(attn, tmp_path_factory.mktemp("shortlist"))


def decode(runner: Seq2SeqRunner, seqs: list[list[int]], beam: int, shortlists=None, alpha: float = 0.0):  # type: ignore[no-untyped-def]
    ids, lengths = pad_batch(seqs)
    return translate_batch(runner, ids, lengths, search_factory(beam, alpha), shortlists)


def random_list(rng: np.random.Generator, keep: list[int], extra: int) -> np.ndarray:
    """The given ids, EOS and `extra` others, sorted."""
    others = rng.choice(np.arange(EOS_ID + 1, VOCAB), extra, replace=False)
    return np.unique(np.concatenate([keep, others, [EOS_ID]])).astype(np.int64)


# ---- candidate sets ----


def test_a_sentence_gets_its_tokens_translations_the_frequent_ones_eos_and_copies():
    # source 4 -> targets 7, 9; source 5 -> 8; frequent 10, 11
    shortlist = Shortlist(np.array([0, 0, 0, 0, 0, 2, 3, 3]), np.array([7, 9, 8]), np.array([3, 10, 11]),
                          copy_source=False, target_vocab=12)
    assert shortlist.for_sentence([4, 5, EOS_ID]).tolist() == [3, 7, 8, 9, 10, 11]
    assert shortlist.for_sentence([6]).tolist() == [3, 10, 11]
    assert shortlist.for_sentence([99]).tolist() == [3, 10, 11]  # an id the table lacks adds nothing
    copying = Shortlist(shortlist.indptr, shortlist.indices, shortlist.always, copy_source=True, target_vocab=12)
    assert copying.for_sentence([6, 4]).tolist() == [3, 4, 6, 7, 9, 10, 11]


def test_the_union_follows_members_without_rebuilding_for_every_change():
    union = CandidateUnion(20)
    union.add("a", np.array([3, 5, 7]))
    union.add("b", np.array([3, 9]))
    assert union.ids.tolist() == [3, 5, 7, 9]
    rebuilds = union.rebuilds
    union.add("c", np.array([5, 9]))  # nothing new: no rebuild
    assert union.rebuilds == rebuilds and union.ids.tolist() == [3, 5, 7, 9]
    mask = union.mask(["a", "c"], [2, 1])
    assert mask.tolist() == [[True, True, True, False]] * 2 + [[False, True, False, True]]
    union.remove("b")  # 3 and 9 are still wanted by a and c
    assert union.rebuilds == rebuilds
    union.remove("a")  # 3 and 7 left: half the union is stale, so it shrinks
    assert union.ids.tolist() == [5, 9] and union.mask(["c"], [1]).tolist() == [[True, True]]
    union.add("d", np.array([5, 11]))  # a new id grows it
    assert union.ids.tolist() == [5, 9, 11]
    union.add("everything", None)  # a member over the whole vocabulary widens it to every id
    assert union.ids.tolist() == list(range(20)) and union.row("everything").all()
    assert union.row("d").sum() == 2
    union.remove("everything")
    assert union.ids.tolist() == [5, 9, 11]
    with pytest.raises(KeyError):
        union.add("d", np.array([1]))


def test_model1_learns_word_translations_and_leaves_function_words_to_null():
    # source 10 <-> target 20 and 11 <-> 21; target 30 (an article) appears in every pair whatever the source
    pairs = [([10], [30, 20]), ([11], [30, 21]), ([10, 11], [30, 20, 21]), ([11, 10], [30, 21, 20])] * 5
    src, tgt, prob = model1(pairs, 40, 40, iterations=10)
    table = {(int(s), int(t)): float(p) for s, t, p in zip(src, tgt, prob, strict=True)}
    assert table[(10, 20)] > 0.5 and table[(11, 21)] > 0.5
    assert table[(10, 20)] > table[(10, 21)] and table[(11, 21)] > table[(11, 20)]
    shortlist, frequent = learn_shortlist(pairs, 40, 40, per_source=1, frequent=1, min_prob=0.0)
    assert frequent.tolist() == [EOS_ID, 30]
    assert shortlist.for_sentence([10]).tolist() == [EOS_ID, 20, 30]


# ---- the shortlist step graph ----


@pytest.mark.parametrize("which", ["attn", "baseline"])
def test_the_shortlist_graph_scores_the_candidates_as_the_full_graph_renormalised(
        which: str, request: pytest.FixtureRequest, sources: list[list[int]], tmp_path: Path):  # noqa: F811
    exported: Exported = request.getfixturevalue(which)
    runner = with_shortlist_graph(exported, tmp_path)
    seqs = sources[:6]
    ids, lengths = pad_batch(seqs)
    encoded = runner.encode(ids, lengths)
    tokens = np.array([s[0] for s in seqs])
    full = exported.runner.step(tokens, encoded.memory, encoded.keys, encoded.src_mask, encoded.states, k=VOCAB)
    everything = np.arange(VOCAB)
    same = runner.step(tokens, encoded.memory, encoded.keys, encoded.src_mask, encoded.states, VOCAB,
                       (everything, np.ones((6, VOCAB), dtype=bool)))
    assert np.array_equal(same.top_ids, full.top_ids) and np.array_equal(same.top_log_probs, full.top_log_probs)
    for name, state in full.states.items():
        assert np.array_equal(same.states[name], state)
    candidates = np.array([EOS_ID, 4, 6, 7, 9, 12, 15])
    mask = np.ones((6, len(candidates)), dtype=bool)
    mask[1, 2:] = False  # row 1 may use EOS, 4 only
    short = runner.step(tokens, encoded.memory, encoded.keys, encoded.src_mask, encoded.states, 3,
                        (candidates, mask))
    for row in range(6):
        allowed = candidates[mask[row]]
        log_probs = np.full(VOCAB, -np.inf)
        log_probs[full.top_ids[row]] = full.top_log_probs[row]
        renormalised = log_probs[allowed] - np.logaddexp.reduce(log_probs[allowed])
        best = np.argsort(-renormalised, kind="stable")[: min(3, len(allowed))]
        assert short.top_ids[row, : len(best)].tolist() == allowed[best].tolist()
        np.testing.assert_allclose(short.top_log_probs[row, : len(best)], renormalised[best], atol=1e-5)


# ---- decoding ----


def test_greedy_with_a_shortlist_equals_full_greedy_whenever_its_choices_are_in_it(
        runner: Seq2SeqRunner, sources: list[list[int]]):  # noqa: F811
    rng = np.random.default_rng(1)
    full = decode(runner, sources, 1)
    covering = [random_list(rng, h.tokens, 2) for h in full]  # each holds its full choices and a few others
    assert [h.tokens for h in decode(runner, sources, 1, covering)] == [h.tokens for h in full]
    narrow = [random_list(rng, [], 3) for _ in sources]  # mostly not: then every choice comes from the list
    cut = decode(runner, sources, 1, narrow)
    assert any(c.tokens != f.tokens for c, f in zip(cut, full, strict=True))
    for hyp, f, allowed in zip(cut, full, narrow, strict=True):
        assert set(hyp.tokens) <= set(allowed.tolist())
        if set(f.tokens) <= set(allowed.tolist()):
            assert hyp.tokens == f.tokens


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_with_the_whole_vocabulary_as_shortlist_is_full_beam_search(
        runner: Seq2SeqRunner, sources: list[list[int]], alpha: float):  # noqa: F811
    full = decode(runner, sources[:40], 4, alpha=alpha)
    every = decode(runner, sources[:40], 4, [np.arange(VOCAB)] * 40, alpha)
    assert [(h.tokens, h.score) for h in every] == [(h.tokens, h.score) for h in full]
    narrow = [random_list(np.random.default_rng(i), [], 5) for i in range(40)]
    for hyp, allowed in zip(decode(runner, sources[:40], 4, narrow, alpha), narrow, strict=True):
        assert set(hyp.tokens) <= set(allowed.tolist())  # log-probs over the list: answers come from it


@pytest.mark.parametrize("beam", [1, 3])
def test_a_shortlisted_sentence_decodes_the_same_alone_and_in_any_batch(
        runner: Seq2SeqRunner, sources: list[list[int]], beam: int):  # noqa: F811
    rng = np.random.default_rng(beam)
    seqs = sources[:24]
    lists = [random_list(rng, s[:2], 4) if i % 5 else None for i, s in enumerate(seqs)]  # some decode over all
    alone = [decode(runner, [s], beam, [lst])[0] for s, lst in zip(seqs, lists, strict=True)]
    for start in range(0, len(seqs), 8):
        together = decode(runner, seqs[start:start + 8], beam, lists[start:start + 8])
        for a, b in zip(alone[start:start + 8], together, strict=True):
            assert b.tokens == a.tokens and b.score == pytest.approx(a.score, abs=1e-5)
    plain = decode(runner, [s for s, lst in zip(seqs, lists, strict=True) if lst is None], beam)
    assert [h.tokens for h in plain] == [a.tokens for a, lst in zip(alone, lists, strict=True) if lst is None]


def test_shortlists_need_a_shortlist_graph(attn: Exported, sources: list[list[int]]):  # noqa: F811
    with pytest.raises(ValueError, match="shortlist step graph"):
        decode(attn.runner, sources[:2], 1, [np.arange(VOCAB), None])
    with pytest.raises(ValueError, match="2 sentences"):
        decode(attn.runner, sources[:2], 1, [None])


# ---- early stopping ----


class Exhaustive(BeamSearch):
    """Searches to max_len (or until no live hypothesis is left): the answer every exact rule must give."""

    def _settled(self) -> bool:
        return False


def run_search(runner: Seq2SeqRunner, src: list[int], search: BeamSearch) -> BeamSearch:
    ids, lengths = pad_batch([src])
    translate_batch(runner, ids, lengths, lambda n: search)
    return search


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_bound_early_stopping_never_changes_the_answer_and_saves_steps(
        runner: Seq2SeqRunner, sources: list[list[int]], alpha: float):  # noqa: F811
    saved = 0
    for src in sources[:60]:
        max_len = 2 * len(src) + 6
        exhaustive = run_search(runner, src, Exhaustive(4, max_len, alpha, num_hypotheses=2))
        bound = run_search(runner, src, BeamSearch(4, max_len, alpha, num_hypotheses=2, early_stopping="bound"))
        best, other = exhaustive.result(), bound.result()
        assert other.tokens == best.tokens and other.score == pytest.approx(best.score, abs=1e-6)
        assert [h.tokens for h in other.alternatives] == [h.tokens for h in best.alternatives]
        assert bound.steps <= exhaustive.steps
        saved += exhaustive.steps - bound.steps
    assert saved > 0


def test_beam_early_stopping_stops_once_beam_size_hypotheses_have_finished(
        runner: Seq2SeqRunner, sources: list[list[int]]):  # noqa: F811
    for src in sources[:30]:
        search = run_search(runner, src, BeamSearch(3, 40, 0.6, early_stopping="beam"))
        finished = len(search._finished)
        assert finished >= 3 or search.steps == 40 or not search._beams
        length = run_search(runner, src, BeamSearch(3, 40, 0.6, early_stopping="length"))
        assert search.steps <= length.steps
    with pytest.raises(ValueError, match="early_stopping"):
        BeamSearch(3, 10, early_stopping="sometimes")
    with pytest.raises(ValueError, match="early_stopping"):
        search_factory(3, early_stopping="never")
