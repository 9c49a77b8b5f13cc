"""Names and numbers several modules must agree on, each defined once."""

IGNORE_INDEX = -100  # a label the loss skips (torch's cross_entropy default): padding, masked prompts
LORA_PARAM_NAMES = ("lora_right_weight", "lora_left_weight")  # DeepSpeed-Chat's LoRA parameter names


def is_lora_name(name: str) -> bool:
    """True for a LoRA parameter's (or state-dict key's) name: never saved with the base model."""
    return any(part in name for part in LORA_PARAM_NAMES)
