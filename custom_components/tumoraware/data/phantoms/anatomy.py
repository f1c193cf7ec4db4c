"""A random thorax in continuous world space (RAS+ mm), rasterised onto any :class:`Grid`.

Hand-written because no library generates paired-physics CT/MRI thorax phantoms with tumours
(XCAT is proprietary; MONAI's ``create_test_image_3d`` makes random spheres). Every organ is an
analytic shape whose size varies smoothly with height ``z`` (0 = lowest thoracic slice,
``height`` = lung apex), so one patient can be sampled on a CT grid and an MRI grid alike.

Conventions: NIfTI RAS+ world, so ``+x`` points to the patient's Right (the patient's left is
``LEFT * |x|``), ``+y`` Anterior, ``+z`` Superior. All shape functions broadcast over
``X, Y, Z`` arrays, so they serve both rasterisation (grid vectors) and point queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .grid import Grid
from .tissues import Tissue

__all__ = ["LEFT", "Capsule", "ThoraxAnatomy", "sample_anatomy"]

LEFT = -1.0
"""Sign of the patient's left along world ``x`` (NIfTI RAS+: ``+x`` is the patient's Right)."""


@dataclass(frozen=True)
class Capsule:
    """A tube between points ``a`` and ``b`` (world mm) of radius ``radius`` mm."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radius: float

    def bounds(self, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """World box ``(lower, upper)`` enclosing the tube plus ``pad`` mm."""
        a, b = np.asarray(self.a), np.asarray(self.b)
        r = self.radius + pad
        return np.minimum(a, b) - r, np.maximum(a, b) + r

    def distance(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Distance (mm) from each point to the tube's axis segment."""
        a, b = np.asarray(self.a, np.float32), np.asarray(self.b, np.float32)
        d = b - a
        px, py, pz = X - a[0], Y - a[1], Z - a[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / max(float(d @ d), 1e-6), 0.0, 1.0)
        return np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)


def _smoothstep(lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    u = np.clip((t - lo) / (hi - lo), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _ellipse_radius(X: np.ndarray, Y: np.ndarray, a, b) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse of semi-axes ``a`` (x), ``b`` (y)."""
    return np.sqrt((X / a) ** 2 + (Y / b) ** 2)


@dataclass(frozen=True)
class ThoraxAnatomy:
    """Random per-patient anatomy (all lengths in mm). Build with :func:`sample_anatomy`."""

    height: float  # lung base (z=0) to apex
    body_a: float  # body half-width (x) at the base
    body_b: float  # body half-depth (y) at the base
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest-wall muscle thickness
    mediastinum_upper: float  # half-width of the upper mediastinum
    mediastinum_mid: float  # half-width of the mid mediastinum
    vertebra_radius: float
    vertebra_pitch: float
    disc_phase: float
    heart_centre: tuple[float, float]  # x, y
    heart_axes: tuple[float, float]
    heart_angle: float  # radians
    heart_z: tuple[float, float]  # centre height, half-height
    dome_right: float  # height of the right hemidiaphragm dome
    dome_left: float
    carina: float  # height of the carina
    rib_pitch: float
    rib_phase: float
    rib_slope: float  # how far (mm) a rib drops from spine to sternum
    aorta_radius: float
    effusion_side: float  # +1 right, -1 left, 0 none
    effusion_level: float  # fluid fills the lung posterior to this y
    vessels: tuple[Capsule, ...] = field(default=(), repr=False)

    # ---- derived landmarks -------------------------------------------------------------
    @property
    def vertebra_y(self) -> float:
        return -self.body_b + self.fat + 42.0 + 0.85 * self.vertebra_radius

    @property
    def canal_y(self) -> float:
        return self.vertebra_y - 0.85 * self.vertebra_radius - 8.0

    @property
    def esophagus_y(self) -> float:
        return self.vertebra_y + 0.85 * self.vertebra_radius + 8.0

    @property
    def trachea_y(self) -> float:
        return self.esophagus_y + 17.0

    @property
    def descending_aorta(self) -> tuple[float, float]:
        return (
            LEFT * (self.vertebra_radius + 0.6 * self.aorta_radius + 6.0),
            self.vertebra_y + 6.0,
        )

    @property
    def ascending_aorta(self) -> tuple[float, float]:
        return (-LEFT * 12.0, self.trachea_y + 28.0)

    @property
    def arch_z(self) -> float:
        return self.carina + 28.0

    def hilum(self, side: float) -> tuple[float, float, float]:
        """Centre of the hilum on ``side`` (+1 right, -1 left): where bronchi and vessels enter."""
        return (
            side * (self.mediastinum_mid + 12.0),
            self.vertebra_y + 0.85 * self.vertebra_radius + 22.0,
            self.carina - 18.0,
        )

    # ---- body and cavity ---------------------------------------------------------------
    def body_axes(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = Z / self.height
        return self.body_a * (1.0 - 0.10 * t**2), self.body_b * (1.0 - 0.08 * t**2)

    def cavity_axes(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Semi-axes of the thoracic cavity (inside fat and chest wall), narrowing at the apex."""
        a, b = self.body_axes(Z)
        t = Z / self.height
        taper = np.sqrt(np.clip(1.0 - ((t - 0.3) / 0.78) ** 6, 0.05, 1.0))
        wall = self.fat + self.muscle
        return (a - wall) * taper, (b - wall) * (0.6 + 0.4 * taper)

    def in_body(self, X, Y, Z) -> np.ndarray:
        a, b = self.body_axes(Z)
        return _ellipse_radius(X, Y, a, b) < 1.0

    def in_cavity(self, X, Y, Z) -> np.ndarray:
        a, b = self.cavity_axes(Z)
        return (_ellipse_radius(X, Y, a, b) < 1.0) & (self.height * 1.02 > Z)

    def in_mediastinum(self, X, Y, Z) -> np.ndarray:
        """Central soft-tissue column plus the heart and its pericardial fat."""
        t = Z / self.height
        half = self.mediastinum_mid + (self.mediastinum_upper - self.mediastinum_mid) * _smoothstep(
            0.6, 1.0, t
        )
        _, b = self.cavity_axes(Z)
        column = np.abs(X - LEFT * 4.0) < half * (1.0 - 0.3 * (Y / b) ** 2)
        return column | (self.heart_radius(X, Y, Z) < 1.12)

    def in_posterior_block(self, X, Y, Z) -> np.ndarray:
        """Spine and paraspinal muscles: never lung."""
        r = self.vertebra_radius
        spine = (np.abs(X) < 1.5 * r) & (self.vertebra_y + 0.4 * r > Y)
        paraspinal = _ellipse_radius(np.abs(X) - 30.0, Y - (self.canal_y - 12.0), 24.0, 20.0) < 1.0
        return spine | paraspinal

    def diaphragm_height(self, X, Y) -> np.ndarray:
        """Height of the diaphragm under each (x, y): right dome higher (liver), left lower."""
        a = self.body_a - self.fat - self.muscle
        right = self.dome_right - 70.0 * (((X + LEFT * 0.45 * a) / a) ** 2 + (Y / a) ** 2)
        left = self.dome_left - 70.0 * (((X - LEFT * 0.45 * a) / a) ** 2 + (Y / a) ** 2)
        return np.where(X * LEFT < 0, right, left)

    def in_lung(self, X, Y, Z) -> np.ndarray:
        """Aerated lung: cavity minus mediastinum, spine, paraspinal muscles and sub-diaphragm."""
        return (
            self.in_cavity(X, Y, Z)
            & ~self.in_mediastinum(X, Y, Z)
            & ~self.in_posterior_block(X, Y, Z)
            & (self.diaphragm_height(X, Y) < Z)
        )

    def heart_radius(self, X, Y, Z) -> np.ndarray:
        """Normalised ellipsoidal radius of the heart (< 1 inside)."""
        cx, cy = self.heart_centre
        c, s = np.cos(self.heart_angle), np.sin(self.heart_angle)
        u, v = c * (X - cx) + s * (Y - cy), -s * (X - cx) + c * (Y - cy)
        zc, hz = self.heart_z
        squash = np.sqrt(np.clip(1.0 - ((Z - zc) / hz) ** 2, 1e-4, 1.0))
        r = _ellipse_radius(u, v, self.heart_axes[0] * squash, self.heart_axes[1] * squash)
        return np.where(np.abs(Z - zc) < hz, r, np.inf)

    # ---- rasterisation -----------------------------------------------------------------
    def tissue_map(self, grid: Grid) -> np.ndarray:
        """Rasterise onto ``grid``: uint8 :class:`Tissue` array of shape ``grid.shape``."""
        X, Y, Z = grid.broadcast_coordinates()
        tissue = np.zeros(grid.shape, dtype=np.uint8)
        a, b = self.body_axes(Z)
        body_r = _ellipse_radius(X, Y, a, b)
        _paint(tissue, body_r < 1.0, Tissue.FAT)
        wall = self.fat
        _paint(tissue, _ellipse_radius(X, Y, a - wall, b - wall) < 1.0, Tissue.MUSCLE)
        cavity = self.in_cavity(X, Y, Z)
        below_dome = self.diaphragm_height(X, Y) >= Z
        _paint(tissue, cavity & below_dome & (X * LEFT < 0), Tissue.LIVER)
        _paint(tissue, cavity & below_dome & (X * LEFT >= 0), Tissue.ABDOMEN)
        _paint(tissue, cavity & ~below_dome, Tissue.LUNG)
        mediastinum = self.in_mediastinum(X, Y, Z) & cavity
        _paint(tissue, mediastinum, Tissue.MEDIASTINAL_FAT)
        self._paint_heart(tissue, X, Y, Z, cavity)
        self._paint_mediastinal_tubes(tissue, grid)
        self._paint_spine(tissue, X, Y, Z)
        self._paint_ribs_and_sternum(tissue, X, Y, Z)
        self._paint_lung_vessels(tissue, grid)
        self._paint_effusion(tissue, X, Y, Z)
        _paint(tissue, body_r >= 1.0, Tissue.AIR)
        return tissue

    def _paint_heart(self, tissue, X, Y, Z, cavity) -> None:
        r = self.heart_radius(X, Y, Z)
        wall = 8.0 / min(self.heart_axes)
        _paint(tissue, (r < 1.0) & cavity, Tissue.MYOCARDIUM)
        _paint(tissue, (r < 1.0 - wall) & cavity, Tissue.HEART_BLOOD)

    def _mediastinal_tubes(self) -> list[tuple[Capsule, Tissue, Tissue | None, float]]:
        """(tube, lumen tissue, wall tissue, wall thickness) for airways and great vessels."""
        top = self.height * 1.2
        tr = (0.0, self.trachea_y)
        da, aa = self.descending_aorta, self.ascending_aorta
        ar = self.aorta_radius
        heart_top = self.heart_z[0] + 0.55 * self.heart_z[1]
        hl, hr = self.hilum(LEFT), self.hilum(-LEFT)
        pa_root = (LEFT * 12.0, self.trachea_y + 18.0, heart_top)
        pa_bif = (LEFT * 6.0, self.trachea_y + 10.0, hl[2] + 12.0)
        tubes = [
            (
                Capsule((*tr, self.carina), (*tr, top), 9.5),
                Tissue.AIRWAY,
                Tissue.HILAR_SOFT_TISSUE,
                2.0,
            ),
            (
                Capsule((*tr, self.carina), (hl[0] * 0.8, hl[1], hl[2] + 8), 6.5),
                Tissue.AIRWAY,
                Tissue.HILAR_SOFT_TISSUE,
                1.5,
            ),
            (
                Capsule((*tr, self.carina), (hr[0] * 0.8, hr[1], hr[2] + 8), 7.0),
                Tissue.AIRWAY,
                Tissue.HILAR_SOFT_TISSUE,
                1.5,
            ),
            (
                Capsule((0.0, self.esophagus_y, -60.0), (0.0, self.esophagus_y, top), 7.0),
                Tissue.ESOPHAGUS,
                None,
                0.0,
            ),
            (Capsule((*da, -80.0), (*da, self.arch_z), ar), Tissue.GREAT_VESSEL, None, 0.0),
            (
                Capsule((*aa, heart_top), (*aa, self.arch_z), ar * 1.2),
                Tissue.GREAT_VESSEL,
                None,
                0.0,
            ),
            (Capsule((*aa, self.arch_z), (*da, self.arch_z), ar), Tissue.GREAT_VESSEL, None, 0.0),
            (Capsule(pa_root, pa_bif, ar * 1.1), Tissue.GREAT_VESSEL, None, 0.0),
            (
                Capsule(pa_bif, (hl[0] * 0.9, hl[1] + 6, hl[2] + 4), ar * 0.85),
                Tissue.GREAT_VESSEL,
                None,
                0.0,
            ),
            (
                Capsule(pa_bif, (hr[0] * 0.9, hr[1] + 8, hr[2] + 2), ar * 0.85),
                Tissue.GREAT_VESSEL,
                None,
                0.0,
            ),
        ]
        for dx in (-LEFT * 10.0, 0.0, LEFT * 12.0):  # brachiocephalic, carotid, subclavian
            base = (aa[0] * 0.3 + dx, aa[1] - 12.0, self.arch_z)
            tubes.append(
                (Capsule(base, (base[0], base[1], top), 5.5), Tissue.GREAT_VESSEL, None, 0.0)
            )
        for side in (LEFT, -LEFT):  # hilar soft tissue: nodes and connective tissue
            h = self.hilum(side)
            tubes.append(
                (
                    Capsule((h[0], h[1], h[2] - 14), (h[0], h[1], h[2] + 14), 14.0),
                    Tissue.HILAR_SOFT_TISSUE,
                    None,
                    0.0,
                )
            )
        return tubes

    def _paint_mediastinal_tubes(self, tissue, grid: Grid) -> None:
        keep = np.isin(tissue, (Tissue.AIR, Tissue.FAT, Tissue.MUSCLE, Tissue.CORTICAL_BONE))
        for tube, lumen, wall_tissue, wall in self._mediastinal_tubes():
            box = grid.index_box(*tube.bounds(pad=wall))
            if box is None:
                continue
            X, Y, Z = (
                c[s] for c, s in zip(grid.broadcast_coordinates(), _expand(box), strict=True)
            )
            d = tube.distance(X, Y, Z)
            sub, protect = tissue[box], keep[box]
            if wall_tissue is not None:
                sub[(d < tube.radius + wall) & ~protect & (sub != Tissue.AIRWAY)] = wall_tissue
            sub[(d < tube.radius) & ~protect] = lumen

    def _paint_spine(self, tissue, X, Y, Z) -> None:
        r = self.vertebra_radius
        ry = 0.85 * r
        body = _ellipse_radius(X, Y - self.vertebra_y, 1.1 * r, ry)
        disc = ((Z - self.disc_phase) % self.vertebra_pitch) < 5.0
        in_body = body < 1.0
        _paint(tissue, in_body, Tissue.CORTICAL_BONE)
        _paint(tissue, (body < 1.0 - 2.0 / r) & ~disc, Tissue.MARROW)
        _paint(tissue, in_body & disc, Tissue.DISC)
        canal = np.sqrt(X**2 + (Y - self.canal_y) ** 2)
        arch = (canal < 12.5) & (self.canal_y + 3.0 > Y)
        spinous = (np.abs(X) < 4.0) & (self.canal_y - 9.0 > Y) & (self.canal_y - 32.0 < Y)
        _paint(tissue, (arch | spinous) & ~disc, Tissue.CORTICAL_BONE)
        _paint(tissue, (canal < 11.0) & (canal > 8.5) & (self.canal_y > Y) & ~disc, Tissue.MARROW)
        _paint(tissue, canal < 7.5, Tissue.CSF)
        _paint(tissue, canal < 4.5, Tissue.CORD)

    def _paint_ribs_and_sternum(self, tissue, X, Y, Z) -> None:
        a, b = self.cavity_axes(Z)
        r = _ellipse_radius(X, Y, a, b)
        band = (r >= 1.0) & (r < 1.0 + 10.0 / np.minimum(a, b)) & (tissue == Tissue.MUSCLE)
        idx = np.nonzero(band)
        if idx[0].size:
            x, y = np.broadcast_to(X, band.shape)[idx], np.broadcast_to(Y, band.shape)[idx]
            z = np.broadcast_to(Z, band.shape)[idx]
            # 0 at the spine (posterior), 1 at the sternum (anterior): ribs slope down anteriorly.
            around = np.abs(np.arctan2(x, -y)) / np.pi
            phase = (z + self.rib_slope * around - self.rib_phase) % self.rib_pitch
            depth = (r[idx] - 1.0) * np.minimum(a, b).reshape(-1)[idx[2]]  # mm into the wall
            in_rib = (np.abs(phase - 6.0) < 5.0) & (around > 0.06) & (around < 0.82)
            marrow = in_rib & (np.abs(phase - 6.0) < 3.5) & (depth > 2.0) & (depth < 8.0)
            sel = tuple(i[in_rib] for i in idx)
            tissue[sel] = Tissue.CORTICAL_BONE
            tissue[tuple(i[marrow] for i in idx)] = Tissue.MARROW
        t = Z / self.height
        _, bb = self.body_axes(Z)
        sternum_y = bb - self.fat - 0.5 * self.muscle
        sternum = _ellipse_radius(X, Y - sternum_y, 14.0, 0.42 * self.muscle + 1.0)
        rows = (t > 0.2) & (t < 0.95)
        _paint(tissue, (sternum < 1.0) & rows, Tissue.CORTICAL_BONE)
        _paint(tissue, (sternum < 0.65) & rows, Tissue.MARROW)

    def _paint_lung_vessels(self, tissue, grid: Grid) -> None:
        for tube in self.vessels:
            box = grid.index_box(*tube.bounds())
            if box is None:
                continue
            X, Y, Z = (
                c[s] for c, s in zip(grid.broadcast_coordinates(), _expand(box), strict=True)
            )
            sub = tissue[box]
            sub[(tube.distance(X, Y, Z) < tube.radius) & (sub == Tissue.LUNG)] = Tissue.LUNG_VESSEL

    def _paint_effusion(self, tissue, X, Y, Z) -> None:
        if self.effusion_side == 0:
            return
        side = (X * self.effusion_side) > 0
        lung = np.isin(tissue, (Tissue.LUNG, Tissue.LUNG_VESSEL))
        fluid = side & (self.effusion_level + 0.15 * Z > Y) & (0.55 * self.height > Z)
        _paint(tissue, lung & fluid, Tissue.PLEURAL_FLUID)


def _paint(tissue: np.ndarray, mask: np.ndarray, value: Tissue) -> None:
    """``tissue[mask] = value`` for masks that broadcast to ``tissue`` (e.g. ``(n, m, 1)``)."""
    tissue[np.broadcast_to(mask, tissue.shape)] = value


def _expand(box: tuple[slice, slice, slice]) -> tuple[tuple, tuple, tuple]:
    """Index tuples that cut a broadcast coordinate triple down to ``box``."""
    return (
        (box[0], slice(None), slice(None)),
        (slice(None), box[1], slice(None)),
        (
            slice(None),
            slice(None),
            box[2],
        ),
    )


def _vessel_tree(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
    depth: int,
) -> list[Capsule]:
    """A random binary branching tree of tubes (pulmonary arteries/veins), radii shrinking 0.7×."""
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length
    tubes = [Capsule(tuple(start), tuple(end), radius)]
    if depth > 1:
        for _ in range(2):
            child = direction + rng.normal(0.0, 0.55, 3)
            tubes += _vessel_tree(rng, end, child, length * 0.72, radius * 0.7, depth - 1)
    return tubes


def sample_anatomy(rng: np.random.Generator) -> ThoraxAnatomy:
    """Draw one random patient's thorax. Sizes are adult ranges (mm)."""
    height = rng.uniform(220.0, 260.0)
    body_a, body_b = rng.uniform(145.0, 175.0), rng.uniform(95.0, 118.0)
    mid = rng.uniform(30.0, 38.0)
    carina = rng.uniform(0.58, 0.66) * height
    heart_zc = rng.uniform(0.16, 0.24) * height
    anatomy = ThoraxAnatomy(
        height=height,
        body_a=body_a,
        body_b=body_b,
        fat=rng.uniform(6.0, 22.0),
        muscle=rng.uniform(10.0, 16.0),
        mediastinum_upper=rng.uniform(22.0, 28.0),
        mediastinum_mid=mid,
        vertebra_radius=rng.uniform(15.0, 19.0),
        vertebra_pitch=rng.uniform(24.0, 28.0),
        disc_phase=rng.uniform(0.0, 28.0),
        heart_centre=(LEFT * rng.uniform(15.0, 30.0), rng.uniform(8.0, 25.0)),
        heart_axes=(rng.uniform(55.0, 68.0), rng.uniform(40.0, 50.0)),
        heart_angle=LEFT * rng.uniform(0.35, 0.7),
        heart_z=(heart_zc, rng.uniform(0.22, 0.28) * height),
        dome_right=rng.uniform(25.0, 45.0),
        dome_left=rng.uniform(10.0, 30.0),
        carina=carina,
        rib_pitch=rng.uniform(22.0, 27.0),
        rib_phase=rng.uniform(0.0, 27.0),
        rib_slope=rng.uniform(30.0, 55.0),
        aorta_radius=rng.uniform(10.0, 13.0),
        effusion_side=float(rng.choice([0.0, 0.0, 0.0, 0.0, 1.0, -1.0])),
        effusion_level=-body_b * rng.uniform(0.25, 0.45),
    )
    vessels: list[Capsule] = []
    for side in (LEFT, -LEFT):
        h = np.asarray(anatomy.hilum(side))
        for lobe_dir in ((side, 0.3, 0.9), (side, 0.5, 0.0), (side, -0.4, -0.8)):
            direction = np.asarray(lobe_dir) + rng.normal(0.0, 0.15, 3)
            vessels += _vessel_tree(rng, h, direction, rng.uniform(35.0, 45.0), 6.5, depth=4)
    return ThoraxAnatomy(**{**anatomy.__dict__, "vessels": tuple(vessels)})
