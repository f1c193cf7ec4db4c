"""Small glue the bundle configs call: what to log and how often, attaching handlers that need
the trainer, what a checkpoint holds and which one ``--resume True`` continues from."""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "attach_all",
    "checkpoint_objects",
    "checkpoint_problem",
    "contoured_mri",
    "every_n_iterations",
    "iteration_loss",
    "latest_checkpoint",
    "scalar_losses",
    "synthetic_if_present",
]

logger = logging.getLogger(__name__)

_EPOCH_CHECKPOINT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def scalar_losses(output: Mapping[str, Any] | list[Mapping[str, Any]]) -> dict[str, float]:
    """The named scalar losses of a :class:`CycleGANTrainer` iteration output (no images).

    Used as ``output_transform`` of StatsHandler / TensorBoardStatsHandler, which log every
    key of a returned dict. A decollated output (a list of per-sample dicts, MONAI's
    convention, in which the scalar losses are replicated) is read from its first item.
    A 0-dim tensor (a loss the trainer has not read back yet, ``log_every`` > 1) is read here:
    only the iterations a handler logs pay for that device sync.
    """
    if isinstance(output, list):
        output = output[0]
    return {
        k: float(v) for k, v in output.items() if _is_scalar(v) and k != "loss"
    }  # "loss" repeats loss_G under MONAI's conventional name


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or getattr(value, "ndim", None) == 0


def iteration_loss(output: Mapping[str, Any] | list[Mapping[str, Any]]) -> Any:
    """``output["loss"]`` of a trainer iteration, decollated (a list of per-sample dicts, the
    loss replicated in each) or not: the trainers decollate only when they log every iteration
    (decollating reads every scalar back from the device)."""
    return (output[0] if isinstance(output, list) else output)["loss"]


def every_n_iterations(n: int) -> bool | Callable[[Any, int], bool]:
    """``iteration_log`` of MONAI's Stats/TensorBoard handlers for logging every ``n``-th
    iteration: ``True`` for ``n <= 1`` (MONAI's plain every-iteration event, as before the
    option existed), else an ignite event filter on the iteration number."""
    n = int(n)
    if n <= 1:
        return True

    def every(_engine: Any, iteration: int) -> bool:
        return iteration % n == 0

    return every


def attach_all(handlers: list[Any], engine: Any) -> None:
    """Attach ``handlers`` that refer to ``engine`` itself (so cannot be built before it)."""
    for handler in handlers:
        handler.attach(engine)


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What makes ``path`` unusable as a checkpoint, or None when it reads completely.

    A checkpoint is PyTorch's zip format: it must open (a truncated file has no zip directory at
    its end) and every member must match its CRC (``zipfile.testzip``), which reads the whole
    file once but unpickles nothing. A file in another format is tried with
    ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.is_file():
        return "no such file"
    size = path.stat().st_size
    if size == 0:
        return "it is empty (0 bytes): a save was interrupted"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            return None if bad is None else f"its member {bad} is corrupt ({size} bytes)"
        import torch

        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to read is the answer, not an error here
        reason = f"{type(error).__name__}: {error}"
        return f"it is truncated or not a PyTorch checkpoint ({size} bytes; {reason})"
    return None


def latest_checkpoint(ckpt_dir: str | os.PathLike, final_name: str = "checkpoint_final.pt") -> str:
    """The full checkpoint to resume from: the newest *readable* one of ``final_name`` and the
    interval files ``checkpoint_epoch=N.pt`` in ``ckpt_dir``.

    A finished run leaves ``final_name``; an interrupted one (killed, out of time) leaves its
    last interval file, which is what it must continue from. The newest by modification time
    wins (a later, interrupted run beats an older finished one); ties go to the higher epoch.
    A file that does not read completely (:func:`checkpoint_problem`: empty, truncated, e.g. left
    by a save killed before the bundles wrote atomically) is skipped with a warning naming it, and
    the next newest is taken. If nothing is there, returns the ``final_name`` path; if nothing
    reads, the newest file: ``CheckpointLoader`` then fails naming that file and its problem.
    """
    folder = Path(ckpt_dir)
    candidates = [folder / final_name] if (folder / final_name).is_file() else []
    candidates += [
        f for f in folder.glob("checkpoint_epoch=*.pt") if _EPOCH_CHECKPOINT.search(f.name)
    ]
    if not candidates:
        return str(folder / final_name)

    def order(path: Path) -> tuple[float, int]:
        match = _EPOCH_CHECKPOINT.search(path.name)
        return path.stat().st_mtime, int(match.group(1)) if match else -1

    newest_first = sorted(candidates, key=order, reverse=True)
    for path in newest_first:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("resume: skipping %s, %s; trying the next newest checkpoint", path, problem)
    return str(newest_first[0])


def checkpoint_objects(
    objects: Mapping[str, Any], handlers: Sequence[Any] | None = None
) -> dict[str, Any]:
    """A ``CheckpointSaver`` / ``CheckpointLoader`` dict: ``objects`` (nested dicts allowed)
    without None entries, plus, under ``"handlers"``, those of ``handlers`` (e.g. the trainer's
    ``train#handlers``) that have ``state_dict``/``load_state_dict``, by snake-case class name.

    A disabled config component (``_disabled_``) is None and simply left out. An object without
    ``state_dict`` (a plain ``DataLoader`` where the config expects a ``ResumableDataLoader``) is
    left out with a warning: the run still checkpoints, but will not resume exactly.
    """
    from tumoraware.handlers.checkpoint import stateful_handlers

    def keep(items: Mapping[str, Any], where: str) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in items.items():
            if isinstance(value, Mapping):
                value = keep(value, f"{where}{key}.")
                if value:
                    kept[key] = value
            elif value is not None and callable(getattr(value, "state_dict", None)):
                kept[key] = value
            elif value is not None:
                logger.warning(
                    "checkpoint: %s%s (%s) has no state_dict and is not checkpointed; a resumed "
                    "run will not continue it exactly", where, key, type(value).__name__,
                )  # fmt: skip
        return kept

    kept = keep(objects, "")
    found = stateful_handlers(handlers)
    if found:
        kept["handlers"] = found
    return _grouped(kept)  # one object per key: ignite 0.4 (MONAI 1.5, MONAI Label) nests none


def _grouped(members: Mapping[str, Any]) -> dict[str, Any]:
    """``members`` with every nested mapping turned into a ``StateGroup``, at every depth."""
    from tumoraware.handlers.checkpoint import StateGroup

    return {key: StateGroup(_grouped(value)) if isinstance(value, Mapping) else value
            for key, value in members.items()}  # fmt: skip


def synthetic_if_present(
    manifest: str | os.PathLike,
    split: str,
    volume_transform: Callable,
    transform: Callable | None = None,
    track_meta: bool | None = None,
    cache_dir: str | None = None,
    cache_workers: int | None = None,
) -> list[Any]:
    """The synthetic-MRI slice dataset of ``manifest``/``split`` as a one-item list, or ``[]``
    (with a warning) when ``manifest`` does not exist.

    The default sources of the segmentation bundle's ``train.json``: semi-supervised when the
    synthesis bundle's synthetic MRI is there, the labelled MRI alone where it cannot be (MONAI
    Label trains the bundle on the labels in its datastore, through ``train#dataset#data``).
    The Table-1 variants list their sources explicitly and fail on a missing manifest.
    ``track_meta``, ``cache_dir`` and ``cache_workers`` are passed to :class:`SliceCacheDataset`.
    """
    from tumoraware.data.manifest import load_split
    from tumoraware.data.slice_dataset import SliceCacheDataset

    if not Path(manifest).is_file():
        logging.getLogger(__name__).warning(
            "no synthetic MRI at %s: training on the labelled MRI only (pass --synthetic_manifest "
            "or configs/variants/semi_supervised.json to require it)",
            manifest,
        )
        return []
    dataset = SliceCacheDataset(
        load_split(manifest, split),
        volume_transform,
        transform,
        track_meta=track_meta,
        cache_dir=cache_dir,
        cache_workers=cache_workers,
    )
    return [dataset]


def contoured_mri(manifest: str | os.PathLike, splits: list[str]) -> list[dict]:
    """The entries of ``splits`` of ``manifest``, every one with a tumour ``label``: the MRI that
    the synthesis bundle cuts around its tumours (``mri_tumour_regions``, paper §3.2).

    Raises:
        ValueError: a split is missing or empty, or an entry has no label; the message names
            the manifest, the split and the entry, and gives both fixes (other splits, or
            ``--mri_tumour_regions false`` to draw body squares from unlabelled MRI).
    """
    from tumoraware.data.manifest import ManifestError, load_split

    fix = (
        "pass --mri_region_splits with splits of contoured MRI, or --mri_tumour_regions false "
        "to train on random body squares of the unlabelled split (mri_split)"
    )
    entries: list[dict] = []
    for split in splits:
        try:
            found = load_split(manifest, split)
        except ManifestError as error:
            raise ValueError(f"{error}\nFor synthesis MRI tumour regions: {fix}.") from error
        if not found:
            raise ValueError(f'{manifest}: split "{split}" is empty; {fix}.')
        for entry in found:
            if not entry.get("label"):
                raise ValueError(
                    f'{manifest}: split "{split}" entry {entry.get("image")} has no tumour label '
                    f"to cut its region around; {fix}."
                )
        entries += found
    return entries
