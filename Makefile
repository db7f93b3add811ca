# mnistlab: `make lab` runs the lab end to end, `make test` runs the whole test suite (what CI runs),
# `make test-fast` the tier for every change (every module, no lab/tune/torchrun/browser/resume runs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# No NVIDIA driver: pin the CPU wheel of PyTorch so pip never pulls a multi-GB CUDA build.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)

.PHONY: lab notebook test test-fast lint bench system-deps clean

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(CONSTRAINTS) -e '.[serve,export,lab,tune,tensorboard,explain,test]'
	touch $@

lab: $(BIN)/.installed
	$(BIN)/mnistlab data fetch
	$(BIN)/mnistlab lab

# notebooks/mnist_lab.ipynb is generated from its source (a test fails when they differ)
notebook: $(BIN)/.installed
	$(BIN)/mnistlab notebook --out notebooks/mnist_lab.ipynb

system-deps:
	sh scripts/system-deps.sh

test: $(BIN)/.installed system-deps
	$(BIN)/python -m pytest -q --durations=15

# test-fast: one pytest-xdist worker per core, each process one torch thread (torch's default threads in every
# worker oversubscribe the cores: BENCHMARKS.md, "The test suite")
test-fast: $(BIN)/.installed
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n auto --durations=15

lint: $(BIN)/.installed
	$(BIN)/ruff check .

bench: $(BIN)/.installed
	$(BIN)/mnistlab bench --out benchmarks/results

clean:
	rm -rf $(VENV) build *.egg-info
