"""Irregular 3D lung tumours placed where the paper's problem is hard.

A tumour is a lobulated ellipsoid: in its own frame a point ``q`` is inside when
``|q| < R · f(q/|q|)``, where ``f`` is one plus a few von-Mises bumps on the sphere. Four sites
(prevalence chosen so most tumours are hard on CT):

- ``hilar`` / ``mediastinal``: inside soft tissue, wrapped in a *mantle* of nodes that is
  iso-dense on CT, so there is no lung-outline cue at all;
- ``chest_wall``: pressed into the chest-wall muscle (iso-dense) with a pleural-thickening rim;
- ``lung``: free in aerated lung (the easy case CT shows well).

Central tumours often obstruct a bronchus, so a wedge of post-obstructive *atelectasis*
(iso-dense on CT, distinct on T2w MRI) may extend distally. During radiotherapy the tumour
shrinks week by week (:meth:`TumourSpec.at_week`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .anatomy import ThoraxAnatomy
from .grid import Grid
from .tissues import Tissue

__all__ = ["SITES", "TumourSpec", "paint_tumour", "sample_tumour"]

SITES = ("hilar", "mediastinal", "chest_wall", "lung")

# Tissues a tumour, its mantle or its atelectasis never overwrite.
_PROTECTED = (
    Tissue.AIR,
    Tissue.CORTICAL_BONE,
    Tissue.MARROW,
    Tissue.CSF,
    Tissue.CORD,
    Tissue.DISC,
    Tissue.AIRWAY,
    Tissue.HEART_BLOOD,
    Tissue.MYOCARDIUM,
    Tissue.GREAT_VESSEL,
)


@dataclass(frozen=True)
class TumourSpec:
    """One patient's tumour in world mm. ``scale`` multiplies every size (treatment response).

    Args:
        site: one of :data:`SITES`.
        centre: world position (RAS+ mm).
        radius: equivalent radius R (mm) before lobulation.
        frame: 3×3 matrix mapping tumour-frame offsets to world (rotation × axis scales).
        bump_dirs, bump_amps, bump_sharpness: the lobulation ``f`` on the unit sphere.
        necrosis: radius fraction of the necrotic core (0 = none).
        mantle: thickness (mm) of iso-dense soft tissue hugging the tumour (0 = none).
        atelectasis_dir, atelectasis_length, atelectasis_angle: the obstructed wedge
            (length 0 = none); direction is a unit vector pointing away from the hilum.
        shrink: fraction of the radius lost by week 7 of treatment.
    """

    site: str
    centre: tuple[float, float, float]
    radius: float
    frame: tuple[tuple[float, float, float], ...]
    bump_dirs: tuple[tuple[float, float, float], ...]
    bump_amps: tuple[float, ...]
    bump_sharpness: float
    necrosis: float
    mantle: float
    atelectasis_dir: tuple[float, float, float]
    atelectasis_length: float
    atelectasis_angle: float
    shrink: float
    scale: float = 1.0

    def at_week(self, week: int) -> TumourSpec:
        """The tumour at treatment ``week`` (1 = pre-treatment): radius and atelectasis shrink."""
        return replace(self, scale=1.0 - self.shrink * (week - 1) / 6.0)

    def extent(self) -> float:
        """Radius (mm) of a sphere that encloses tumour and mantle."""
        stretch = float(np.abs(np.asarray(self.frame)).sum(axis=1).max())
        return (self.radius * (1.0 + max(self.bump_amps)) * stretch + self.mantle) * self.scale

    def shape_radius(self, X, Y, Z, grow: float = 0.0, core: float = 1.0) -> np.ndarray:
        """``|q| / (R·f(u)·core + grow)``: < 1 inside the (grown or cored) tumour."""
        inv = np.linalg.inv(np.asarray(self.frame, dtype=np.float64)).astype(np.float32)
        c = np.asarray(self.centre, dtype=np.float32)
        dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
        q = [inv[i, 0] * dx + inv[i, 1] * dy + inv[i, 2] * dz for i in range(3)]
        norm = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
        f = np.ones_like(norm)
        for d, amp in zip(self.bump_dirs, self.bump_amps, strict=True):
            cos = (q[0] * d[0] + q[1] * d[1] + q[2] * d[2]) / norm
            f = f + amp * np.exp(self.bump_sharpness * (cos - 1.0))
        f = np.maximum(f, 0.4)  # overlapping negative bumps must not invert the shape
        return norm / ((self.radius * f * core + grow) * self.scale)

    def atelectasis_mask(self, X, Y, Z) -> np.ndarray:
        """The post-obstructive wedge distal to the tumour (a cone of half-angle ``angle``)."""
        if self.atelectasis_length <= 0:
            return np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), dtype=bool)
        c, v = np.asarray(self.centre, np.float32), np.asarray(self.atelectasis_dir, np.float32)
        dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
        along = dx * v[0] + dy * v[1] + dz * v[2]
        across = np.sqrt(np.maximum(dx**2 + dy**2 + dz**2 - along**2, 0.0))
        r = self.radius * self.scale
        length = r + self.atelectasis_length * self.scale
        return (
            (along > 0)
            & (along < length)
            & (across < 0.7 * r + along * np.tan(self.atelectasis_angle))
        )


def _random_frame(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q @ np.diag(rng.uniform(0.75, 1.25, 3))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _sphere_points(n: int = 64) -> np.ndarray:
    """Fibonacci sphere: ``n`` near-uniform unit vectors, shape ``(n, 3)``."""
    i = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


def _lung_fraction(anatomy: ThoraxAnatomy, centre: np.ndarray, radius: float) -> float:
    """Share of a sphere's surface (radius mm around ``centre``) that lies in aerated lung."""
    p = centre + radius * _sphere_points()
    return float(anatomy.in_lung(p[:, 0], p[:, 1], p[:, 2]).mean())


def _candidate_centre(
    anatomy: ThoraxAnatomy, site: str, radius: float, rng: np.random.Generator
) -> np.ndarray | None:
    """One random centre for ``site``, or None when the draw does not fit the anatomy."""
    side = rng.choice([-1.0, 1.0])
    h = anatomy.height
    if site == "hilar":
        return np.asarray(anatomy.hilum(side)) + rng.normal(0.0, [6.0, 8.0, 10.0])
    if site == "mediastinal":
        z = rng.uniform(0.5, 0.85) * h
        x = side * (anatomy.mediastinum_upper + rng.uniform(-0.2, 0.4) * radius)
        centre = np.array([x, rng.uniform(-15.0, 25.0), z])
        return centre if _lung_fraction(anatomy, centre, radius * 1.2) > 0.15 else None
    if site == "chest_wall":
        z = rng.uniform(0.3, 0.8) * h
        angle = rng.uniform(-1.9, 1.3)  # from lateral towards posterior/anterior
        a, b = (float(v) for v in anatomy.cavity_axes(np.float32(z)))
        boundary = np.array([side * a * np.cos(angle), b * np.sin(angle), z])
        inward = _unit(-np.array([boundary[0] / a**2, boundary[1] / b**2, 0.0]))
        centre = boundary + inward * radius * rng.uniform(0.15, 0.55)
        return centre if _lung_fraction(anatomy, centre, radius * 1.3) > 0.3 else None
    z = rng.uniform(0.25, 0.9) * h  # free in the lung
    a, b = (float(v) for v in anatomy.cavity_axes(np.float32(z)))
    centre = np.array([side * rng.uniform(0.3, 0.85) * a, rng.uniform(-0.6, 0.6) * b, z])
    return centre if _lung_fraction(anatomy, centre, radius * 1.35 + 4.0) > 0.98 else None


def sample_tumour(anatomy: ThoraxAnatomy, site: str, rng: np.random.Generator) -> TumourSpec:
    """Draw a tumour at ``site`` that fits ``anatomy`` (the radius shrinks until it fits)."""
    if site not in SITES:
        raise ValueError(f"Unknown tumour site {site!r}; expected one of {SITES}.")
    radius = float(rng.uniform(8.0, 35.0))  # paper: mean GTV 38–68 cc, i.e. R ≈ 21–25 mm
    centre = None
    for attempt in range(400):
        centre = _candidate_centre(anatomy, site, radius, rng)
        if centre is not None:
            break
        if attempt % 40 == 39:
            radius = max(8.0, radius * 0.85)
    if centre is None:  # the lung did not fit: fall back to a hilar tumour, always placeable
        return sample_tumour(anatomy, "hilar", rng)
    central = site in ("hilar", "mediastinal")
    hilum = np.asarray(anatomy.hilum(float(np.sign(centre[0]) or 1.0)))
    outward = centre - hilum if not central else np.array([np.sign(centre[0]), 0.0, -0.3])
    outward[0] = np.sign(centre[0]) * max(abs(outward[0]), 1.0)  # always point into the lung
    has_atelectasis = rng.random() < (0.55 if central else 0.2)
    n_bumps = int(rng.integers(3, 7))
    return TumourSpec(
        site=site,
        centre=tuple(float(v) for v in centre),
        radius=radius,
        frame=tuple(tuple(float(v) for v in row) for row in _random_frame(rng)),
        bump_dirs=tuple(tuple(float(v) for v in _unit(rng.normal(size=3))) for _ in range(n_bumps)),
        bump_amps=tuple(float(v) for v in rng.uniform(-0.2, 0.4, n_bumps)),
        bump_sharpness=float(rng.uniform(3.0, 7.0)),
        necrosis=float(rng.uniform(0.3, 0.55)) if radius > 14 and rng.random() < 0.4 else 0.0,
        mantle=float(rng.uniform(5.0, 12.0))
        if central
        else float(rng.uniform(2.0, 6.0))
        if site == "chest_wall"
        else 0.0,
        atelectasis_dir=tuple(float(v) for v in _unit(outward + rng.normal(0.0, 0.2, 3))),
        atelectasis_length=float(rng.uniform(25.0, 60.0)) if has_atelectasis else 0.0,
        atelectasis_angle=float(rng.uniform(0.25, 0.5)),
        shrink=float(rng.uniform(0.3, 0.6)),
    )


def paint_tumour(tissue: np.ndarray, grid: Grid, tumour: TumourSpec) -> None:
    """Paint atelectasis, mantle, tumour and necrosis into ``tissue`` (in place, bbox only)."""
    reach = tumour.extent() + tumour.atelectasis_length * tumour.scale + tumour.radius
    c = np.asarray(tumour.centre)
    box = grid.index_box(c - reach, c + reach)
    if box is None:
        return
    x, y, z = grid.axis_coordinates()
    X, Y, Z = x[box[0], None, None], y[None, box[1], None], z[None, None, box[2]]
    sub = tissue[box]
    free = ~np.isin(sub, _PROTECTED)
    lung = np.isin(sub, (Tissue.LUNG, Tissue.LUNG_VESSEL))
    sub[tumour.atelectasis_mask(X, Y, Z) & lung] = Tissue.ATELECTASIS
    if tumour.mantle > 0:
        sub[(tumour.shape_radius(X, Y, Z, grow=tumour.mantle) < 1.0) & free] = Tissue.TUMOUR_MANTLE
    sub[(tumour.shape_radius(X, Y, Z) < 1.0) & free] = Tissue.TUMOUR
    if tumour.necrosis > 0:
        core = tumour.shape_radius(X, Y, Z, core=tumour.necrosis) < 1.0
        sub[core & (sub == Tissue.TUMOUR)] = Tissue.NECROSIS
