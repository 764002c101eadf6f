# The README's two commands: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# pip's own notices about local indexes are noise here.
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[litert,onnx]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import edge_enhance, ai_edge_litert, onnxruntime"
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev,train]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import edge_enhance, onnx, onnxruntime, ai_edge_litert, tflite, pytest, hypothesis"
	touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/python -m edge_enhance.demo out/demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest tests

bench: $(VENV)/.dev
	$(BIN)/edge-enhance bench

clean:
	rm -rf $(VENV) out build *.egg-info
