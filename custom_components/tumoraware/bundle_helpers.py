"""Small glue the bundle configs call: what to log, and attaching handlers that need the trainer."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "attach_all",
    "contoured_mri",
    "latest_checkpoint",
    "scalar_losses",
    "synthetic_if_present",
]

_EPOCH_CHECKPOINT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def scalar_losses(output: Mapping[str, Any] | list[Mapping[str, Any]]) -> dict[str, float]:
    """The named scalar losses of a :class:`CycleGANTrainer` iteration output (no images).

    Used as ``output_transform`` of StatsHandler / TensorBoardStatsHandler, which log every
    key of a returned dict. A decollated output (a list of per-sample dicts, MONAI's
    convention, in which the scalar losses are replicated) is read from its first item.
    """
    if isinstance(output, list):
        output = output[0]
    return {
        k: float(v) for k, v in output.items() if isinstance(v, (int, float)) and k != "loss"
    }  # "loss" repeats loss_G under MONAI's conventional name


def attach_all(handlers: list[Any], engine: Any) -> None:
    """Attach ``handlers`` that refer to ``engine`` itself (so cannot be built before it)."""
    for handler in handlers:
        handler.attach(engine)


def latest_checkpoint(ckpt_dir: str | os.PathLike, final_name: str = "checkpoint_final.pt") -> str:
    """The full checkpoint to resume from: the newest of ``final_name`` and MONAI's
    ``CheckpointSaver`` interval files ``checkpoint_epoch=N.pt`` in ``ckpt_dir``.

    A finished run leaves ``final_name``; an interrupted one (killed, out of time) leaves only
    its last interval file, which is what it must continue from. The newest by modification
    time wins (a later, interrupted run beats an older finished one); ties go to the higher
    epoch. If nothing is there, returns the ``final_name`` path, so that MONAI's
    ``CheckpointLoader`` reports the missing file by name.
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

    return str(max(candidates, key=order))


def synthetic_if_present(
    manifest: str | os.PathLike,
    split: str,
    volume_transform: Callable,
    transform: Callable | None = None,
    track_meta: bool | None = None,
) -> list[Any]:
    """The synthetic-MRI slice dataset of ``manifest``/``split`` as a one-item list, or ``[]``
    (with a warning) when ``manifest`` does not exist.

    The default sources of the segmentation bundle's ``train.json``: semi-supervised when the
    synthesis bundle's synthetic MRI is there, the labelled MRI alone where it cannot be (MONAI
    Label trains the bundle on the labels in its datastore, through ``train#dataset#data``).
    The Table-1 variants list their sources explicitly and fail on a missing manifest.
    ``track_meta`` is passed to :class:`SliceCacheDataset`.
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
        load_split(manifest, split), volume_transform, transform, track_meta=track_meta
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
