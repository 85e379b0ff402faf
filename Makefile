# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: install demo test clean

install: $(STAMP)

# torch goes in first and alone: pip then takes the local CPU wheel, and nothing later
# can pull a multi-GB CUDA build. The rest comes from the committed lock (constraints.txt).
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Lepton needs Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/lepton demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .lepton
