# The README's two commands: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# pip's own notices about local indexes are noise here.
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check
# pipefail: pip's own failure (no index reachable, no wheel for this machine) stops make, not the filter.
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[litert,onnx]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -c "import edge_enhance, ai_edge_litert, onnxruntime"
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev,train]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -c "import edge_enhance, onnx, onnxruntime, ai_edge_litert, tflite, pytest, hypothesis"
	touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/python -m edge_enhance.demo out/demo

# The web viewfinder's browser test drives Debian's Chromium through Playwright (no browser download).
$(VENV)/.browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium could not be installed: the browser test will be skipped"
	touch $@

test: $(VENV)/.dev $(VENV)/.browser
	$(BIN)/python -m pytest tests

# The engines, the converter (fp32 TFLite of each ONNX model) and the peers: no torch, no test tools.
$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[litert,onnx,convert,bench]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -c "import edge_enhance, ai_edge_litert, onnxruntime, onnx, cv2, matplotlib"
	touch $@

bench: $(VENV)/.bench
	$(BIN)/edge-enhance bench --out bench-out

clean:
	rm -rf $(VENV) out bench-out build dist *.egg-info
