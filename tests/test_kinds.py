"""Every model kind is registered in every layer's registry (docs/architecture.md: "How to add a model kind")."""

from cli.kinds import TRAIN
from service.api.kinds import API_KINDS, V1_PATHS
from service.engine.kinds import RUNTIMES
from service.engine.repository import KINDS
from service.serving.kinds import SERVED
from training.kinds import TOOLS


def test_each_layer_registers_the_same_kinds():
    kinds = set(RUNTIMES)
    assert set(KINDS) == kinds
    assert set(SERVED) == kinds and all(cls.kind == name for name, cls in SERVED.items())
    assert set(API_KINDS) == kinds and all(api.kind == name for name, api in API_KINDS.items())
    assert set(TOOLS) == kinds
    assert set(TRAIN) == kinds


def test_v1_paths_belong_to_one_kind_each():
    paths = [path for api in API_KINDS.values() for path in api.v1_paths]
    assert len(paths) == len(set(paths)) == len(V1_PATHS)
    assert all(route.path in api.v1_paths for api in API_KINDS.values() for route in api.fast)
