import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.classifier import ClassifierConfig, RNNClassifier
from models.reference import run_rnn
from training.classifier_export import ExportError, check_classifier, export_classifier

SEQS = [[5, 9, 13], [7, 8, 9, 10, 11, 12, 13], [4], [20, 21, 22, 23, 24]]


def model(cell="lstm", pooling="max", layers=2, bidirectional=True, seed=0):
    torch.manual_seed(seed)
    cfg = ClassifierConfig(vocab_size=30, num_classes=3, cell=cell, emb_dim=8, hidden=6, layers=layers,
                           bidirectional=bidirectional, pooling=pooling, dropout=0.0)
    return RNNClassifier(cfg).eval()


def logits(m, seqs):
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    with torch.no_grad():
        return m(ids, torch.tensor([len(s) for s in seqs])).numpy()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
def test_padding_never_changes_a_result(cell, pooling):
    m = model(cell, pooling)
    in_batch = logits(m, SEQS)
    for row, seq in enumerate(SEQS):
        np.testing.assert_allclose(logits(m, [seq]), in_batch[row : row + 1], atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_rnn_layer_matches_numpy_reference(cell):
    m = model(cell, layers=2)
    ids = torch.tensor([[5, 9, 13, 0], [7, 8, 9, 10]])
    lengths = np.array([3, 4])
    x = m.embedding(ids).detach().numpy()
    params = {k: v.detach().numpy().astype(np.float64) for k, v in m.rnn.state_dict().items()}
    out, h_n, _ = run_rnn(cell, params, x.astype(np.float64), lengths, num_layers=2, bidirectional=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths, batch_first=True,
                                                     enforce_sorted=False)
    with torch.no_grad():
        ref, _ = torch.nn.utils.rnn.pad_packed_sequence(m.rnn(packed)[0], batch_first=True)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_onnx_export_matches_torch_and_is_pad_invariant(cell, tmp_path):
    m = model(cell, "max")
    path = tmp_path / "m.onnx"
    interface = export_classifier(m, path, SEQS)  # raises on a parity or pad-invariance failure
    assert [i["name"] for i in interface["inputs"]] == ["ids", "lengths"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    longer = [s * 3 for s in SEQS] + [[3] * 50]  # new batch and sequence sizes: the axes are dynamic
    ids = np.zeros((len(longer), 50), dtype=np.int64)
    for i, s in enumerate(longer):
        ids[i, : len(s)] = s
    (got,) = session.run(["logits"], {"ids": ids, "lengths": np.array([len(s) for s in longer])})
    np.testing.assert_allclose(got, logits(m, longer), atol=1e-4)


def test_export_check_catches_a_mismatch(tmp_path):
    path = tmp_path / "m.onnx"
    export_classifier(model("gru"), path, SEQS)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        check_classifier(model("gru", seed=1), path, SEQS)


def test_config_validation():
    with pytest.raises(ValueError, match="cell must be one of"):
        ClassifierConfig(vocab_size=10, num_classes=2, cell="transformer")
    cfg = ClassifierConfig(vocab_size=10, num_classes=2, cell="gru")
    assert ClassifierConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg
