"""World sizes: ``tiny`` for unit tests, ``demo`` for `make demo` on 2 CPU cores, ``full`` closer
to the paper's cohort (377 CT patients; 6 MRI patients × 7 weekly scans; 28 test scans)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "PhantomProfile", "get_profile"]


@dataclass(frozen=True)
class PhantomProfile:
    """How many patients of each kind, and on which grids.

    Args:
        n_ct: labelled CT patients (synthesis training; the paper's NSCLC-Radiomics role).
        n_ct_test: labelled CT patients held out from synthesis training (split ``ct_test``):
            the tumour-preservation score reads their synthetic MRI to tell what a synthesis
            model keeps on CT it never trained on from what it learned by heart.
        n_mri_train: MRI patients with weekly scans (week 1 labelled for semi-supervised
            training; later weeks unlabelled for synthesis and labelled for validation).
        mri_weeks: scan weeks of each training MRI patient (1 = pre-treatment).
        test_longitudinal: weeks of each longitudinal held-out test patient.
        n_test_pre: held-out test patients with one pre-treatment scan.
        ct_spacing, mri_spacing: voxel sizes (mm) of the CT (RAS) and MRI (LPS) grids.
        ct_fov, mri_fov: in-plane field of view (mm).
        ct_slab_margin: CT covers the tumour ± this many mm in z (None: the whole thorax).
    """

    name: str
    n_ct: int
    n_mri_train: int
    mri_weeks: tuple[int, ...]
    test_longitudinal: tuple[tuple[int, ...], ...]
    n_test_pre: int
    ct_spacing: tuple[float, float, float]
    mri_spacing: tuple[float, float, float]
    ct_fov: float = 384.0
    mri_fov: float = 420.0
    ct_slab_margin: float | None = None
    n_ct_test: int = 0


PROFILES = {
    "tiny": PhantomProfile(
        name="tiny", n_ct=3, n_mri_train=2, mri_weeks=(1, 4), test_longitudinal=(), n_test_pre=2,
        ct_spacing=(2.5, 2.5, 4.0), mri_spacing=(3.0, 3.0, 6.0), ct_slab_margin=15.0, n_ct_test=2,
    ),
    "demo": PhantomProfile(
        name="demo", n_ct=16, n_mri_train=4, mri_weeks=(1, 3, 5, 7), test_longitudinal=((1, 4, 7),),
        n_test_pre=5, ct_spacing=(1.0, 1.0, 3.0), mri_spacing=(1.5, 1.5, 5.0), ct_slab_margin=30.0,
        n_ct_test=8,
    ),
    "full": PhantomProfile(
        name="full", n_ct=120, n_mri_train=6, mri_weeks=(1, 2, 3, 4, 5, 6, 7),
        test_longitudinal=((1, 2, 3, 4, 5, 6, 7), (1, 2, 3, 4, 5, 6, 7), (1, 2, 3, 4, 5, 6)),
        n_test_pre=8, ct_spacing=(1.0, 1.0, 3.0), mri_spacing=(1.5, 1.5, 5.0), n_ct_test=30,
    ),
}  # fmt: skip


def get_profile(name: str) -> PhantomProfile:
    """The profile called ``name``; a clear error lists the ones that exist."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"Unknown phantom profile {name!r}; choose one of {sorted(PROFILES)}."
        ) from None
