"""Tissue classes of the phantom thorax: one integer per voxel before any imaging physics.

The anatomy is rasterised into this label map once per grid; CT and MRI appearance are then
pure look-ups plus texture and noise, so both modalities agree on where every structure is.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["SOFT_TISSUE_NEAR_TUMOUR", "TUMOUR_TISSUES", "Tissue"]


class Tissue(IntEnum):
    """Tissue labels (uint8). Order is painting order only where the code says so."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    LUNG = 3
    LUNG_VESSEL = 4
    HEART_BLOOD = 5
    MYOCARDIUM = 6
    GREAT_VESSEL = 7  # aorta and pulmonary arteries (contrast-filled on CT, flow void on T2)
    MEDIASTINAL_FAT = 8
    HILAR_SOFT_TISSUE = 9  # hilar lymph nodes / connective tissue, airway walls
    CORTICAL_BONE = 10
    MARROW = 11
    CSF = 12
    DISC = 13
    AIRWAY = 14
    ESOPHAGUS = 15
    LIVER = 16
    ABDOMEN = 17
    PLEURAL_FLUID = 18
    ATELECTASIS = 19  # post-obstructive collapse / consolidation
    TUMOUR_MANTLE = 20  # node conglomerate or pleural thickening that hugs the tumour
    TUMOUR = 21
    NECROSIS = 22  # inside the tumour; part of the GTV
    CORD = 23


TUMOUR_TISSUES = (Tissue.TUMOUR, Tissue.NECROSIS)
"""Tissues inside the expert GTV contour."""

SOFT_TISSUE_NEAR_TUMOUR = (
    Tissue.MUSCLE,
    Tissue.HILAR_SOFT_TISSUE,
    Tissue.ATELECTASIS,
    Tissue.TUMOUR_MANTLE,
    Tissue.ESOPHAGUS,
)
"""Tissues that can border a tumour and are near iso-dense with it on CT (the paper's Fig. 1)."""
