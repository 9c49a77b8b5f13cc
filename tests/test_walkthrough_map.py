"""The walkthrough's contents (its sections 0x0-0x5, REFERENCE.md section 9) map to executed, asserting cells.

Every item below must be named by a ``# walkthrough: <item>`` marker in a code cell of a notebook, that
cell must contain an ``assert`` (so running the notebook checks it), and README.zh-CN.md must list the
item with the same notebook, so the map the reader sees is the map the notebooks carry.
"""

import json
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT as _ROOT

ROOT = Path(_ROOT)

ITEMS = [
    "0x0 three-steps",  # SFT is step 1 of three
    "0x1 training-scripts",  # single GPU / single node / multi-node scripts, run_1.3b.sh
    "0x1 evaluation-scripts",  # run_prompt.sh, baseline vs finetune
    "0x1 models-and-data",  # OPT family, the English sets, blending, Human:/Assistant: format
    "0x1 example-generations",  # generations of the base and SFT models
    "0x1 argument-table",  # the README's argument table and its notes
    "0x1 checkpointing-lora-only-lora",  # "cannot be combined" (2023)
    "0x1 largest-model-gb-per-3",  # ZeRO-3 + checkpointing + LoRA: total GPU GB / 3
    "0x1 other-notes",  # Chinese and Japanese examples (other_language)
    "0x2 prompt_eval",
    "0x3.1 create_prompt_dataset",
    "0x3.1 print_rank_0",
    "0x3.1 to_device",
    "0x3.1 save_hf_format",
    "0x3.1 set_random_seed",
    "0x3.1 get_all_reduce_mean",
    "0x3.1 get_optimizer_grouped_parameters",
    "0x3.1 save_zero_three_model",
    "0x3.1 load_hf_tokenizer",
    "0x3.1 convert_linear_layer_to_lora",
    "0x3.1 convert_lora_to_linear_layer",
    "0x3.1 only_optimize_lora_parameters",
    "0x3.1 create_hf_model",
    "0x3.2 parse_args",
    "0x3.2 main",
    "0x4 hybrid-engine",
    "0x4 log",
    "0x5 summary",
]
MARKER = re.compile(r"^# walkthrough: (\S+ \S+)$", re.M)


def leading_comments(source: str) -> str:
    """The comment lines a code cell opens with (where its walkthrough markers belong)."""
    lines = []
    for line in source.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def marked_cells():
    """{item: [(notebook, cell index, source)]} over every code cell carrying the item's marker."""
    found = {}
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] == "code":
                for item in MARKER.findall(source):
                    assert item in MARKER.findall(leading_comments(source)), (
                        f"{path.name} cell {i}: '# walkthrough: {item}' must be among the cell's opening comment lines")
                    found.setdefault(item, []).append((path.stem, i, source))
    return found


@pytest.mark.parametrize("item", ITEMS)
def test_every_walkthrough_item_has_an_asserting_cell(item):
    cells = marked_cells().get(item, [])
    assert cells, f"no code cell is marked '# walkthrough: {item}'"
    assert any(re.search(r"^\s*assert ", src, re.M) for _, _, src in cells), f"{item}: its cells assert nothing"


def test_no_marker_names_an_unknown_item():
    assert set(marked_cells()) <= set(ITEMS), set(marked_cells()) - set(ITEMS)


@pytest.mark.parametrize("readme", ["README.md", "README.zh-CN.md"])
def test_both_readmes_list_the_same_map(readme):
    text = (ROOT / readme).read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(0x[^`]+)` \| ([^|]+?) \|", text, re.M))
    for item, cells in marked_cells().items():
        assert item in rows, f"{readme} does not list {item}"
        named = set(re.findall(r"0\d_[a-z0-9_]+", rows[item]))
        assert named == {nb for nb, _, _ in cells}, f"{readme}: {item} names {named}, its cells are in " + \
            str(sorted({nb for nb, _, _ in cells}))
    assert set(rows) == set(ITEMS), f"{readme} lists items that are not walkthrough items: {set(rows) - set(ITEMS)}"


def test_every_glossary_link_of_the_notebooks_has_its_anchor():
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', (ROOT / "docs" / "glossary.md").read_text(encoding="utf-8")))
    links = {a for path in (ROOT / "notebooks").glob("0*.ipynb")
             for a in re.findall(r"\.\./docs/glossary\.md#([a-z0-9-]+)", path.read_text(encoding="utf-8"))}
    assert links and links <= anchors, links - anchors
    assert {"zero", "rank", "gloo-nccl", "barrier", "perplexity", "arrow", "hysteresis", "reentrant", "sdpa",
            "lora"} <= links
