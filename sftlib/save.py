"""Every save sftlib makes, in one module: model folders written atomically, and resumable checkpoints.

- ``write_hf_folder``: a Hugging Face folder (safetensors, config, tokenizer) written into a hidden
  temporary folder and swapped into place, with ``sftlib_save.json`` listing every file. A crash
  leaves the previous save or nothing; ``remove_stale_temporaries`` cleans up after a killed saver.
- ``save_hf_format`` (DeepSpeed-Chat's name) and ``save_on_rank_0``: a whole model, rank 0 writes;
  ``sftlib.zero.save_zero_three_model`` gathers a ZeRO-3 model and writes with ``write_hf_folder``.
- ``save_final``: the end of training, through one of those savers, ``training_history.json`` inside
  the same swap; ``rescue_dir`` is where the weights go when that save fails.
- ``save_checkpoint``: DeepSpeed's checkpoint plus what an exact resume needs, its marker written last
  by the rank that writes for its folder (shared, or node-local: ``checkpoints_are_node_local``).
- ``check_output_dir`` / ``check_writable``: refuse, before any training, a folder a save must not replace.

Explained in notebooks/04_zero3_saving.ipynb.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from sftlib import rng
from sftlib.checkpoint import MARKER, completed_tags
from sftlib.constants import is_lora_name
from sftlib.dist import all_ranks, unwrap
from sftlib.errors import SFTError

SAVE_MARKER = "sftlib_save.json"  # written into every folder sftlib saves, listing its files
HISTORY = "training_history.json"  # the run's History, beside the final model
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
SAVE_FILES = re.compile(r"^(config\.json|generation_config\.json|model.*\.safetensors(\.index\.json)?|"
                        r"pytorch_model.*\.bin(\.index\.json)?|tokenizer.*|special_tokens_map\.json|vocab\..*|"
                        r"merges\.txt|added_tokens\.json|chat_template\.jinja|" + re.escape(HISTORY) + "|"
                        + re.escape(SAVE_MARKER) + r")$")

# --------------------------------------------------------------------------------------------
# Output folders: what a save may replace
# --------------------------------------------------------------------------------------------


def is_previous_save(path) -> bool:
    """True for a folder sftlib saved before, or any HF model folder (config.json plus weights)."""
    path = Path(path)
    return (path / SAVE_MARKER).is_file() or (
        (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHT_FILES))


def check_output_dir(path, allow=()) -> None:
    """Refuse to replace a non-empty folder that is not a previous save (an HF model folder).

    ``allow``: names inside the folder that the caller's own run writes (its TensorBoard logs, its
    checkpoints); they are tolerated and never touched."""
    path = Path(path)
    if path.is_file():
        raise SFTError(f"output dir {path} is a file; pass a folder")
    if path.is_dir() and not is_previous_save(path):
        other = sorted(p.name for p in path.iterdir() if p.name not in set(allow) and not p.name.startswith(".sftlib-"))
        if other:
            raise SFTError(f"output dir {path} is not empty and is not a previous save (it holds {other[0]}); "
                           "choose an empty or new folder")


def check_writable(path, allow=()) -> None:
    """Fail early, before any training, when ``path`` cannot be created or written."""
    path = Path(path).absolute()
    check_output_dir(path, allow)
    parent = path
    while not parent.exists():
        parent = parent.parent
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise SFTError(f"output dir {path} cannot be written ({err.strerror} at {parent})") from None


def rescue_dir(out_dir) -> Path:
    """Where a failed final save puts the weights instead: ``<name>.rescued-<time>`` in the nearest
    existing folder above ``out_dir`` (the system's temporary folder if that one cannot be written)."""
    out_dir = Path(out_dir).absolute()
    parent = out_dir.parent
    while not parent.is_dir():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        parent = Path(tempfile.gettempdir())
    return parent / f"{out_dir.name}.rescued-{time.strftime('%Y%m%d-%H%M%S')}"


# --------------------------------------------------------------------------------------------
# An HF folder, atomically
# --------------------------------------------------------------------------------------------


def _only_a_save(path: Path) -> bool:
    """True when every entry of ``path`` is a file a model save writes (the whole folder may be swapped)."""
    return all(p.is_file() and SAVE_FILES.match(p.name) for p in path.iterdir())


def write_hf_folder(model, state_dict: dict, tokenizer, out_dir, allow=()) -> None:
    """Write ``state_dict`` as safetensors, the config and the whole tokenizer, atomically.

    Everything goes into a hidden temporary folder first; ``tokenizer`` is anything with
    ``save_pretrained(folder)`` (``WithFiles`` adds files beside it), written after the weights. A
    new folder, or one holding only a previous save, is then swapped in whole: a crash leaves the
    previous save (or nothing), never a half-written folder, and a failed swap puts the previous save
    back. A folder that also holds ``allow`` entries (this run's logs or checkpoints) is never moved:
    the files are renamed into it one by one, the previous save's own files it no longer writes are
    removed, and nothing else is touched."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, allow)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    in_place = out_dir.is_dir() and not _only_a_save(out_dir)
    tmp = out_dir / f".sftlib-save-{os.getpid()}" if in_place else out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / SAVE_MARKER).write_text(json.dumps({"format": "hf", "tensors": len(state_dict),
                                                   "tokenizer": tokenizer is not None, "files": files}))
        if in_place:
            _move_files_in(tmp, out_dir, files)
        else:
            _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` (absent, or a previous save) by ``tmp`` in two renames; a failure puts it back."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    had_old = out_dir.exists()
    if had_old:
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if had_old:
            os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _move_files_in(tmp: Path, out_dir: Path, files: list[str]) -> None:
    """Rename each new file into ``out_dir``, drop the previous save's files not written again, marker last."""
    try:
        previous = json.loads((out_dir / SAVE_MARKER).read_text()).get("files", [])
    except (OSError, json.JSONDecodeError):
        previous = []
    (out_dir / SAVE_MARKER).unlink(missing_ok=True)
    for name in files:
        os.replace(tmp / name, out_dir / name)
    for name in set(previous) - set(files):
        if SAVE_FILES.match(name) and (out_dir / name).is_file():
            (out_dir / name).unlink()
    os.replace(tmp / SAVE_MARKER, out_dir / SAVE_MARKER)


class WithFiles:
    """A tokenizer (or None) and small text files to write beside it, as one ``save_pretrained``:
    handed to a saver as its ``tokenizer``, the files land in the temporary folder, so they are
    swapped in with the weights and listed in the save marker."""

    def __init__(self, tokenizer, files: dict[str, str]):
        self.tokenizer, self.files = tokenizer, files

    def save_pretrained(self, folder) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        for name, text in self.files.items():
            (Path(folder) / name).write_text(text)


def remove_stale_temporaries(save_dir) -> list[str]:
    """Delete hidden ``.NAME.tmp-PID`` / ``.NAME.old-PID`` siblings left by a saver that was killed.

    A killed save never touches ``save_dir`` itself, but its temporary folder stays behind; the next
    save removes those whose process is gone."""
    save_dir = Path(save_dir)
    removed = []
    for tmp in save_dir.parent.glob(f".{save_dir.name}.*-*"):
        kind, _, pid = tmp.name[len(save_dir.name) + 2:].rpartition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# Whole models: DeepSpeed-Chat's save_hf_format, and the end of training
# --------------------------------------------------------------------------------------------


def save_hf_format(model, tokenizer, args, sub_folder: str = "", allow=()) -> None:
    """Rank 0's save of a non-ZeRO-3 model into ``args.output_dir/sub_folder``, loadable by HF.

    Unwraps the DeepSpeed engine, drops LoRA keys (fuse them first with
    ``convert_lora_to_linear_layer``: an unfused LoRA layer is an error, not silently lost
    training), then writes safetensors, ``config.json``, the generation config and the whole
    tokenizer atomically."""
    if getattr(args, "output_dir", None) is None:
        raise SFTError("save_hf_format needs args.output_dir (pass --output_dir)")
    model_to_save = unwrap(model)
    unfused = [n for n, m in model_to_save.named_modules() if getattr(m, "fuse_lora", True) is False]
    if unfused:
        raise SFTError(f"LoRA layers are not fused (e.g. {unfused[0]}); call "
                       "sftlib.lora.convert_lora_to_linear_layer(model) before saving")
    state_dict = {k: v for k, v in model_to_save.state_dict().items() if not is_lora_name(k)}
    write_hf_folder(model_to_save, state_dict, tokenizer, os.path.join(args.output_dir, sub_folder), allow)


def save_on_rank_0(model, global_rank: int, save_dir, zero_stage: int = 0, tokenizer=None, allow=()) -> None:
    """A model every rank holds whole (ZeRO 0-2): rank 0 writes it with ``save_hf_format``, the others
    return at once; ``save_zero_three_model``'s signature, so either is a ``save_final`` saver."""
    if global_rank == 0:
        save_hf_format(model, tokenizer, SimpleNamespace(output_dir=str(save_dir)), allow=allow)


def save_final(model, tokenizer, history: dict, folder, saver, allow=()) -> str | None:
    """Every rank calls this at the end of training; returns why the save failed, or None.

    ``saver`` (``save_on_rank_0``, ``sftlib.zero.save_zero_three_model`` or one with their signature)
    writes the model, with ``training_history.json`` inside the same atomic swap. No rank returns
    before the folder is complete; whatever stops the save is returned, so the caller can still put
    the weights somewhere (``rescue_dir``)."""
    rank = dist.get_rank()
    beside = WithFiles(tokenizer, {HISTORY: json.dumps(history, indent=1)})
    try:
        saver(model, rank, str(folder), tokenizer=beside, allow=allow)
    except Exception as err:  # whatever stops the save, the weights must still reach a disk
        return str(err) if isinstance(err, SFTError) else f"{type(err).__name__}: {err}"
    finally:
        dist.barrier()
    return None


# --------------------------------------------------------------------------------------------
# Resumable checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint(engine, ckpt_dir, position: dict, history: dict, meta: dict, save_total_limit: int | None) -> str:
    """Every rank calls this at an optimizer-step boundary; returns the tag written.

    DeepSpeed's checkpoint (weights, optimizer, scheduler, per ZeRO partition) and each rank's RNG
    states; once every rank is done, the marker ``sftlib_checkpoint.json`` (position, history, what a
    resume must match) and the pruning to ``save_total_limit``, by the rank that writes for this
    rank's copy of the folder: global rank 0 on a shared disk, each node's local rank 0 when the
    engine keeps node-local checkpoints (``checkpoints_are_node_local``)."""
    tag = f"global_step{engine.global_steps}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"sftlib_position": position})
    torch.save(rng.rng_state(), Path(ckpt_dir) / tag / f"rng_state_rank{dist.get_rank()}.pt")
    dist.barrier()
    writer = engine.local_rank == 0 if engine.use_node_local_storage() else dist.get_rank() == 0
    if writer:
        marker = Path(ckpt_dir) / tag / MARKER
        marker.with_suffix(".tmp").write_text(json.dumps({**meta, **position, "history": history}))
        os.replace(marker.with_suffix(".tmp"), marker)  # a marker is whole or absent
        if save_total_limit:
            for old in completed_tags(ckpt_dir)[:-save_total_limit]:
                shutil.rmtree(Path(ckpt_dir) / old, ignore_errors=True)
    dist.barrier()
    return tag


def checkpoints_are_node_local(ckpt_dir, local_rank: int) -> bool:
    """Does each node have its own copy of ``ckpt_dir`` (its own disk), rather than one all ranks share?

    Every rank calls this before training. Each drops a probe file into the folder and looks for the
    others': one copy for all ranks is False; one per node (ranks sharing a copy exactly when they
    share a node's local rank 0, which writes its node's marker) is True; anything else, or a folder
    a rank cannot write, is refused with an ``SFTError`` (the same on every rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return False
    folder, world = Path(ckpt_dir), dist.get_world_size()
    token, rank = all_ranks(f"{os.getpid()}-{time.time_ns()}")[0], dist.get_rank()
    probe, problem = folder / f".sftlib-probe-{token}-rank{rank}", None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
    except OSError as err:
        problem = f"{err.strerror} on rank {rank}"
    dist.barrier()
    seen = [r for r in range(world) if (folder / f".sftlib-probe-{token}-rank{r}").exists()]
    dist.barrier()
    probe.unlink(missing_ok=True)
    return storage_layout(all_ranks((local_rank, seen, problem)), folder)


def storage_layout(views: list[tuple], folder) -> bool:
    """``checkpoints_are_node_local``'s decision from every rank's ``(local rank, ranks whose probe it
    saw, problem or None)``: False for one shared copy, True for one copy per node, else SFTError."""
    problem = next((p for _, _, p in views if p), None)
    if problem:
        raise SFTError(f"checkpoint folder {folder} cannot be written ({problem}); pass a --checkpoint_dir "
                       "every rank can write")
    world = len(views)
    if all(len(seen) == world for _, seen, _ in views):
        return False
    for rank, (_, seen, _) in enumerate(views):
        partition = rank in seen and all(views[other][1] == seen for other in seen)
        writers = [other for other in seen if views[other][0] == 0]
        if not partition or len(writers) != 1:
            raise SFTError(f"checkpoint folder {folder}: rank {rank} shares its copy with ranks {seen}, which is "
                           "neither one folder for all ranks nor one per node; put it on a disk every node mounts, "
                           "or on each node's own disk")
    return True
