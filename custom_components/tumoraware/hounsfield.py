"""One rule for "is this CT in Hounsfield units?", shared by the manifest validator and CTWindowd.

Hand-written: neither MONAI nor nibabel checks units. The rule catches the conversion mistakes
that silently ruin training: already-normalised volumes, raw stored DICOM values
(RescaleSlope/RescaleIntercept not applied), overflowed types, and clipped or windowed CT.
"""

from __future__ import annotations

__all__ = ["HU_AIR_MAX", "HU_RANGE", "RAW_STORED_MAX", "diagnose_hu"]

HU_RANGE = (-3024.0, 4000.0)
"""Values a CT in HU may take. -3024 is the padding many scanners (GE, Siemens) write outside the
reconstruction circle, common in TCIA CTs; 4000 is above cortical bone and most stored metal."""

HU_AIR_MAX = -500.0
"""A whole chest CT holds air (about -1000 HU), so its minimum lies below this value."""

RAW_STORED_MAX = 4095.0
"""Raw stored CT values (before RescaleSlope/RescaleIntercept) are unsigned 12-bit."""


def diagnose_hu(
    lo: float, hi: float, hu_range: tuple[float, float] = HU_RANGE, require_air: bool = False
) -> tuple[str, str] | None:
    """Why finite values spanning ``[lo, hi]`` are not a CT in HU, as ``(problem, fix)``.

    Returns None when they look like HU. ``require_air`` adds the whole-volume test that the
    minimum is air; leave it off for crops, which may hold no air.
    """
    if lo >= -1.5 and hi <= 1.5:
        return (
            "it looks already normalised, not HU",
            "supply raw HU (air about -1000, soft tissue 0 to 100); the pipeline "
            "applies its own HU window",
        )
    if lo >= 0.0 and hi <= RAW_STORED_MAX:
        return (
            "all values are non-negative: these look like raw stored values, not HU",
            "apply RescaleSlope/RescaleIntercept (HU = stored * slope + intercept, typically "
            "intercept -1024) when converting from DICOM",
        )
    if lo < hu_range[0] or hi > hu_range[1]:
        return (
            f"values fall outside the Hounsfield range [{hu_range[0]:g}, {hu_range[1]:g}]",
            "check the conversion (RescaleSlope/RescaleIntercept, data type overflow) and "
            "re-export; set scanner padding to -1000",
        )
    if require_air and lo > HU_AIR_MAX:
        return (
            f"no air: a chest CT in HU has a minimum near -1000, at least below {HU_AIR_MAX:g}",
            "supply the unclipped, unwindowed CT in HU (RescaleSlope/RescaleIntercept applied)",
        )
    return None
