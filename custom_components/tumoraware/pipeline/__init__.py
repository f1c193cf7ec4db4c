"""Run the bundles in order as a study (``tumoraware demo`` / ``reproduce``), resumably.

- :class:`BundleStage`, :func:`run_stage`: one ``python -m monai.bundle run`` of one bundle,
  skipped when its content hash is unchanged.
- :func:`study_stages`: the Table-1 study as stages (synthesis x 3, segmentation x 5 methods).
- :class:`~tumoraware.pipeline.layout.StudyLayout`: the study's folders and each stage's
  ``stage.json`` record (:mod:`tumoraware.pipeline.layout` alone knows their names).
- :func:`~tumoraware.pipeline.schedule.run_stages`: runs stages several at a time, each once
  the stages it consumes are done; a killed training resumes from its checkpoints.
- :class:`~tumoraware.pipeline.lock.FolderLock`: one live process per stage folder.
- :func:`run_study`: runs them all and writes the report (``report.md``, ``report.json``,
  ``table1.csv``).
"""

from tumoraware.pipeline.layout import StageAddress, StageRecord, StudyLayout
from tumoraware.pipeline.run import run_study
from tumoraware.pipeline.stage import BundleStage, StageResult, run_stage
from tumoraware.pipeline.study import METHODS, study_stages

__all__ = [
    "METHODS",
    "BundleStage",
    "StageAddress",
    "StageRecord",
    "StageResult",
    "StudyLayout",
    "run_stage",
    "run_study",
    "study_stages",
]
