"""onnxruntime sessions as the settings ask for them: threads, spinning, providers; the interpreter's GIL switch."""

import logging
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from service.engine.repository import read_config
from service.engine.sessions import SessionOptions, make_session, providers_for
from service.serving.kinds import build_model
from service.settings import Settings


def spinning(session: ort.InferenceSession) -> str:
    return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_spinning_is_off_only_when_asked(classifier_version: Path):
    graph = classifier_version / read_config(classifier_version)["graphs"]["model"]
    quiet = make_session(graph, SessionOptions(device="cpu", intra_op_threads=2, spinning=False))
    assert spinning(quiet) == "0"
    assert quiet.get_session_options().intra_op_num_threads == 2
    busy = make_session(graph, SessionOptions(device="cpu"))
    with pytest.raises(RuntimeError):  # no entry: onnxruntime's default (spinning) applies
        spinning(busy)


def test_the_service_turns_spinning_off_unless_configured(classifier_version: Path):
    config = read_config(classifier_version)
    served = build_model("reviews", classifier_version, config, Settings(device="cpu"))
    assert spinning(served.runtime.session) == "0"  # type: ignore[attr-defined]
    served = build_model("reviews", classifier_version, config, Settings(device="cpu", intra_op_spinning=True))
    with pytest.raises(RuntimeError):
        spinning(served.runtime.session)  # type: ignore[attr-defined]


def test_cuda_asked_for_without_the_provider_is_a_clear_error():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers_for("cuda")[0] == "CUDAExecutionProvider"
        return
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        providers_for("cuda")
    assert providers_for("auto") == ["CPUExecutionProvider"]


def test_serve_shortens_the_gil_switch_interval():
    from service.server import tune_interpreter

    before = sys.getswitchinterval()
    try:
        tune_interpreter(Settings())
        assert sys.getswitchinterval() == pytest.approx(50e-6)
        tune_interpreter(Settings(gil_switch_interval_us=5000))
        assert sys.getswitchinterval() == pytest.approx(0.005)
    finally:
        sys.setswitchinterval(before)
    with pytest.raises(ValueError, match="gil_switch_interval_us"):
        Settings(gil_switch_interval_us=0)


def test_a_cuda_provider_that_does_not_start_fails_cuda_and_falls_back_under_auto(classifier_version, monkeypatch,
                                                                                   caplog):
    """The provider list faked to offer CUDA: this onnxruntime cannot start it, as on a host without a usable GPU."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a working CUDA provider list; the fake would not be a fake")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    graph = classifier_version / read_config(classifier_version)["graphs"]["model"]
    with pytest.raises(RuntimeError, match="fell back to the CPU"):
        make_session(graph, SessionOptions(device="cuda"))
    caplog.set_level(logging.ERROR, logger="seqserve.engine")
    session = make_session(graph, SessionOptions(device="auto"))
    assert session.get_providers()[0] == "CPUExecutionProvider"
    assert "did not start; running on the CPU" in caplog.text
