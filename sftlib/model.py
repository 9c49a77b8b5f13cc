"""Tokenizer loading and model creation (``dschat/utils/model/model_utils.py`` and ``utils.py``).

Same names and signatures as DeepSpeed-Chat, with its known defects fixed:

- ``load_hf_tokenizer`` loads a local folder's own tokenizer files (the original read the hub name
  out of ``config.json`` and failed without one); a hub id goes through transformers' resolution.
- ``create_hf_model`` never shrinks a vocabulary when it rounds it up to a multiple of 8, and the
  dropout override covers every dropout key the architecture has.

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import math
import os

import torch

from sftlib.utils import SFTError

DROPOUT_KEYS = ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout",
                "embd_pdrop", "resid_pdrop", "attn_pdrop", "summary_first_dropout",
                "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")

_ds_configs_alive = []  # HfDeepSpeedConfig objects must outlive model creation under ZeRO-3


def _hub_error(name: str, err: Exception) -> SFTError:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(err).lower() or "connect" in str(err).lower():
        return SFTError(f"model {name!r} is neither a local folder nor in the Hugging Face cache, and "
                        f"the hub cannot be reached (offline); pass a local model folder")
    return SFTError(f"cannot load {name!r}: {str(err).splitlines()[0]}")


def is_llama(model_name_or_path: str) -> bool:
    """DeepSpeed-Chat's test (the name contains "llama"), widened to a local config's model_type."""
    cfg = os.path.join(str(model_name_or_path), "config.json")
    if os.path.isfile(cfg):
        import json

        with open(cfg) as f:
            if "llama" in json.load(f).get("model_type", ""):
                return True
    return "llama" in str(model_name_or_path).lower()


def load_hf_tokenizer(model_name_or_path: str, fast_tokenizer: bool = True, add_special_tokens=None):
    """Load a tokenizer the way DeepSpeed-Chat step 1 prepares it.

    Llama gets a ``[PAD]`` token when it has none; every other model pads with its EOS token.
    Padding is on the right. ``add_special_tokens`` (a string or list) adds e.g. ``<|endoftext|>``.
    """
    from transformers import AutoTokenizer

    if not os.path.isdir(str(model_name_or_path)) and os.path.sep in str(model_name_or_path).rstrip(os.path.sep) \
            and str(model_name_or_path).startswith((".", os.path.sep, "~")):
        raise SFTError(f"model folder {model_name_or_path!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, use_fast=fast_tokenizer)
    except (OSError, ValueError) as err:
        raise _hub_error(str(model_name_or_path), err) from None
    if tokenizer.eos_token is None and tokenizer.pad_token is None:
        raise SFTError(f"the tokenizer of {model_name_or_path!r} has neither an EOS nor a pad token; "
                       "set tokenizer.eos_token before training")
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


def configure_dropout(model_config, dropout: float | None) -> None:
    """Set every dropout key the config has to ``dropout`` (no-op when None)."""
    if dropout is None:
        return
    for key in DROPOUT_KEYS:
        if hasattr(model_config, key):
            setattr(model_config, key, dropout)


def create_hf_model(model_class, model_name_or_path: str, tokenizer, ds_config: dict | None = None,
                    rlhf_training: bool = False, dropout: float | None = None):
    """Build the model: config, dropout override, ZeRO-3-aware loading, token ids, vocab rounding.

    Under ZeRO-3 an ``HfDeepSpeedConfig`` is created first and kept alive, so ``from_pretrained``
    loads the weights already partitioned across ranks. The embedding matrix is resized to the
    tokenizer length rounded up to a multiple of 8, and never made smaller than it was.
    """
    from transformers import AutoConfig

    try:
        model_config = AutoConfig.from_pretrained(model_name_or_path)
    except ValueError as err:
        if "model_type" in str(err) or "Unrecognized" in str(err):
            raise SFTError(f"{model_name_or_path}/config.json names an architecture this transformers "
                           f"does not know: {str(err).splitlines()[0]}") from None
        raise _hub_error(str(model_name_or_path), err) from None
    except OSError as err:
        raise _hub_error(str(model_name_or_path), err) from None
    configure_dropout(model_config, dropout)

    if ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3:
        from transformers.integrations import HfDeepSpeedConfig

        _ds_configs_alive.append(HfDeepSpeedConfig(ds_config))
    if rlhf_training:
        model = model_class.from_config(model_config)
    else:
        model = model_class.from_pretrained(model_name_or_path, config=model_config, dtype=torch.float32)

    model.config.end_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = model.config.eos_token_id
    current = model.get_input_embeddings().weight.shape[0]
    if hasattr(model.get_input_embeddings().weight, "ds_shape"):
        current = model.get_input_embeddings().weight.ds_shape[0]
    wanted = int(8 * math.ceil(len(tokenizer) / 8.0))
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
                                                         ignore_index=-100)
        return out

    model.forward = forward
