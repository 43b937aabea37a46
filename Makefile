# Two commands do everything on a fresh machine (see README.md):
#   make demo   -> creates .venv (Python >= 3.12) if needed, then runs the main job: train the tiny
#                  FlexAvatar on built-in synthetic data, evaluate on held-out identities, turntable
#   make test   -> creates .venv with the test extras if needed, then runs the test suite
VENV ?= .venv
OUT ?= out
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q -n 2

WORKDIR ?= $(OUT)/tiny

.PHONY: demo preview test test-all venv clean
venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	@set -e; if [ ! -x $(PY) ]; then \
	  interp=$$(bash tools/find_python.sh); \
	  echo "creating $(VENV) with $$interp"; \
	  "$$interp" -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	FLEXAVATAR_BUILD_CUDA=0 $(PY) -m pip install -q -e ".[test]"
	@# pip builds in an isolated environment without jax, so the CUDA splatting library (it needs
	@# jax's XLA FFI headers) is compiled here, once jax is installed; without nvcc this is skipped.
	@if command -v nvcc >/dev/null 2>&1 || [ -n "$${CUDA_HOME:-}" ]; then \
	  $(PY) -m flexavatar_jax.render.cuda_backend build >/dev/null || \
	  echo "flexavatar-jax: CUDA splatting library not built; the pure-JAX renderer works without it"; \
	fi
	@touch $@

demo: venv
	$(VENV)/bin/flexavatar-jax train --config configs/flexavatar.py:tiny --workdir $(WORKDIR)

preview: venv
	$(VENV)/bin/flexavatar-jax preview-head --out $(OUT)/preview_head
	$(VENV)/bin/flexavatar-jax preview-data --config configs/synthetic_data.py:tiny \
	  --config.synthetic.image_size=128 --config.synthetic.uv_resolution=128 --out $(OUT)/preview_data

test: venv
	$(PY) -m pytest $(PYTEST_ARGS) tests

test-all: venv
	$(PY) -m pytest $(PYTEST_ARGS) --runslow tests

clean:
	rm -rf $(VENV) $(OUT)
