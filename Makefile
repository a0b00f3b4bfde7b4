# The two commands of the README: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.14.1 / torchvision 0.29.1 are the tested pair; override for another platform, e.g.
#   make test TORCH="torch==2.9.1 torchvision==0.24.1"
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test bench-quick bench notebooks dashboard clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[all]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cpsc-dfkd demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/fashion_mnist.py --quick

bench: $(STAMP)
	$(BIN)/python benchmarks/fashion_mnist.py

notebooks: $(STAMP)
	$(BIN)/jupyter lab notebooks/

dashboard: $(STAMP)
	$(BIN)/cpsc-dfkd dashboard

clean:
	rm -rf $(VENV) runs build *.egg-info
