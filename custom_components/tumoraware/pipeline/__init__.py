"""Run the bundles in order as a study (``tumoraware demo`` / ``reproduce``), resumably.

- :class:`BundleStage`: one ``python -m monai.bundle run`` of one bundle with its configs and
  overrides, skipped when its content hash is unchanged.
"""

from tumoraware.pipeline.stage import BundleStage, StageResult, run_stage

__all__ = ["BundleStage", "StageResult", "run_stage"]
