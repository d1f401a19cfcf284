# sfplan: `make eval` sets everything up and runs the main job; `make test` sets up and runs the tests.
VENV        ?= .venv
PYTHON      ?= python3
CONSTRAINTS ?= constraints.txt
EXTRAS      ?= all
ARGS        ?=
PY          := $(VENV)/bin/python
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup eval test info clean

$(VENV)/.installed: setup.py $(CONSTRAINTS)
	bash scripts/system_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

eval: setup
	$(VENV)/bin/sfplan eval $(ARGS)

info: setup
	$(VENV)/bin/sfplan info

test: setup
	$(PY) -m pytest -q tests $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
