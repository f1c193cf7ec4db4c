"""Imaging physics: tissue map → contrast-enhanced CT (HU) or T2-weighted MRI (arbitrary units).

The contrasts encode the paper's problem (Fig. 1):

- **CT**: tumour, its mantle, atelectasis, hilar tissue and chest-wall muscle all sit within
  ±8 HU of one soft-tissue baseline, so the tumour border is nearly invisible except where
  it meets aerated lung; aorta and heart are bright (contrast agent).
- **T2w MRI**: the tumour is hyper-intense (2–4× muscle) and heterogeneous, but fat, marrow,
  pleural fluid, CSF and some atelectasis are as bright or brighter, so "bright means tumour"
  fails; blood is a flow void; Rician noise, a smooth multiplicative bias field and a
  per-scan gain make intensities scanner-dependent.

Test-cohort MRI draws its appearance from wider ranges than the few training patients
(``cohort="test"``), so a model that only saw week-1 scans generalises poorly, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter

from .grid import Grid
from .tissues import Tissue

__all__ = [
    "CTAppearance",
    "MRIAppearance",
    "render_ct",
    "render_mri",
    "sample_ct_appearance",
    "sample_mri_appearance",
]

_N = max(Tissue) + 1


@dataclass(frozen=True)
class CTAppearance:
    """Per-scan CT parameters (HU). ``soft_tissue`` is the muscle baseline all offsets refer to."""

    soft_tissue: float
    tumour_offset: float
    mantle_offset: float
    atelectasis_offset: float
    hilar_offset: float
    aorta: float
    heart_ratio: float
    cortical: float
    marrow: float
    pleural_fluid: float
    necrosis_drop: float
    noise: float

    def lookup(self) -> np.ndarray:
        """Mean HU per :class:`Tissue`, shape ``(n_tissues,)``."""
        s = self.soft_tissue
        lut = np.zeros(_N, dtype=np.float32)
        lut[Tissue.AIR] = -1000.0
        lut[Tissue.FAT] = -100.0
        lut[Tissue.MUSCLE] = s
        lut[Tissue.LUNG] = -860.0
        lut[Tissue.LUNG_VESSEL] = 0.55 * self.aorta
        lut[Tissue.HEART_BLOOD] = self.heart_ratio * self.aorta
        lut[Tissue.MYOCARDIUM] = s + 60.0
        lut[Tissue.GREAT_VESSEL] = self.aorta
        lut[Tissue.MEDIASTINAL_FAT] = -90.0
        lut[Tissue.HILAR_SOFT_TISSUE] = s + self.hilar_offset
        lut[Tissue.CORTICAL_BONE] = self.cortical
        lut[Tissue.MARROW] = self.marrow
        lut[Tissue.CSF] = 12.0
        lut[Tissue.CORD] = 30.0
        lut[Tissue.DISC] = 85.0
        lut[Tissue.AIRWAY] = -1000.0
        lut[Tissue.ESOPHAGUS] = s - 4.0
        lut[Tissue.LIVER] = s + 55.0
        lut[Tissue.ABDOMEN] = s + 10.0
        lut[Tissue.PLEURAL_FLUID] = self.pleural_fluid
        lut[Tissue.ATELECTASIS] = s + self.atelectasis_offset
        lut[Tissue.TUMOUR_MANTLE] = s + self.mantle_offset
        lut[Tissue.TUMOUR] = s + self.tumour_offset
        lut[Tissue.NECROSIS] = s + self.tumour_offset - self.necrosis_drop
        return lut


@dataclass(frozen=True)
class MRIAppearance:
    """Per-scan T2w parameters. Tissue intensities are ratios to muscle; ``gain`` scales all.

    ``bias`` holds the strength and the 9 coefficients of a quadratic log-bias polynomial.
    """

    gain: float
    noise: float  # Gaussian σ of each quadrature channel, as a fraction of the muscle signal
    bias_strength: float
    bias_coeffs: tuple[float, ...]
    tumour_ratio: float
    atelectasis_ratio: float
    heterogeneity: float
    fat_ratio: float
    marrow_ratio: float

    def lookup(self) -> np.ndarray:
        """Mean intensity per :class:`Tissue` relative to muscle, shape ``(n_tissues,)``."""
        lut = np.zeros(_N, dtype=np.float32)
        lut[Tissue.FAT] = self.fat_ratio
        lut[Tissue.MUSCLE] = 1.0
        lut[Tissue.LUNG] = 0.12
        lut[Tissue.LUNG_VESSEL] = 0.3
        lut[Tissue.HEART_BLOOD] = 0.15  # black-blood flow void
        lut[Tissue.MYOCARDIUM] = 1.1
        lut[Tissue.GREAT_VESSEL] = 0.12
        lut[Tissue.MEDIASTINAL_FAT] = 0.95 * self.fat_ratio
        lut[Tissue.HILAR_SOFT_TISSUE] = 1.4
        lut[Tissue.CORTICAL_BONE] = 0.1
        lut[Tissue.MARROW] = self.marrow_ratio
        lut[Tissue.CSF] = 3.8
        lut[Tissue.CORD] = 1.2
        lut[Tissue.DISC] = 2.0
        lut[Tissue.ESOPHAGUS] = 1.3
        lut[Tissue.LIVER] = 0.75
        lut[Tissue.ABDOMEN] = 1.6
        lut[Tissue.PLEURAL_FLUID] = 4.0
        lut[Tissue.ATELECTASIS] = self.atelectasis_ratio
        lut[Tissue.TUMOUR_MANTLE] = 1.5
        lut[Tissue.TUMOUR] = self.tumour_ratio
        lut[Tissue.NECROSIS] = 1.35 * self.tumour_ratio
        return lut

    def at_week(self, week: int, response: float, rng: np.random.Generator) -> MRIAppearance:
        """The same scanner a few weeks into treatment: tumour T2 signal falls by ``response``
        × (week-1)/6 (fibrosis), gain drifts ±10 %, the coil sits differently (new bias)."""
        return replace(
            self,
            gain=self.gain * rng.uniform(0.9, 1.1),
            bias_coeffs=tuple(float(v) for v in rng.normal(0.0, 1.0 / 3.0, 9)),
            tumour_ratio=self.tumour_ratio * (1.0 - response * (week - 1) / 6.0),
        )


def sample_ct_appearance(rng: np.random.Generator) -> CTAppearance:
    """A contrast-enhanced chest CT protocol; soft-tissue offsets stay within ±8 HU."""
    return CTAppearance(
        soft_tissue=rng.uniform(35.0, 55.0),
        tumour_offset=rng.uniform(-8.0, 8.0),
        mantle_offset=rng.uniform(-8.0, 8.0),
        atelectasis_offset=rng.uniform(-8.0, 8.0),
        hilar_offset=rng.uniform(-8.0, 8.0),
        aorta=rng.uniform(180.0, 320.0),
        heart_ratio=rng.uniform(0.7, 0.95),
        cortical=rng.uniform(700.0, 1000.0),
        marrow=rng.uniform(180.0, 280.0),
        pleural_fluid=rng.uniform(5.0, 18.0),
        necrosis_drop=rng.uniform(6.0, 14.0),
        noise=rng.uniform(8.0, 18.0),
    )


# (low, high) per cohort: the test cohort spans more scanners, coils and tumour biology.
_MRI_RANGES = {
    "train": {"gain": (800.0, 1500.0), "noise": (0.02, 0.04), "bias": (0.1, 0.25),
              "tumour": (2.5, 3.1), "het": (0.08, 0.18)},
    "test": {"gain": (300.0, 3000.0), "noise": (0.015, 0.08), "bias": (0.05, 0.45),
             "tumour": (1.9, 3.8), "het": (0.05, 0.35)},
}  # fmt: skip


def sample_mri_appearance(rng: np.random.Generator, cohort: str = "train") -> MRIAppearance:
    """A T2w scan's appearance for ``cohort`` ``"train"`` or ``"test"`` (wider ranges)."""
    if cohort not in _MRI_RANGES:
        raise ValueError(f"cohort must be one of {sorted(_MRI_RANGES)}, got {cohort!r}.")
    r = _MRI_RANGES[cohort]
    tumour = rng.uniform(*r["tumour"])
    # Atelectasis is either darker (collapsed, cellular) or brighter (fluid-filled) than tumour,
    # never alike: at least 25 % apart.
    atelectasis = tumour * (
        rng.uniform(0.5, 0.72) if rng.random() < 0.5 else rng.uniform(1.25, 1.45)
    )
    return MRIAppearance(
        gain=float(np.exp(rng.uniform(np.log(r["gain"][0]), np.log(r["gain"][1])))),
        noise=rng.uniform(*r["noise"]),
        bias_strength=rng.uniform(*r["bias"]),
        bias_coeffs=tuple(float(v) for v in rng.normal(0.0, 1.0 / 3.0, 9)),
        tumour_ratio=tumour,
        atelectasis_ratio=atelectasis,
        heterogeneity=rng.uniform(*r["het"]),
        fat_ratio=rng.uniform(2.8, 3.3),
        marrow_ratio=rng.uniform(1.9, 2.5),
    )


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation (texture), float32."""
    field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def render_ct(
    tissue: np.ndarray, grid: Grid, look: CTAppearance, rng: np.random.Generator
) -> np.ndarray:
    """CT in HU, int16, same shape as ``tissue``: look-up, texture, scanner blur, noise."""
    _, Y, _ = grid.broadcast_coordinates()
    texture_hu = np.full(_N, 4.0, dtype=np.float32)
    texture_hu[[Tissue.LUNG, Tissue.FAT]] = (25.0, 8.0)
    texture_hu[[Tissue.TUMOUR, Tissue.NECROSIS, Tissue.LIVER]] = 7.0
    image = look.lookup()[tissue]
    image += texture_hu[tissue] * smooth_noise(tissue.shape, 1.5, rng)
    image += np.where(tissue == Tissue.LUNG, -0.4 * Y, 0.0).astype(np.float32)  # dependent density
    image = gaussian_filter(image, (0.7, 0.7, 0.35))
    image += rng.normal(0.0, look.noise, tissue.shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def bias_field(grid: Grid, look: MRIAppearance) -> np.ndarray:
    """Smooth multiplicative coil bias ``exp(strength · quadratic(x, y, z))``, broadcastable."""
    X, Y, Z = grid.broadcast_coordinates()
    x, y, z = X / 150.0, Y / 150.0, (Z - grid.centre[2]) / 150.0
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    log_bias = sum(c * t for c, t in zip(look.bias_coeffs, terms, strict=True))
    return np.exp(look.bias_strength * log_bias).astype(np.float32)


def render_mri(
    tissue: np.ndarray, grid: Grid, look: MRIAppearance, rng: np.random.Generator
) -> np.ndarray:
    """T2w magnitude image, int16 arbitrary units, same shape as ``tissue``.

    Signal = gain × bias × (look-up × texture), blurred by the point-spread function, then
    Rician noise: ``|S + n₁ + i·n₂|`` with ``n ~ N(0, noise·gain)``.
    """
    heterogeneity = np.full(_N, 0.04, dtype=np.float32)
    heterogeneity[[Tissue.TUMOUR, Tissue.NECROSIS]] = look.heterogeneity
    signal = look.lookup()[tissue]
    signal *= 1.0 + heterogeneity[tissue] * smooth_noise(tissue.shape, 1.2, rng)
    signal = gaussian_filter(signal, (0.6, 0.6, 0.3)) * look.gain * bias_field(grid, look)
    sigma = look.noise * look.gain
    real = signal + rng.normal(0.0, sigma, tissue.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, tissue.shape).astype(np.float32)
    return np.clip(np.rint(np.hypot(real, imag)), 0, 32767).astype(np.int16)
