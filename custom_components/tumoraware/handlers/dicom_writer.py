"""Write each predicted mask as DICOM SEG and RTSTRUCT beside the NIfTI, when the input was DICOM.

Attached to the segmentation bundle's inference evaluator, after its postprocessing (``Invertd``
puts the mask back on the input's grid; ``SaveImaged`` writes ``<case>_seg.nii.gz``), this
handler looks at where each case came from:

- a DICOM series folder (the datalist names a folder): ``formats`` are written against it;
- a NIfTI file with a reference series, given per case (the datalist item's
  ``reference_series`` key) or for the run (``reference_series``, one folder for a one-case
  run): the same, against that series;
- anything else: nothing is written, so NIfTI-only runs are unchanged.

A mask without tumour gets no DICOM output (a warning says so; an empty SEG or RTSTRUCT would
only clutter the PACS). Any other problem (the mask not on the series' grid, a series with two
frames of reference) raises, naming the case and the fix: a missing output should never pass
unnoticed. The mask is mapped onto the series through the two affines, so the axis order and
RAS/LPS flips MONAI's reader chose do not matter (:mod:`tumoraware.data.dicom.align`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.data.utils import create_file_basename

from tumoraware.data.dicom.align import mask_onto_series
from tumoraware.data.dicom.outputs import FORMATS, parse_formats, write_dicom_outputs
from tumoraware.data.dicom.source import load_source_series
from tumoraware.data.names import case_name
from tumoraware.handlers.cases import case_item, case_source, output_cases

__all__ = ["DicomOutputWriter"]

logger = logging.getLogger(__name__)


class DicomOutputWriter:
    """DICOM SEG / RTSTRUCT of every case whose input was a DICOM series (or names one).

    Args:
        output_dir: where the files go: the ``SaveImaged`` output folder, so they lie beside
            ``<case>_seg.nii.gz`` as ``<case>_seg.dcm`` and ``<case>_rtstruct.dcm``.
        formats: which outputs, ``seg`` and/or ``rtstruct`` (a list or comma-separated);
            empty writes nothing.
        model_name, model_version: the model named in the outputs (algorithm identification,
            SeriesDescription).
        reference_series: the series folder for NIfTI input in a one-case run; None: only cases
            that are DICOM or carry ``reference_key`` get outputs.
        reference_key: the datalist key naming a case's reference series folder.
        pred_key: the output key of the 0/1 mask, ``(1, X, Y, Z)`` or ``(X, Y, Z)`` with its
            affine (a MONAI ``MetaTensor``).
        image_key: the key whose ``filename_or_obj`` names the input, if ``pred`` has none.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        formats: str | Sequence[str] = FORMATS,
        model_name: str = "lung_mri_tumor_segmentation",
        model_version: str = "unknown",
        reference_series: str | os.PathLike | None = None,
        reference_key: str = "reference_series",
        pred_key: str = "pred",
        image_key: str = "image",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.formats = parse_formats(formats)
        self.model_name, self.model_version = model_name, str(model_version)
        self.reference_series = reference_series
        self.reference_key = reference_key
        self.pred_key, self.image_key = pred_key, image_key
        self.written: list[dict[str, Path]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.written.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for case in output_cases(engine.state.output):
            paths = self.write_case(case)
            if paths:
                self.written.append(paths)

    def _series_for(self, case: Mapping[str, Any], source: str) -> str | None:
        named = case.get(self.reference_key) or self.reference_series
        if named:
            return str(named)
        return source if source and Path(source).is_dir() else None

    def _case_stem(self, pred: Any, source: str) -> str:
        """The name SaveImaged gave the NIfTI (``saved_to`` when it recorded it; else its rule,
        which drops one dot-suffix: a UID-named series folder ``1.2.840.5`` gives ``1.2.840``)."""
        saved = (getattr(pred, "meta", None) or {}).get("saved_to")
        if saved:
            return case_name(saved)
        if not source:
            return "case"
        stem = create_file_basename("seg", source, self.output_dir, separate_folder=False,
                                    makedirs=False)  # fmt: skip
        return Path(stem).name

    def write_case(self, case: Mapping[str, Any]) -> dict[str, Path]:
        """Write one case's outputs; ``{format: path}``, empty when it gets none."""
        source = case_source(case, (self.pred_key, self.image_key))
        series = self._series_for(case, source) if self.formats else None
        if series is None:
            return {}
        pred = case_item(case, self.pred_key, "DicomOutputWriter")
        affine = getattr(pred, "affine", None)
        if affine is None:
            raise ValueError(
                f"DicomOutputWriter: {self.pred_key!r} of case {source or '?'} has no affine. "
                "Fix: keep it a MONAI MetaTensor (postprocessing with Invertd, as the bundle's "
                "inference does) so the mask can be placed on the DICOM series."
            )
        array = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        name = self._case_stem(pred, source)
        if not array.any():
            logger.warning("%s: no tumour found; no DICOM SEG/RTSTRUCT written.", source or name)
            return {}
        loaded = load_source_series(series)
        on_grid = mask_onto_series(array, np.asarray(affine, dtype=float),
                                   loaded, name=f"prediction for {source or name}")  # fmt: skip
        paths = write_dicom_outputs(on_grid, loaded, self.output_dir, name, self.formats,
                                    self.model_name, self.model_version,
                                    name=f"prediction for {source or name}")  # fmt: skip
        logger.info("%s: wrote %s", name, ", ".join(str(p) for p in paths.values()))
        return paths
