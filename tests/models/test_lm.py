"""The language model's torch module and its two ONNX graphs: parity, pad invariance, and weights held once."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from models.lm import LMConfig, RNNLanguageModel
from training.lm_export import ExportParityError, check_graphs, export_lm, interface


@pytest.mark.parametrize(("cell", "layers", "emb_dim", "hidden"), [("lstm", 2, 16, 24), ("gru", 1, 16, 16),
                                                                   ("rnn", 1, 12, 20)])
def test_export_matches_torch_and_keeps_the_weights_once(tmp_path, cell, layers, emb_dim, hidden):
    torch.manual_seed(0)
    model = RNNLanguageModel(LMConfig(vocab_size=200, cell=cell, emb_dim=emb_dim, hidden=hidden, layers=layers))
    spec = export_lm(model, tmp_path)  # raises unless prompt and step match torch and pad invariance holds
    assert spec == interface(model.cfg) and set(spec["graphs"].values()) == {"prompt.onnx", "step.onnx"}
    parameters = sum(p.numel() for p in model.parameters()) * 4
    weights = (tmp_path / "weights.bin").stat().st_size
    assert model.embedding.weight.numel() * 4 <= weights <= parameters + 64 * 16  # each tensor once, not twice
    for graph in spec["graphs"].values():
        inline = [t for t in onnx.load(str(tmp_path / graph), load_external_data=False).graph.initializer
                  if t.data_location != onnx.TensorProto.EXTERNAL]
        assert all(len(t.raw_data) < 1024 for t in inline)


def test_a_graph_that_differs_from_torch_is_refused(tmp_path):
    torch.manual_seed(1)
    model = RNNLanguageModel(LMConfig(vocab_size=120, emb_dim=8, hidden=8))
    export_lm(model, tmp_path)
    with torch.no_grad():
        model.out_bias[5:].add_(0.05)  # a shift of every logit alike would leave the log-probs as they are
    with pytest.raises(ExportParityError, match="differ"):
        check_graphs(model.eval(), tmp_path)


def test_forward_and_step_agree_and_padding_does_not_leak():
    torch.manual_seed(2)
    model = RNNLanguageModel(LMConfig(vocab_size=50, emb_dim=8, hidden=12, layers=2)).eval()
    ids = torch.tensor([[2, 7, 9, 11], [2, 5, 0, 0]])
    lengths = torch.tensor([4, 2])
    with torch.no_grad():
        logits, state = model(ids, lengths)
        alone, alone_state = model(ids[1:, :2], lengths[1:])
        step_state = None
        for t in range(4):
            step_logits, step_state = model.step(ids[0, t: t + 1], step_state)
            np.testing.assert_allclose(step_logits[0].numpy(), logits[0, t].numpy(), atol=1e-5)
    np.testing.assert_allclose(alone[0].numpy(), logits[1, :2].numpy(), atol=1e-5)
    for name in ("h", "c"):
        np.testing.assert_allclose(alone_state[name][0].numpy(), state[name][1].numpy(), atol=1e-6)
        np.testing.assert_allclose(step_state[name][0].numpy(), state[name][0].numpy(), atol=1e-5)


def test_config_rejects_what_cannot_be_built():
    with pytest.raises(ValueError, match="cell"):
        LMConfig(cell="transformer")
    with pytest.raises(ValueError, match="dropout"):
        LMConfig(dropout=1.0)
    assert LMConfig.from_dict({**LMConfig(cell="gru").to_dict(), "unknown": 1}).cell == "gru"


def test_float16_storage_halves_the_weights_and_matches_the_rounded_model(tmp_path):
    torch.manual_seed(3)
    model = RNNLanguageModel(LMConfig(vocab_size=300, emb_dim=32, hidden=48)).eval()
    export_lm(model, tmp_path / "full")
    export_lm(model, tmp_path / "half", weights_dtype="float16")  # parity with the rounded weights
    sizes = [(tmp_path / d / "weights.bin").stat().st_size for d in ("full", "half")]
    assert sizes[1] < 0.55 * sizes[0]
    prompt = onnxruntime.InferenceSession(str(tmp_path / "half" / "prompt.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[2, 40, 41, 42]])
    out = prompt.run(["log_probs"], {"ids": ids, "lengths": np.array([4])})[0]
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids), torch.tensor([4]))
    np.testing.assert_allclose(out[0], torch.log_softmax(logits[0, -1], -1).numpy(), atol=2e-2)  # rounding only
    with pytest.raises(ValueError, match="weights_dtype"):
        export_lm(model, tmp_path / "x", weights_dtype="int4")
