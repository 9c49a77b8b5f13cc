"""Fixtures of the sftlib.data tests: the toy OPT tokenizer, loaded once."""

import pytest


@pytest.fixture(scope="session")
def tok(world):
    from sftlib.model import load_hf_tokenizer

    return load_hf_tokenizer(str(world["opt"]))
