"""DeepSpeed-Chat's dataset abstraction (``dschat/utils/data/``): raw sets, splits, prompt datasets.

Three layers, as in the original:

1. ``PromptRawDataset`` (``raw.py``): one dataset's train/eval rows and how to read ``prompt``,
   ``chosen`` and ``rejected`` from a row. Every set DeepSpeed-Chat knows is in ``REGISTRY``
   (``registry.py``) as a small declarative ``DatasetSpec`` (field templates, splits); users add
   their own the same way, from a json file (see data_cards/README.md). Rows are loaded from the
   hub or local files by ``sources.py``.
2. ``split_indices`` (``splits.py``): the seeded permutation cut by ``--data_split``; phase p uses
   part p-1, and the index files carry the original names. Every split is counted before anything
   is tokenized: a phase with no train or no eval rows is a one-line error naming the data path, the
   split and the row counts, and no empty split is ever cached (data_cards/README.md).
3. ``create_prompt_dataset`` (``build.py``): tokenized phase-1/2/3 datasets. Compat mode gives
   exactly the tensors of the original one-at-a-time recipe, but tokenizes in batches
   (``tokenize.py``), stores unpadded int32 ids as Arrow (``PromptDataset`` in
   ``prompt_dataset.py`` pads when read), and builds the cache once per node (its local rank 0)
   while the node's other ranks poll a marker file (``cache.py``).

Naming a dataset on the command line (``--data_path``, ``--sft_only_data_path``)::

    Dahoas/rm-static                     # registered name: datasets.load_dataset(hub id)
    Dahoas/rm-static=/data/rm-static     # the same set from a local file or folder, offline
    path/to/folder                       # train.json + eval.json, fields used as they are
    local/jsonfile=path/to/rows.jsonl    # DeepSpeed-Chat's local/jsonfile, any json/jsonl path
    my_set.json=path/to/rows             # a user mapping (json) applied to local rows
    messages=path/to/chats               # rows with a "messages" list, rendered with the chat template
                                         # (messages.py; loss on the assistant turns only)

Before any of it, ``check_data_paths`` (``check.py``) resolves every entry once and reads every local
file once per node (its local rank 0): rows checked with file and line, and the bytes' fingerprint for
the cache key. ``validate_args`` returns that ``CheckedData`` and ``create_prompt_dataset`` takes it
(``checked_data=``), so the build reads nothing twice.

``sftlib.data`` exports what a user or a notebook calls (DeepSpeed-Chat's names first); the helpers
stay in their modules.

Explained in notebooks/01_dataset_abstraction.ipynb.
"""

from sftlib.data.build import create_prompt_dataset
from sftlib.data.cache import cache_problem, cache_size_bytes, wait_for_cache
from sftlib.data.check import CheckedData, check_data_paths
from sftlib.data.prompt_dataset import PromptDataset
from sftlib.data.raw import PromptRawDataset, get_raw_dataset
from sftlib.data.registry import (
    REGISTRY,
    DatasetSpec,
    ResolvedPath,
    load_spec_file,
    register_dataset,
    resolve_data_path,
)
from sftlib.data.sources import read_json_rows
from sftlib.data.splits import get_raw_dataset_split_index, get_shuffle_idx, split_indices
from sftlib.data.tokenize import tokenize_one_at_a_time

__all__ = [
    "create_prompt_dataset", "PromptDataset", "PromptRawDataset", "get_raw_dataset", "get_raw_dataset_split_index",
    "get_shuffle_idx", "split_indices",
    "check_data_paths", "CheckedData", "resolve_data_path", "ResolvedPath", "REGISTRY", "DatasetSpec",
    "register_dataset", "load_spec_file", "read_json_rows", "tokenize_one_at_a_time",
    "cache_problem", "wait_for_cache", "cache_size_bytes",
]
