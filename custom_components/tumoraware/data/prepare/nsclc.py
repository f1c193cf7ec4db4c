"""NSCLC-Radiomics (TCIA) DICOM download → per-patient NIfTI pairs + our manifest.

The NBIA Data Retriever and ``idc-index`` lay a download out as patient / study / series folders
(``NSCLC-Radiomics/LUNG1-001/<study>/<series>/*.dcm``); the folder names vary, so this walks the
tree and groups files by their headers (PatientID, Modality, SeriesInstanceUID), never by names.
For each patient the RTSTRUCT that holds ``roi`` (GTV-1) is converted with the CT series it
references (:func:`~tumoraware.data.dicom.rtstruct_to_nifti`).

A batch of hundreds of patients must survive the odd broken one: each patient's problem is
logged and written to ``skipped.csv`` and the batch goes on; finished patients (image and label
on disk, written atomically) are skipped on a re-run, so an interrupted run resumes.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from tqdm.auto import tqdm

from tumoraware import __version__
from tumoraware.atomic import write_text_atomic
from tumoraware.data.dicom import DicomError, list_rois, rtstruct_to_nifti
from tumoraware.data.dicom.rtstruct import referenced_series_uid
from tumoraware.data.dicom.series import dcmread_lenient
from tumoraware.data.manifest import volume_problems

from ._common import PrepareError, write_manifest_checked

__all__ = ["PatientFiles", "prepare_nsclc", "scan_dicom_tree"]

logger = logging.getLogger(__name__)

_HEADER_TAGS = ["PatientID", "Modality", "SeriesInstanceUID", "SOPClassUID"]


@dataclass
class PatientFiles:
    """What one patient's download holds: image series folders and RTSTRUCT files."""

    patient: str
    series_folders: dict[str, Path] = field(default_factory=dict)  # SeriesInstanceUID → folder
    series_modality: dict[str, str] = field(default_factory=dict)
    rtstructs: list[Path] = field(default_factory=list)


def scan_dicom_tree(root: str | os.PathLike, progress: bool = True) -> dict[str, PatientFiles]:
    """Group every DICOM file under ``root`` by patient, reading only a few header tags."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder. Fix: pass the folder the NBIA/IDC client downloaded into."
        )
    patients: dict[str, PatientFiles] = {}
    series_files: dict[tuple[str, str], list[Path]] = defaultdict(list)
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    for path in tqdm(files, desc="scan DICOM headers", unit="file", disable=not progress):
        try:
            ds = dcmread_lenient(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError):
            continue
        patient = str(ds.get("PatientID", "")).strip() or path.parent.name
        entry = patients.setdefault(patient, PatientFiles(patient))
        modality = str(ds.get("Modality", ""))
        if modality == "RTSTRUCT":
            entry.rtstructs.append(path)
        elif "SeriesInstanceUID" in ds:
            uid = str(ds.SeriesInstanceUID)
            entry.series_modality[uid] = modality
            series_files[(patient, uid)].append(path)
    for (patient, uid), paths in series_files.items():
        folders = {p.parent for p in paths}
        common = Path(os.path.commonpath([str(f) for f in folders]))
        patients[patient].series_folders[uid] = common
    return patients


def _safe_name(patient: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", patient)


def _convert_patient(files: PatientFiles, out_dir: Path, roi: str, allow_gaps: bool) -> None:
    """Convert one patient; raise DicomError with the reason when it cannot be done."""
    if not files.rtstructs:
        raise DicomError(f"no RTSTRUCT in the download (series: {len(files.series_folders)})")
    reasons = []
    for rtstruct in sorted(files.rtstructs):
        names = list_rois(rtstruct)
        if roi.casefold() not in (n.strip().casefold() for n in names):
            reasons.append(f"{rtstruct.name}: no ROI {roi!r} (has {names})")
            continue
        uid = referenced_series_uid(rtstruct)
        folder = files.series_folders.get(uid) if uid else None
        if folder is None:
            ct = [u for u, m in files.series_modality.items() if m == "CT"]
            if uid is not None or len(ct) != 1:
                reasons.append(f"{rtstruct.name}: referenced series {uid} not downloaded")
                continue
            folder = files.series_folders[ct[0]]
        rtstruct_to_nifti(folder, rtstruct, roi, out_dir, allow_gaps=allow_gaps)
        return
    raise DicomError("; ".join(reasons))


def _check_converted(target: Path, patient: str, seen: dict[str, str]) -> None:
    """Raise ``PrepareError`` unless the converted pair in ``target`` passes the manifest's deep
    checks and its CT is not another patient's (``seen``: voxel digest -> patient, updated)."""
    problems, digest = volume_problems(
        target / "image.nii.gz", target / "label.nii.gz", "CT", where=patient, split="ct_train"
    )
    if problems:
        raise PrepareError("; ".join(str(p) for p in problems))
    if digest is not None and digest in seen:
        raise PrepareError(
            f"{target / 'image.nii.gz'}: the same CT voxels as patient {seen[digest]!r}'s; the "
            "download holds one scan under two patient ids. Fix: remove the duplicate patient "
            "from the download (or check its PatientID)."
        )
    if digest is not None:
        seen[digest] = patient


def _manifest(done: list[str]) -> dict:
    return {
        "name": "NSCLC-Radiomics",
        "description": (
            "CT of 422 NSCLC patients with expert GTV-1 contours (TCIA), converted by "
            "`tumoraware prepare nsclc`: CT in HU (int16), GTV-1 rasterised on the CT grid."
        ),
        "licence": "CC BY-NC 3.0 (TCIA NSCLC-Radiomics)",
        "reference": "Aerts et al., Nat Commun 2014; doi:10.7937/K9/TCIA.2015.PF0M9REI",
        "tensorImageSize": "3D",
        "labels": {"0": "background", "1": "tumor"},
        "base_dir": ".",
        "generator": {"tool": "tumoraware prepare nsclc", "version": __version__},
        "ct_train": [
            {
                "image": f"{_safe_name(p)}/image.nii.gz",
                "label": f"{_safe_name(p)}/label.nii.gz",
                "modality": "CT",
                "patient": p,
            }
            for p in done
        ],
    }


def prepare_nsclc(
    dicom_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    roi: str = "GTV-1",
    allow_gaps: bool = False,
    manifest_name: str = "nsclc_radiomics.json",
    progress: bool = True,
) -> Path:
    """Convert every patient under ``dicom_root``; write ``out_dir/<manifest_name>``.

    Also writes ``out_dir/skipped.csv`` (patient, reason) for the patients that could not be
    converted, or whose converted CT and mask fail the manifest's deep checks (not in HU, an
    empty mask, the same CT as another patient): they stay on disk but are not listed. Returns
    the manifest path. Raises only when nothing at all could be converted.
    """
    out_dir = Path(out_dir)
    patients = scan_dicom_tree(dicom_root, progress=progress)
    done, skipped = [], []
    seen: dict[str, str] = {}  # digest of a listed CT's voxels -> its patient
    bar = tqdm(sorted(patients), desc="convert patients", unit="patient", disable=not progress)
    for patient in bar:
        bar.set_postfix_str(patient)
        target = out_dir / _safe_name(patient)
        try:
            finished = (target / "image.nii.gz").exists() and (target / "label.nii.gz").exists()
            if not finished:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # kept in each patient's conversion.json
                    _convert_patient(patients[patient], target, roi, allow_gaps)
            _check_converted(target, patient, seen)
            done.append(patient)
        except (DicomError, OSError, ValueError) as error:
            logger.warning("%s: skipped: %s", patient, error)
            skipped.append((patient, str(error)))
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["patient", "reason"])
    writer.writerows(skipped)
    write_text_atomic(out_dir / "skipped.csv", rows.getvalue())
    if not done:
        raise DicomError(
            f"{dicom_root}: no patient could be converted ({len(skipped)} skipped; reasons in "
            f"{out_dir / 'skipped.csv'}). Fix: check the folder holds CT series with RTSTRUCTs."
        )
    manifest = out_dir / manifest_name
    # Every listed CT and mask passed volume_problems above and no two CTs share their voxels,
    # so the manifest-wide check need not read them all again.
    write_manifest_checked(manifest, _manifest(done), deep=False)
    logger.info("nsclc: %d patients converted, %d skipped (%s)", len(done), len(skipped), manifest)
    return manifest
