# napari-medsam: `make demo` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
OUT    ?= out
XVFB   := $(shell command -v xvfb-run 2>/dev/null)
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 \
	libxcb-randr0 libxcb-render-util0 libxcb-image0 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0 \
	libgl1 libegl1 libfontconfig1 libdbus-1-3

.PHONY: setup model demo test test-fast lint bench gpu-check sys-deps clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build, never a CUDA download
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[export,test,openvino,server]" PyQt6
	touch $@

setup: $(VENV)/.installed

# Installs the X virtual framebuffer and the xcb libraries Qt needs (root, Debian/Ubuntu).
sys-deps:
	@if ! command -v xvfb-run >/dev/null || ! ldconfig -p | grep -q libxcb-icccm; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
		else \
			echo "Missing Xvfb/xcb libraries: sudo apt-get install -y $(APT_PACKAGES)"; exit 1; \
		fi; \
	fi

model: setup
	$(BIN)/napari-medsam export-model

demo: model
	@if [ -n "$(HEADLESS)" ] || [ -z "$$DISPLAY" ]; then \
		$(MAKE) --no-print-directory sys-deps && \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python -m napari_medsam.demo --headless --out $(OUT); \
	else \
		$(BIN)/python -m napari_medsam.demo; \
	fi

test: setup sys-deps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python -m pytest -q --durations=15

# The quick loop (under 2 minutes on 2 cores): real data and the real model, without the
# tests marked slow (exports, whole volumes) or gui (a napari viewer; they need Xvfb).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not gui" --durations=10

lint: setup
	$(BIN)/ruff check napari_medsam src_tests models benchmarks research

bench: model
	$(BIN)/napari-medsam bench --data ../shared/data --json $(OUT)/bench.json

# On a machine with an NVIDIA GPU (at most 5 minutes): CUDA/TensorRT really run, masks equal
# the CPU's on real slices, the bench, the batched encoder, and a server with one GPU
# replica. Elsewhere it says why it cannot run and exits 1.
gpu-check: model
	$(BIN)/python benchmarks/gpu_check.py --data ../shared/data --json $(OUT)/gpu_check.json

clean:
	rm -rf $(VENV) build dist *.egg-info $(OUT)
