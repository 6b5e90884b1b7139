"""Tagging benchmark: service vs bare onnxruntime, fp32 vs int8 (same as `seqserve bench tag`).

    .venv/bin/python loadtest/bench_tag.py --repo model_repository --model atis --out docs/benchmarks
    .venv/bin/python loadtest/bench_tag.py --url http://127.0.0.1:8000 --repo model_repository  # running service

The code lives in the `bench` package so that the installed `seqserve` command has it too.
"""

import sys

from cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "tag", *sys.argv[1:]]))
