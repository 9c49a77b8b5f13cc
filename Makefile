# make demo  -> fine-tune tiny OPT with DeepSpeed on this CPU and report what changed
# make test  -> lint, unit tests, then every notebook executed under nbmake
# make lab   -> JupyterLab on the notebooks
# An active conda environment or virtualenv is used as it is; otherwise .venv is created.

ifneq ($(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),)
PY := python
STAMP := .env-installed
else
PY := .venv/bin/python
STAMP := .venv/.installed
endif

# Offline by design: everything is made locally; one thread per rank on small CPUs.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint unit notebooks lab toy clean

$(STAMP): pyproject.toml
	@if [ "$(PY)" = ".venv/bin/python" ] && [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sftlib.lessons.demo

toy: $(STAMP)
	$(PY) -m sftlib.lessons.toy

lint: $(STAMP)
	$(PY) -m ruff check sftlib tests notebooks bench
	$(PY) tests/check_notebooks.py notebooks

unit: $(STAMP)
	$(PY) -m sftlib.lessons.toy --models opt llama
	$(PY) -m pytest -q tests

notebooks: $(STAMP)
	$(PY) -m sftlib.lessons.toy --models opt llama
	$(PY) -m pytest -q --nbmake --nbmake-timeout=600 notebooks

test: lint unit notebooks

lab: $(STAMP)
	$(PY) -m jupyter lab notebooks

clean:
	rm -rf outputs .pytest_cache
