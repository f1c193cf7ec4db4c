"""``tumoraware prepare msd``: a manifest for the Medical Segmentation Decathlon's Task06_Lung.

Task06_Lung is already NIfTI in Hounsfield units, so nothing is converted: the manifest lists
the files where they are. Expected layout (as extracted from ``Task06_Lung.tar``)::

    Task06_Lung/
      dataset.json                "training": [{"image": "./imagesTr/lung_001.nii.gz",
                                                "label": "./labelsTr/lung_001.nii.gz"}, ...],
                                  "test": ["./imagesTs/lung_002.nii.gz", ...]
      imagesTr/lung_001.nii.gz    labelsTr/lung_001.nii.gz    -> split ct_train (image + label)
      imagesTs/lung_002.nii.gz                                -> split test (image only)

``dataset.json`` decides what is listed. macOS ``._lung_*.nii.gz`` files (resource forks some
copies of the archive carry) are never listed; an image on disk that ``dataset.json`` does not
list is reported and left out.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from tumoraware import __version__
from tumoraware.data.names import case_name

from ._common import (
    MissingInputError,
    PrepareError,
    base_dir_for,
    relative_posix,
    write_manifest_checked,
)

__all__ = ["MSD_LICENCE", "MSD_REFERENCE", "prepare_msd"]

logger = logging.getLogger(__name__)

MSD_LICENCE = "CC-BY-SA 4.0"
"""Licence of the Decathlon data (written when ``dataset.json`` names none)."""

MSD_REFERENCE = (
    "Antonelli M, Simpson AL et al. The Medical Segmentation Decathlon. Nat Commun 13, 4128 "
    "(2022), https://doi.org/10.1038/s41467-022-30695-9; Simpson AL et al. A large annotated "
    "medical image dataset for the development and evaluation of segmentation algorithms, "
    "arXiv:1902.09063 (2019)"
)

_LAYOUT = (
    "the extracted Task06_Lung folder (dataset.json, imagesTr/, labelsTr/, imagesTs/; "
    "download Task06_Lung.tar from http://medicaldecathlon.com and run "
    "`tar -xf Task06_Lung.tar`)"
)
_NIFTI = (".nii", ".nii.gz")


def _is_junk(name: str) -> bool:
    """macOS resource forks (``._lung_001.nii.gz``) and other hidden files."""
    return name.startswith(".")


def _read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        raise MissingInputError(
            f"{path}: not found. Fix: pass {_LAYOUT} as ROOT; if only dataset.json is missing, "
            "re-extract Task06_Lung.tar."
        )
    try:
        dataset = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PrepareError(
            f"{path}: invalid JSON at line {e.lineno}:{e.colno}: {e.msg}. Fix: re-extract "
            "Task06_Lung.tar (the archive's dataset.json is valid JSON)."
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"{path}: cannot read it ({e}). Fix: re-extract Task06_Lung.tar.") from e
    if not isinstance(dataset, dict) or not isinstance(dataset.get("training"), list):
        raise PrepareError(
            f'{path}: expected a JSON object with a "training" list of '
            '{"image": ..., "label": ...} entries (the Decathlon format). Fix: pass the folder '
            "of Task06_Lung (its own dataset.json), or re-extract Task06_Lung.tar."
        )
    modality = dataset.get("modality", {"0": "CT"})
    if not isinstance(modality, dict) or list(modality.values()) != ["CT"]:
        raise PrepareError(
            f'{path}: "modality" is {json.dumps(modality)}; Task06_Lung is single-channel CT '
            '({"0": "CT"}). Fix: pass the Task06_Lung folder, not another Decathlon task.'
        )
    labels = dataset.get("labels", {"0": "background", "1": "tumor"})
    if not isinstance(labels, dict) or sorted(labels) != ["0", "1"]:
        raise PrepareError(
            f'{path}: "labels" is {json.dumps(labels)}; Task06_Lung has one tumour class '
            '({"0": "background", "1": "cancer"}). Fix: pass the Task06_Lung folder, not another '
            "Decathlon task."
        )
    return dataset


def _listed_path(root: Path, value: Any, where: str, dataset_json: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise PrepareError(
            f"{dataset_json}: {where} is {json.dumps(value)}; expected a path such as "
            '"./imagesTr/lung_001.nii.gz". Fix: re-extract Task06_Lung.tar.'
        )
    return Path(os.path.normpath(root / value))


def _cases(root: Path, dataset: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """``(training, test)`` as lists of ``{"image": Path, ["label": Path]}``; junk skipped."""
    dataset_json = root / "dataset.json"
    training, test = [], []
    for i, item in enumerate(dataset["training"]):
        if not isinstance(item, dict):
            item = {"image": item}  # reported below as a missing "label"
        case = {
            key: _listed_path(root, item.get(key), f"training[{i}].{key}", dataset_json)
            for key in ("image", "label")
        }
        if not _is_junk(case["image"].name):
            training.append(case)
    for i, item in enumerate(dataset.get("test", [])):
        value = item.get("image") if isinstance(item, dict) else item
        case = {"image": _listed_path(root, value, f"test[{i}]", dataset_json)}
        if not _is_junk(case["image"].name):
            test.append(case)
    return training, test


def _warn_unlisted(root: Path, cases: list[dict]) -> None:
    """Report NIfTI images on disk that ``dataset.json`` does not list (they are left out)."""
    listed = {c["image"] for c in cases}
    for folder in ("imagesTr", "imagesTs"):
        if not (root / folder).is_dir():
            continue
        unlisted = sorted(
            f.name
            for f in (root / folder).iterdir()
            if f.name.endswith(_NIFTI) and not _is_junk(f.name) and Path(f) not in listed
        )
        if unlisted:
            logger.warning(
                "prepare msd: %d image(s) in %s are not listed in dataset.json and are left out: "
                "%s",
                len(unlisted),
                root / folder,
                ", ".join(unlisted[:10]) + (" ..." if len(unlisted) > 10 else ""),
            )


def _drop_missing(cases: list[dict], skip_missing: bool, root: Path) -> tuple[list[dict], list]:
    missing = [path for case in cases for path in case.values() if not path.is_file()]
    if missing and not skip_missing:
        shown = "\n".join(f"  - {p}" for p in missing[:50])
        more = f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else ""
        raise MissingInputError(
            f"{root / 'dataset.json'} lists {len(missing)} file(s) that do not exist:\n"
            f"{shown}{more}\nFix: re-extract Task06_Lung.tar into {root} "
            "(`tar -xf Task06_Lung.tar`), or pass skip_missing=True (--skip_missing) to leave "
            "those cases out."
        )
    if missing:
        logger.warning(
            "prepare msd: leaving out %d case(s) whose files are missing: %s",
            len(missing),
            ", ".join(str(p) for p in missing),
        )
    gone = set(missing)
    return [c for c in cases if not gone & set(c.values())], missing


def prepare_msd(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    manifest_name: str = "msd_task06_lung.json",
    skip_missing: bool = False,
) -> Path:
    """Write a manifest for an extracted Task06_Lung folder; the data stays where it is.

    Splits: ``ct_train`` (``imagesTr`` + ``labelsTr``, modality CT, ``patient`` = the file's
    stem, e.g. ``"lung_001"``) and ``test`` (``imagesTs``, image only; omitted when empty).
    Paths are relative to ``out_dir``; ``base_dir`` is the common folder of ``out_dir`` and
    ``root``. The manifest passes :func:`tumoraware.data.manifest.validate_manifest` with
    ``deep=True`` (every volume read) before it is written; otherwise nothing is written.

    Args:
        root: the extracted ``Task06_Lung`` folder (holds ``dataset.json``).
        out_dir: folder for the manifest, e.g. ``data_manifests``.
        manifest_name: file name of the manifest inside ``out_dir``.
        skip_missing: leave out (with a warning) cases whose files ``dataset.json`` lists but
            that do not exist, instead of failing.

    Raises:
        MissingInputError: ``root`` or ``dataset.json`` does not exist, or listed files are
            missing (all named at once) and ``skip_missing`` is False.
        PrepareError: ``dataset.json`` is not valid JSON, not in the Decathlon format, or is
            another task's (not single-channel CT with one tumour class); no training case left;
            a listed volume fails the deep checks (each problem names its file and fix).

    Returns:
        the path of the manifest written.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise MissingInputError(f"{root}: no such folder. Fix: pass {_LAYOUT} as ROOT.")
    dataset = _read_dataset_json(root)
    training, test = _cases(root, dataset)
    _warn_unlisted(root, training + test)
    training, missing_training = _drop_missing(training, skip_missing, root)
    test, missing_test = _drop_missing(test, skip_missing, root)
    if not training:
        raise PrepareError(
            f'{root / "dataset.json"}: no training case is left (the "training" list is empty '
            "or every listed file is missing), and a labelled split needs at least one. "
            f"Fix: re-extract Task06_Lung.tar into {root}."
        )

    manifest_path = out_dir / manifest_name
    manifest_dir = manifest_path.parent

    def entry(case: dict, labelled: bool) -> dict[str, Any]:
        item = {"image": relative_posix(case["image"], manifest_dir)}
        if labelled:
            item["label"] = relative_posix(case["label"], manifest_dir)
        item.update(modality="CT", patient=case_name(case["image"]))
        if labelled:
            item["tumour_site"] = "lung"
        return item

    files = [root] + [path for case in training + test for path in case.values()]
    source = dataset.get("description")
    generator: dict[str, Any] = {"tool": "tumoraware prepare msd", "version": __version__}
    if missing_training or missing_test:
        generator["left_out_missing"] = [relative_posix(p, root) for p in missing_training]
        generator["left_out_missing"] += [relative_posix(p, root) for p in missing_test]
    manifest: dict[str, Any] = {
        "name": "MSD Task06_Lung",
        "description": (
            "Task06_Lung of the Medical Segmentation Decathlon"
            + (f" ({source})" if isinstance(source, str) and source else "")
            + ": thin-section CT of non-small cell lung cancer with tumour masks, NIfTI in "
            "Hounsfield units, listed in place. Prepared by `tumoraware prepare msd`: "
            "imagesTr/labelsTr form ct_train; imagesTs (no labels) forms test."
        ),
        "licence": str(dataset.get("licence") or MSD_LICENCE),
        "reference": MSD_REFERENCE,
        "tensorImageSize": "3D",
        "labels": {"0": "background", "1": "tumor"},
        "base_dir": base_dir_for(manifest_dir, [manifest_dir, *files]),
        "generator": generator,
        "ct_train": [entry(case, labelled=True) for case in training],
    }
    if test:
        manifest["test"] = [entry(case, labelled=False) for case in test]
    write_manifest_checked(manifest_path, manifest)
    logger.info(
        "prepare msd: %d training and %d test case(s) from %s; manifest %s",
        len(training),
        len(test),
        root,
        manifest_path,
    )
    return manifest_path
