# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
FMNIST_DIR ?= $(or $(JAXKD_FASHION_MNIST_DIR),/usr/share/datasets/fashion-mnist)
PYTEST_ARGS ?=
# XLA:CPU's step buffers on transparent huge pages: a step's temporaries are mapped afresh
# each run, and fault in per 2 MiB page instead of per 4 KiB (docs/performance.md). glibc
# reads it when a process starts; other allocators ignore it.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: demo test docs install install-test install-docs data bench clean

# uv installs the venv's packages (fresh set-up 56 s with pip -> 22 s, 2 cores); it
# compiles their bytecode as pip does, so each Python process imports as fast.
UV_INSTALL := $(VPY) -m uv pip install -q --python $(VPY) --compile-bytecode

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q uv

# Stamps re-run the install whenever pyproject.toml changes (idempotent otherwise).
$(VENV)/.installed: pyproject.toml | $(VPY)
	$(UV_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VPY)
	$(UV_INSTALL) -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-docs: pyproject.toml | $(VPY)
	$(UV_INSTALL) -e '.[docs]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-docs: $(VENV)/.installed-docs

# Raw Fashion-MNIST: Debian's dataset-fashion-mnist when we are root on Debian and the files
# are missing; otherwise JAXKD_FASHION_MNIST_DIR, or the online fallback inside jaxkd.
data: install
	@if [ ! -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ] && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null; then \
	  echo "Installing Debian package dataset-fashion-mnist"; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	fi
	$(VPY) -m jaxkd.data prepare fashion_mnist

# The text corpora for language models (jaxkd/data/text.py): Debian's python3.11-doc when we
# are root on Debian and the files are missing; otherwise JAXKD_PYDOC_DIR names them.
PYDOC_DIR ?= $(or $(JAXKD_PYDOC_DIR),/usr/share/doc/python3.11/html/_sources)
.PHONY: data-text
data-text: install
	@if [ ! -f "$(PYDOC_DIR)/library/functions.rst.txt" ] && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null; then \
	  echo "Installing Debian package python3.11-doc"; \
	  apt-get install -y -q python3.11-doc >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null && apt-get install -y -q python3.11-doc >/dev/null; }; \
	fi
	$(VPY) -c "from jaxkd.data import text; text.prepare('pydoc'); \
	  text.prepare('stdlib', tokenizer_corpus='pydoc')"

# The demo: LeNet-5 teacher, LeNet-5-Half alone and distilled, 5 epochs each, then a table
# beside the published figures (2 min 06 s from a fresh clone, set-up included, on 2 CPU
# cores: AMD EPYC VM, 2026-12-03).
demo: data
	$(VPY) experiments/reproduce_fashion_mnist_kd.py --profile demo

test: install-test
	$(VPY) -m pytest -q -n auto $(PYTEST_ARGS)

# The guides and the API reference (from the docstrings) into site/; warnings are errors.
# The method table of docs/methods.md is rewritten from the registry first.
docs: install-docs
	$(VPY) docs/gen_methods.py
	$(VPY) -m mkdocs build --strict

# tcmalloc (Debian: libtcmalloc-minimal4) reuses freed blocks, so XLA's step temporaries stop
# faulting in afresh, for PyTorch's peer too: the ResNet rows reach PyTorch's speed only with
# it (docs/performance.md). Installed when we are root on Debian and it is missing, then
# preloaded; `make bench TCMALLOC=` runs on the C library's malloc instead. The results
# record which allocator ran (`malloc`).
TCMALLOC_GLOB := /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4

bench: install
	@if ! ls $(TCMALLOC_GLOB) >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null; then \
	  echo "Installing Debian package libtcmalloc-minimal4"; \
	  apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null && apt-get install -y -q libtcmalloc-minimal4 >/dev/null; }; \
	fi
	$(VPY) -m pip install -q -e '.[bench]'
	LD_PRELOAD=$${TCMALLOC-$$(ls $(TCMALLOC_GLOB) 2>/dev/null | head -n 1)} \
	  $(VPY) benchmarks/throughput.py --quick

clean:
	rm -rf $(VENV) workdirs site
