"""Tokenizer loading and model creation (``dschat/utils/model/model_utils.py`` and ``utils.py``).

Same names and signatures as DeepSpeed-Chat, with its known defects fixed:

- ``load_hf_tokenizer`` loads a local folder's own tokenizer files, with or without a
  ``config.json`` (the original read the hub name out of ``config.json``, loaded *that* tokenizer
  from the hub, and failed without one); a hub id goes through transformers' own resolution, and
  offline a missing id is a one-line error naming it. ``fast_tokenizer`` is honoured (the original
  passed it under a name transformers ignores).
- ``create_hf_model`` rounds the vocabulary up to a multiple of 8 and never shrinks it; the dropout
  override covers every dropout key the architecture has (OPT, Llama, GPT-2's ``*_pdrop``).
- ``trust_remote_code`` stays off unless a caller asks for it.

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path

import torch

from sftlib.constants import IGNORE_INDEX
from sftlib.dist import full_shape
from sftlib.errors import SFTError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model")



# --------------------------------------------------------------------------------------------
# Where a name points: a local folder or a hub id
# --------------------------------------------------------------------------------------------

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # what a hub id looks like: "name" or "org/name"
LEARNED_POSITIONS = ("opt", "gpt2", "gpt_neo", "gpt_bigcode")  # models that cannot go past their position table


def local_path(name, flag: str, kind: str = "file or folder") -> Path | None:
    """The one rule for "a local path or a hub id", for models and data alike: what exists on disk is
    local (its Path); a name shaped like a hub id (``name`` or ``org/name``) that does not exist is a hub
    id (None); anything else (``./x``, ``/x``, ``~/x``, ``a/b/c``) is a missing path, and the error is
    ``{flag} {name}: no such {kind}``."""
    path = Path(os.path.expanduser(str(name)))
    if path.exists():
        return path
    if HUB_ID.match(str(name)):
        return None
    raise SFTError(f"{flag} {name}: no such {kind}")


def _local_folder(name) -> Path | None:
    """The model folder ``name`` names, None for a hub id (``local_path``); a file is an error."""
    path = local_path(name, "--model_name_or_path", "model folder")
    if path is not None and not path.is_dir():
        raise SFTError(f"--model_name_or_path {name} is a file; pass a model folder or a hub id")
    return path


def _hub_error(name: str, err: Exception) -> SFTError:
    """A one-line error for a hub id transformers could not resolve."""
    text = str(err)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    if offline or "connect" in text.lower() or "offline" in text.lower():
        return SFTError(f"{name!r} is not a local folder, and it is not in the Hugging Face cache while the hub "
                        f"is unreachable (offline, HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); "
                        "pass a local model folder or download it first")
    return SFTError(f"cannot load {name!r}: {text.strip().splitlines()[0] if text.strip() else type(err).__name__}")


def is_llama(model_name_or_path: str) -> bool:
    """DeepSpeed-Chat's test (the name contains "llama"), widened to a local config's ``model_type``."""
    cfg = Path(str(model_name_or_path)) / "config.json"
    if cfg.is_file():
        try:
            if "llama" in json.loads(cfg.read_text()).get("model_type", ""):
                return True
        except ValueError:
            pass
    return "llama" in str(model_name_or_path).lower()


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

def _auto_tokenizer(model_name_or_path, fast_tokenizer: bool, trust_remote_code: bool):
    from transformers import AutoTokenizer

    folder = _local_folder(model_name_or_path)
    if folder is not None and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise SFTError(f"model folder {model_name_or_path} holds no tokenizer files (one of "
                       f"{', '.join(TOKENIZER_FILES)}); save the tokenizer into it")
    try:
        return AutoTokenizer.from_pretrained(str(folder or model_name_or_path), use_fast=fast_tokenizer,
                                             trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if folder is not None:
            raise SFTError(f"cannot load the tokenizer in {model_name_or_path}: "
                           f"{str(err).strip().splitlines()[0]}") from None
        raise _hub_error(str(model_name_or_path), err) from None


def load_hf_tokenizer(model_name_or_path: str, fast_tokenizer: bool = True, add_special_tokens=None,
                      trust_remote_code: bool = False):
    """Load a tokenizer and prepare it the way DeepSpeed-Chat step 1 does.

    A local folder loads its own tokenizer files (``config.json`` not needed); anything else is a
    hub id resolved by transformers. Llama gets a ``[PAD]`` token when it has none; every other
    model pads with its EOS token. Padding is on the right. ``add_special_tokens`` (a string or a
    list) adds e.g. ``<|endoftext|>``. A tokenizer with neither an EOS nor a pad token is an error.
    """
    tokenizer = _auto_tokenizer(model_name_or_path, fast_tokenizer, trust_remote_code)
    if tokenizer.eos_token is None and tokenizer.pad_token is None:
        raise SFTError(f"the tokenizer of {model_name_or_path} has neither an EOS nor a pad token; "
                       "set eos_token in its tokenizer_config.json")
    if is_llama(model_name_or_path):
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    elif tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if add_special_tokens is not None:
        extra = [add_special_tokens] if isinstance(add_special_tokens, str) else list(add_special_tokens)
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


# --------------------------------------------------------------------------------------------
# Config and model
# --------------------------------------------------------------------------------------------

def dropout_keys(model_config) -> list[str]:
    """Every dropout probability the config has: names containing ``dropout`` or ending in ``_pdrop``.

    ``layerdrop`` (skipping whole layers) is not a dropout probability and is left out, and so are
    keys set to None (they mean "use another key").
    """
    return [k for k, v in model_config.to_dict().items()
            if ("dropout" in k or k.endswith("_pdrop")) and isinstance(v, (int, float)) and not isinstance(v, bool)]


def configure_dropout(model_config, dropout: float | None) -> list[str]:
    """Set every dropout key of the config to ``dropout``; returns the keys changed (none when None).
    """
    if dropout is None:
        return []
    keys = dropout_keys(model_config)
    for key in keys:
        setattr(model_config, key, dropout)
    return keys


def load_config(model_name_or_path: str, trust_remote_code: bool = False):
    """``AutoConfig`` for a folder or hub id, with one-line errors for what users get wrong.

    A folder without ``config.json``, an unknown ``model_type``, a config that needs custom code
    (``trust_remote_code`` is off unless asked for) and an unreachable hub id each raise ``SFTError``.
    """
    from transformers import AutoConfig

    folder = _local_folder(model_name_or_path)
    if folder is not None and not (folder / "config.json").is_file():
        raise SFTError(f"model folder {model_name_or_path} has no config.json")
    try:
        return AutoConfig.from_pretrained(str(folder or model_name_or_path), trust_remote_code=trust_remote_code)
    except ValueError as err:
        text = str(err)
        where = f"{folder / 'config.json'}" if folder is not None else repr(str(model_name_or_path))
        if "trust_remote_code" in text:
            raise SFTError(f"{where} needs custom code from the model's folder; it runs only with "
                           "trust_remote_code=True (off by default: read that code first)") from None
        if "model type" in text or "model_type" in text or "Unrecognized" in text:
            model_type = _model_type(folder)
            raise SFTError(f"{where} names an architecture (model_type {model_type!r}) that transformers "
                           f"{_transformers_version()} does not know") from None
        raise SFTError(f"cannot read the config of {where}: {text.strip().splitlines()[0]}") from None
    except OSError as err:
        raise _hub_error(str(model_name_or_path), err) from None


def _model_type(folder: Path | None):
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (TypeError, OSError, ValueError, AttributeError):
        return None


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def check_model_folder(model_name_or_path, max_seq_len: int) -> None:
    """Before any work: a local model folder has a readable config.json and readable weights (a truncated
    file fails here), and a model with a learned position table is not asked for longer rows than it has;
    a hub id is left to loading, which says whether it is reachable."""
    folder = _local_folder(model_name_or_path)
    if folder is None:
        return
    name = str(model_name_or_path)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SFTError(f"--model_name_or_path {name}: no config.json; pass a Hugging Face model folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SFTError(f"--model_name_or_path {name}: config.json is not valid json ({err})") from None
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise SFTError(f"--model_name_or_path {name}: no weights (model*.safetensors or pytorch_model*.bin)")
    for path in weights:
        _check_weights_file(path)
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    if config.get("model_type") in LEARNED_POSITIONS and limit and max_seq_len > limit:
        raise SFTError(f"--max_seq_len {max_seq_len} is longer than {name}'s position table ({limit}); "
                       f"pass --max_seq_len {limit} or less")


def _check_weights_file(path: Path) -> None:
    """A weights file opens: safetensors reads its header, torch.save's zip its central directory."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises its own error type for a short or corrupt file
            raise SFTError(f"model weights {path} are unreadable ({str(err).splitlines()[0]}); "
                           "copy the model folder again") from None
    else:
        import zipfile

        try:
            zipfile.ZipFile(path).close()  # a truncated file has no central directory
        except (zipfile.BadZipFile, OSError) as err:
            raise SFTError(f"model weights {path} are unreadable ({err}); copy the model folder again") from None


def padded_vocab_size(tokenizer_length: int, current: int) -> int:
    """The embedding rows to keep: the tokenizer length rounded up to a multiple of 8, never fewer
    than ``current`` (the original resized to the rounded length even when that was smaller).
    """
    return max(current, int(8 * math.ceil(tokenizer_length / 8.0)))


@contextlib.contextmanager
def zero3_loading(ds_config: dict | None):
    """While inside, transformers builds and loads models partitioned over the ranks (ZeRO-3).

    Entered only when ``ds_config`` is a ZeRO-3 config; otherwise it does nothing. It is a scope,
    not a global: a model created after it (a baseline for evaluation, say) loads whole.
    """
    if not ds_config or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield None
        return
    from transformers.integrations import HfDeepSpeedConfig

    dschf = HfDeepSpeedConfig(ds_config)  # transformers holds it by a weak reference: alive while we hold it
    try:
        yield dschf
    finally:
        del dschf


def create_hf_model(model_class, model_name_or_path: str, tokenizer, ds_config: dict | None = None,
                    rlhf_training: bool = False, dropout: float | None = None, trust_remote_code: bool = False):
    """Build the model: config, dropout override, ZeRO-3-aware loading, token ids, vocab rounding.

    Under ZeRO-3 the loading runs inside ``zero3_loading``, so ``from_pretrained`` loads the weights
    already partitioned across ranks. ``rlhf_training`` builds the architecture
    with fresh weights (steps 2/3 load their own). Weights load in fp32 (DeepSpeed casts later).
    The config's ``end_token_id`` is the tokenizer's EOS, and ``pad_token_id`` the model's EOS.
    The embedding matrix grows to ``padded_vocab_size`` and never shrinks.
    """
    model_config = load_config(model_name_or_path, trust_remote_code)
    configure_dropout(model_config, dropout)

    remote = {"trust_remote_code": True} if trust_remote_code else {}
    with zero3_loading(ds_config):  # under ZeRO-3, each rank loads only its partition of every weight
        try:
            if rlhf_training:
                model = model_class.from_config(model_config, **remote)
            else:
                model = model_class.from_pretrained(str(model_name_or_path), config=model_config,
                                                    dtype=torch.float32, **remote)
        except ValueError as err:
            if "Unrecognized configuration class" in str(err):
                raise SFTError(f"{model_name_or_path}: model_type {model_config.model_type!r} has no "
                               f"{model_class.__name__} class (not a decoder-only language model?)") from None
            raise
        model.config.end_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = model.config.eos_token_id
        weight = model.get_input_embeddings().weight
        current = full_shape(weight)[0]
        wanted = padded_vocab_size(len(tokenizer), current)
        if wanted > current:
            model.resize_token_embeddings(wanted)
    return model


def causal_lm_model_to_fp32_loss(model) -> None:
    """Make the model compute its causal-LM loss on fp32 logits (``--compute_fp32_loss``)."""
    original_forward = model.forward

    def forward(*args, labels=None, **kwargs):
        out = original_forward(*args, labels=None, **kwargs)
        if labels is not None:
            logits = out.logits[..., :-1, :].float().contiguous()
            target = labels[..., 1:].contiguous().to(logits.device)
            out.loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), target.view(-1),
                                                         ignore_index=IGNORE_INDEX)
        return out

    model.forward = forward
