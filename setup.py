"""The one build step beyond setuptools' own: the OIP v2 gRPC service definition compiled into a descriptor set
(service/api/proto/grpc_predict_v2.pb), which the service loads at run time. Metadata is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO = "service/api/proto/grpc_predict_v2.proto"


def compile_proto() -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out = ROOT / PROTO.replace(".proto", ".pb")
    code = protoc.main(["protoc", f"-I{include}", f"-I{ROOT}", f"--descriptor_set_out={out}", str(ROOT / PROTO)])
    if code != 0:
        raise SystemExit(f"protoc failed on {PROTO} (exit {code})")


class BuildPy(build_py):
    def run(self) -> None:
        compile_proto()
        super().run()


setup(cmdclass={"build_py": BuildPy})
