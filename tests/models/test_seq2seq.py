"""Seq2Seq model: shapes, pad-awareness, attention masking, teacher forcing, every cell/attention variant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.seq2seq import Attention, Seq2Seq, Seq2SeqConfig, greedy_decode
from service.engine.text import BOS_ID, EOS_ID, PAD_ID

V_SRC, V_TGT = 23, 19


def make_model(**overrides: object) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(**{"src_vocab": V_SRC, "tgt_vocab": V_TGT, "emb_dim": 12, "enc_hidden": 8,
                           "dec_hidden": 16, "dropout": 0.0, **overrides})  # type: ignore[arg-type]
    return Seq2Seq.from_config(cfg)


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    src_lengths = torch.tensor(lengths)
    src_ids = torch.randint(EOS_ID + 1, V_SRC, (len(lengths), max(lengths)), generator=gen)
    padding = torch.arange(max(lengths))[None, :] >= src_lengths[:, None]  # (B, S)
    return src_ids.masked_fill(padding, PAD_ID), src_lengths


def target_batch(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tgt_in = torch.randint(EOS_ID + 1, V_TGT, (batch, length), generator=gen)
    tgt_in[:, 0] = BOS_ID
    return tgt_in


VARIANTS = [
    pytest.param({"cell": "lstm", "attention": "additive"}, id="lstm-additive"),
    pytest.param({"cell": "gru", "attention": "additive", "input_feeding": False}, id="gru-additive-nofeed"),
    pytest.param({"cell": "lstm", "attention": "dot"}, id="lstm-dot"),
    pytest.param({"cell": "gru", "attention": "dot"}, id="gru-dot"),
    pytest.param({"cell": "lstm", "attention": "general", "enc_layers": 2, "dec_layers": 2},
                 id="lstm-general-2l"),
    pytest.param({"cell": "gru", "attention": "general"}, id="gru-general"),
    pytest.param({"cell": "lstm", "attention": "none"}, id="lstm-baseline"),
    pytest.param({"cell": "gru", "attention": "none", "input_feeding": False, "enc_layers": 2},
                 id="gru-baseline"),
    pytest.param({"emb_dim": 16, "tie_embeddings": True}, id="tied"),
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_forward_backward_every_variant(overrides: dict) -> None:
    model = make_model(**overrides)
    src_ids, src_lengths = padded_batch([5, 2, 7])
    tgt_in = target_batch(3, 4)
    logits = model(src_ids, src_lengths, tgt_in)
    assert logits.shape == (3, 4, V_TGT)
    tgt_out = torch.cat([tgt_in[:, 1:], torch.full((3, 1), EOS_ID)], dim=1)
    tgt_out[1, 2:] = PAD_ID
    loss = F.cross_entropy(logits.reshape(-1, V_TGT), tgt_out.reshape(-1),
                           ignore_index=PAD_ID, label_smoothing=0.1)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_encode_shapes_and_state_names() -> None:
    model = make_model(cell="lstm", attention="additive", dec_layers=2, enc_layers=3)
    src_ids, src_lengths = padded_batch([4, 6])
    memory, keys, src_mask, state = model.encode(src_ids, src_lengths)
    assert memory.shape == (2, 6, 16)
    assert keys is not None and keys.shape == (2, 6, 16)
    assert src_mask.tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    assert list(state) == model.cfg.state_names == ["h", "c", "feed"]
    assert state["h"].shape == state["c"].shape == (2, 2, 16)
    assert state["feed"].shape == (2, 16)


def test_baseline_state_carries_a_fixed_context() -> None:
    model = make_model(cell="gru", attention="none", input_feeding=False).eval()
    src_ids, src_lengths = padded_batch([3, 5])
    _, keys, src_mask, state = model.encode(src_ids, src_lengths)
    assert keys is None and model.cfg.state_names == ["h", "context"]
    logits, weights, new_state = model.decoder.step(torch.full((2,), BOS_ID), state, None, None, None)
    assert weights is None and logits.shape == (2, V_TGT)
    assert torch.equal(new_state["context"], state["context"])


@pytest.mark.parametrize("attention", ["additive", "dot", "general", "none"])
def test_padded_positions_do_not_change_outputs(attention: str) -> None:
    model = make_model(attention=attention, enc_layers=2).eval()
    src_ids, src_lengths = padded_batch([6, 3, 1])
    tgt_in = target_batch(3, 5)
    noisy = src_ids.clone()
    noisy[src_ids == PAD_ID] = torch.randint(EOS_ID + 1, V_SRC, (int((src_ids == PAD_ID).sum()),))
    with torch.no_grad():
        torch.testing.assert_close(model(noisy, src_lengths, tgt_in), model(src_ids, src_lengths, tgt_in))
        # Extra padding columns change nothing either.
        wider = F.pad(src_ids, (0, 3), value=PAD_ID)
        torch.testing.assert_close(model(wider, src_lengths, tgt_in), model(src_ids, src_lengths, tgt_in))


def test_sentence_alone_equals_sentence_in_padded_batch() -> None:
    model = make_model(attention="general").eval()
    src_ids, src_lengths = padded_batch([7, 2, 5])
    tgt_in = target_batch(3, 4)
    with torch.no_grad():
        batched = model(src_ids, src_lengths, tgt_in)
        for b, n in enumerate(src_lengths.tolist()):
            alone = model(src_ids[b : b + 1, :n], src_lengths[b : b + 1], tgt_in[b : b + 1])
            torch.testing.assert_close(alone[0], batched[b], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["additive", "dot", "general"])
def test_attention_puts_exactly_zero_weight_on_padding(kind: str) -> None:
    model = make_model(attention=kind).eval()
    src_ids, src_lengths = padded_batch([5, 1, 3])
    with torch.no_grad():
        memory, keys, src_mask, state = model.encode(src_ids, src_lengths)
        _, weights, _ = model.decoder.step(torch.full((3,), BOS_ID), state, memory, keys, src_mask)
    assert weights is not None and weights.shape == (3, 5)
    assert (weights[~src_mask] == 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))


@pytest.mark.parametrize(("kind", "key_dim"), [("additive", 16), ("dot", 16), ("general", 16)])
def test_keys_are_precomputed_per_sentence(kind: str, key_dim: int) -> None:
    attention = Attention(kind, query_dim=16, memory_dim=16)
    memory = torch.randn(2, 4, 16)
    keys = attention.precompute_keys(memory)
    assert keys.shape == (2, 4, key_dim)
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    context, weights = attention(torch.randn(2, 16), keys, memory, mask)
    assert context.shape == (2, 16) and weights.shape == (2, 4)


def test_teacher_forcing_ratio() -> None:
    model = make_model().eval()
    src_ids, src_lengths = padded_batch([4, 6])
    tgt_in = target_batch(2, 12)  # 11 coin flips: a mix of gold and argmax for any seed but 1 in 1000
    other = tgt_in.clone()
    other[:, 1:] = target_batch(2, 12, seed=7)[:, 1:]
    with torch.no_grad():
        gold, gold_other = model(src_ids, src_lengths, tgt_in), model(src_ids, src_lengths, other)
        # Full teacher forcing reads the gold prefix; only step 0 (BOS) is shared.
        torch.testing.assert_close(gold[:, 0], gold_other[:, 0])
        assert not torch.allclose(gold[:, 1:], gold_other[:, 1:])
        # Without teacher forcing the gold tokens after BOS are never read.
        free = model(src_ids, src_lengths, tgt_in, teacher_forcing=0.0)
        torch.testing.assert_close(free, model(src_ids, src_lengths, other, teacher_forcing=0.0))
        # In between, the coin flips come from torch's RNG: same seed, same mix.
        torch.manual_seed(3)
        mixed = model(src_ids, src_lengths, tgt_in, teacher_forcing=0.5)
        torch.manual_seed(3)
        torch.testing.assert_close(mixed, model(src_ids, src_lengths, tgt_in, teacher_forcing=0.5))
        assert not torch.allclose(mixed, gold) and not torch.allclose(mixed, free)


def test_tied_embeddings_share_the_weight() -> None:
    model = make_model(emb_dim=16, tie_embeddings=True)
    assert model.decoder.out.weight is model.decoder.embedding.weight


@pytest.mark.parametrize(
    "overrides",
    [{"cell": "rnn"}, {"attention": "luong"}, {"attention": "dot", "dec_hidden": 12},
     {"tie_embeddings": True}, {"dropout": 1.0}, {"tgt_vocab": 3}],
)
def test_config_rejects_bad_values(overrides: dict) -> None:
    with pytest.raises(ValueError):
        Seq2SeqConfig(**{"src_vocab": V_SRC, "tgt_vocab": V_TGT, "emb_dim": 12, "enc_hidden": 8,
                         "dec_hidden": 16, **overrides})


def test_config_round_trips_and_rebuilds_the_model() -> None:
    model = make_model(cell="gru", attention="additive", dec_layers=2)
    cfg = Seq2SeqConfig.from_dict({**model.cfg.to_dict(), "unknown_key": 1})
    assert cfg == model.cfg
    rebuilt = Seq2Seq.from_config(cfg)
    rebuilt.load_state_dict(model.state_dict())


def test_greedy_decode_stops_at_max_len() -> None:
    model = make_model().eval()
    src_ids, src_lengths = padded_batch([3, 5, 2])
    outputs = greedy_decode(model, src_ids, src_lengths, max_lens=[1, 4, 2])
    assert [len(o) <= m for o, m in zip(outputs, [1, 4, 2], strict=True)] == [True] * 3
    assert all(EOS_ID not in o and BOS_ID not in o for o in outputs)
