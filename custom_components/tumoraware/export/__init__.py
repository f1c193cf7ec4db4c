"""Model Zoo export: a bundle + trained weights -> a self-contained bundle and its checks.

- :func:`export_bundle` (``tumoraware export_zoo``; :func:`study_model` finds a study's weights
  for it): ``dist/NAME/`` + ``dist/NAME.zip`` with the
  ``tumoraware`` code the configs use vendored into ``scripts/`` (:mod:`.vendor`), weights,
  TorchScript (and ONNX), Model Zoo docs (:mod:`.zoo_docs`), ``large_files.yml`` and a
  deterministic zip (:mod:`.archive`).
- :func:`verify_bundle` (``tumoraware verify_zoo``): the Model Zoo CI checks plus a training
  iteration and an inference run in a subprocess where ``tumoraware`` cannot be imported
  (:mod:`.verify`, :mod:`.isolated`).
"""

from tumoraware.export.export import (
    ExportError,
    ExportResult,
    StudyModel,
    export_bundle,
    main_summary,
    study_model,
)
from tumoraware.export.verify import CheckResult, format_results, verify_bundle

__all__ = [
    "CheckResult",
    "ExportError",
    "ExportResult",
    "StudyModel",
    "export_bundle",
    "format_results",
    "main_summary",
    "study_model",
    "verify_bundle",
]
