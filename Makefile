# Two commands do all setup: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: install demo test server lock clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==24.3.1
	# torch first, alone and pinned: anything else may otherwise pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(BIN)/millrace setup-tika
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m millrace.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

server: $(STAMP)
	$(BIN)/python -m millrace.server

lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^torch==' > constraints.txt.new
	echo 'torch==2.13.0' >> constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .millrace
