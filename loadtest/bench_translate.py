"""Translation benchmark: a short/long mix per scheduler mode (same as `seqserve bench translate`).

    .venv/bin/python loadtest/bench_translate.py --repo model_repository --out docs/benchmarks
    .venv/bin/python loadtest/bench_translate.py --repo model_repository --modes continuous,static --beam-size 1

The code lives in the `bench` package so that the installed `seqserve` command has it too.
"""

import sys

from cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "translate", *sys.argv[1:]]))
