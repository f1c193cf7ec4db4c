"""What one scan of the phantom world is: patient, cohort, week, tumour site, and its files.

Its own module so that both the generator (:mod:`.world`) and the previews (:mod:`.preview`)
read plans without importing each other: the world imports the previews, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CT_COHORTS", "ScanPlan"]

CT_COHORTS = ("ct", "ct_test")
_FOLDERS = {"ct": "ct", "mri": "mri", "mri_test": "mri_test", "ct_test": "ct_test"}


@dataclass(frozen=True)
class ScanPlan:
    """One volume to generate: which patient, which cohort, which week and tumour site."""

    patient: str
    cohort: str  # "ct", "ct_test" (held-out CT), "mri" (training MRI patients) or "mri_test"
    index: int
    week: int
    site: str

    @property
    def stem(self) -> str:
        return self.patient if self.cohort in CT_COHORTS else f"{self.patient}_w{self.week}"

    def paths(self, out_dir: Path) -> tuple[Path, Path]:
        folder = out_dir / _FOLDERS[self.cohort]
        return folder / f"{self.stem}_image.nii.gz", folder / f"{self.stem}_label.nii.gz"
