"""Realistic DICOM CT series and RTSTRUCTs written from analytic shapes, with analytic ground truth.

The factory writes real, valid DICOM Part 10 files with pydicom (Explicit VR Little Endian, CT
Image Storage and RT Structure Set Storage) so that a reader is tested on what a scanner and a
planning system would produce, and computes the exact label it must rasterise from the shapes
themselves, never from the reader under test.

Geometry convention (dcm2niix / ITK): with ``r = IOP[0:3]`` (increasing column index),
``c = IOP[3:6]`` (increasing row index) and ``n = r × c``, voxel ``(i, j, k)`` = column ``i``, row
``j`` of slice ``k`` (slices sorted by ``IPP · n``, ascending) lies at
``IPP_k + i * PixelSpacing[1] * r + j * PixelSpacing[0] * c`` in patient coordinates (LPS, mm).

Every number the factory writes is first rounded to what a DICOM decimal string (16 characters)
can hold, and the truth is computed from those rounded numbers, so the truth describes the files
exactly. A polygon of ``N`` points inscribed in a circle of radius ``ρ`` lies within
``ρ (1 - cos(π / N))`` of it; :func:`ambiguous_voxel_count` counts the voxel centres closer than
that to a shape's boundary, for which "inside the polygon" and "inside the circle" may disagree.
A test that demands an exact voxel-for-voxel match first checks that this count is zero.

Typical use::

    geo = Geometry(rows=64, cols=64, pixel_spacing=(2.0, 2.0), n_slices=20, slice_spacing=2.5)
    ct = write_ct_series(tmp_path / "ct", geo)
    tumour = Sphere(centre=(3.3, -4.1, 24.7), radius=11.2)
    write_rtstruct(tmp_path / "rs" / "rtstruct.dcm", ct, {"GTV-1": tumour})
    truth = truth_mask(ct, tumour)          # uint8, (n_cols, n_rows, n_slices)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "RESCALE_INTERCEPT",
    "Contour",
    "CtSeriesInfo",
    "Cylinder",
    "Geometry",
    "Ring",
    "Shape",
    "Sphere",
    "ambiguous_voxel_count",
    "circle_contour",
    "default_hu",
    "dice",
    "ds_round",
    "oblique_iop",
    "shape_contours",
    "truth_mask",
    "two_point_contour",
    "write_ct_series",
    "write_rtstruct",
]

RESCALE_INTERCEPT = -1024.0
DEFAULT_POINTS = 720
_SAFETY_MM = 1e-6  # DS rounding of contour points is ~1e-12 mm; this covers it with room to spare


# ---- numbers as DICOM stores them ------------------------------------------------------------
def _ds_str(value: float) -> str:
    """A DICOM decimal string (at most 16 characters). Sub-nanometre values (rounding noise such
    as -2.7e-15) become 0: pydicom formats them in 17 characters, which is not valid DS."""
    value = float(value)
    return format_number_as_ds(0.0 if abs(value) < 1e-9 else value)


def ds_round(value: float) -> float:
    """``value`` rounded to what a DICOM decimal string (at most 16 characters) holds."""
    return float(_ds_str(value))


def _uid(*parts: object) -> str:
    """A deterministic UID: the same parts always give the same UID."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def oblique_iop(angle_deg: float, axis: Literal["row", "column"] = "row") -> tuple[float, ...]:
    """Axial orientation ``(1, 0, 0, 0, 1, 0)`` tilted by ``angle_deg`` about an in-plane axis.

    Args:
        angle_deg: tilt in degrees.
        axis: ``"row"`` rotates about the row direction (x): ``c`` tilts towards +z (a gantry
            tilt); ``"column"`` rotates about the column direction (y): ``r`` tilts towards -z.
    """
    a = math.radians(angle_deg)
    if axis == "row":
        return (1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a))
    if axis == "column":
        return (math.cos(a), 0.0, -math.sin(a), 0.0, 1.0, 0.0)
    raise ValueError(f"axis must be 'row' or 'column', got {axis!r}")


# ---- geometry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """A regular CT grid as a scanner would write it.

    Args:
        rows: DICOM Rows (image height, number of rows ``j``).
        cols: DICOM Columns (image width, number of columns ``i``).
        pixel_spacing: DICOM PixelSpacing ``(row spacing, column spacing)`` in mm: the distance
            between rows (along ``c``) and between columns (along ``r``).
        iop: ImageOrientationPatient, 6 floats ``(r, c)``.
        origin: ImagePositionPatient of the first slice (lowest ``IPP · n``), LPS mm.
        slice_spacing: distance between consecutive slices along ``n``, mm.
        n_slices: number of slices of the full grid (before any are dropped).
        slice_thickness: SliceThickness; defaults to ``slice_spacing``.
        slice_direction: unit vector from one slice's IPP to the next; ``None`` (default) is the
            normal. Another direction makes a sheared grid, as a gantry-tilted CT: IOP tilted,
            slices stacked along the table. ``slice_spacing`` is then the IPP step length.

    All floats are rounded to DICOM decimal strings on construction, so the object describes
    the written files exactly.
    """

    rows: int
    cols: int
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    iop: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    slice_spacing: float = 1.0
    n_slices: int = 1
    slice_thickness: float | None = None
    slice_direction: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if len(self.iop) != 6 or len(self.origin) != 3 or len(self.pixel_spacing) != 2:
            raise ValueError("iop needs 6 floats, origin 3, pixel_spacing 2")
        set_ = object.__setattr__
        set_(self, "pixel_spacing", tuple(ds_round(v) for v in self.pixel_spacing))
        set_(self, "iop", tuple(ds_round(v) for v in self.iop))
        set_(self, "origin", tuple(ds_round(v) for v in self.origin))
        set_(self, "slice_spacing", ds_round(self.slice_spacing))
        thickness = self.slice_spacing if self.slice_thickness is None else self.slice_thickness
        set_(self, "slice_thickness", ds_round(thickness))
        if self.slice_direction is not None:
            direction = np.asarray(self.slice_direction, dtype=float)
            direction = direction / np.linalg.norm(direction)
            if np.dot(direction, self.normal) <= 0.1:
                raise ValueError("slice_direction must point along the normal (dot > 0.1)")
            set_(self, "slice_direction", tuple(float(v) for v in direction))

    @property
    def r(self) -> np.ndarray:
        """Unit direction of increasing column index ``i`` (IOP[0:3])."""
        return np.asarray(self.iop[:3], dtype=float)

    @property
    def c(self) -> np.ndarray:
        """Unit direction of increasing row index ``j`` (IOP[3:6])."""
        return np.asarray(self.iop[3:], dtype=float)

    @property
    def normal(self) -> np.ndarray:
        """Slice normal ``n = r × c``; slices are sorted by ascending ``IPP · n``."""
        return np.cross(self.r, self.c)

    @property
    def step(self) -> np.ndarray:
        """Vector from one slice's IPP to the next (``slice_spacing`` long)."""
        direction = self.normal if self.slice_direction is None else self.slice_direction
        return self.slice_spacing * np.asarray(direction, dtype=float)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_cols, n_rows, n_slices)``: the NIfTI voxel order."""
        return (self.cols, self.rows, self.n_slices)

    def slice_position(self, k: float) -> np.ndarray:
        """ImagePositionPatient of (possibly fractional) slice ``k``, rounded as written."""
        p = np.asarray(self.origin) + k * self.step
        return np.array([ds_round(v) for v in p])

    def slice_positions(self) -> np.ndarray:
        """``(n_slices, 3)`` ImagePositionPatient of every slice of the full grid."""
        return np.stack([self.slice_position(k) for k in range(self.n_slices)])

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 voxel ``(i, j, k)`` → LPS mm of the full, regular grid."""
        affine = np.eye(4)
        affine[:3, 0] = self.r * self.pixel_spacing[1]
        affine[:3, 1] = self.c * self.pixel_spacing[0]
        affine[:3, 2] = self.step
        affine[:3, 3] = self.origin
        return affine

    @property
    def affine_ras(self) -> np.ndarray:
        """What NIfTI stores: ``diag(-1, -1, 1, 1) @ affine_lps``."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    def plane_centres(self, position: Sequence[float]) -> np.ndarray:
        """``(n_cols, n_rows, 3)`` voxel centres (LPS) of the slice whose IPP is ``position``."""
        i = np.arange(self.cols, dtype=float)[:, None, None]
        j = np.arange(self.rows, dtype=float)[None, :, None]
        r = self.r * self.pixel_spacing[1]
        c = self.c * self.pixel_spacing[0]
        return np.asarray(position, dtype=float) + i * r + j * c

    def voxel_centres_lps(self) -> np.ndarray:
        """``(n_cols, n_rows, n_slices, 3)`` voxel centres of the full grid (LPS mm).

        Memory grows as ``24 * cols * rows * n_slices`` bytes; large grids should go slice by
        slice with :meth:`plane_centres`.
        """
        return np.stack([self.plane_centres(p) for p in self.slice_positions()], axis=2)


# ---- analytic shapes -------------------------------------------------------------------------
class Shape(Protocol):
    """An analytic solid whose cross-section with any slice plane is a set of circles."""

    def cross_section(
        self, point: np.ndarray, normal: np.ndarray
    ) -> list[tuple[np.ndarray, float]]:
        """Circles ``(centre, radius)`` the plane through ``point`` (normal ``normal``) cuts.

        Inside = inside an odd number of them (XOR), exactly as an RTSTRUCT describes holes.
        """
        ...


@dataclass(frozen=True)
class Sphere:
    """A ball: inside when ``|p - centre| < radius``; its cross-section has radius √(R² − d²)."""

    centre: tuple[float, float, float]
    radius: float

    def cross_section(
        self, point: np.ndarray, normal: np.ndarray
    ) -> list[tuple[np.ndarray, float]]:
        d = float(np.dot(np.asarray(self.centre) - point, normal))
        if abs(d) >= self.radius:
            return []
        return [(np.asarray(self.centre) - d * normal, math.sqrt(self.radius**2 - d**2))]


@dataclass(frozen=True)
class Ring:
    """A tube: a cylinder of radius ``outer`` with a coaxial cylindrical hole of radius ``inner``.

    The axis passes through ``centre`` along the slice normal of the geometry it is cut with; the
    tube spans ``|d| <= half_length`` along it. Every slice plane within the span cuts two
    concentric circles, so the contours are written as an outer and an inner (hole) contour.
    """

    centre: tuple[float, float, float]
    outer: float
    inner: float
    half_length: float

    def __post_init__(self) -> None:
        if not 0 < self.inner < self.outer:
            raise ValueError(f"need 0 < inner < outer, got {self.inner}, {self.outer}")

    def cross_section(
        self, point: np.ndarray, normal: np.ndarray
    ) -> list[tuple[np.ndarray, float]]:
        d = float(np.dot(np.asarray(self.centre) - point, normal))
        if abs(d) > self.half_length:
            return []
        centre = np.asarray(self.centre) - d * normal
        return [(centre, self.outer), (centre, self.inner)]


@dataclass(frozen=True)
class Cylinder:
    """A solid cylinder (axis through ``centre`` along the slice normal, ``|d| <= half_length``).

    The hole of a :class:`Ring` with the same centre, radius ``inner`` and half length.
    """

    centre: tuple[float, float, float]
    radius: float
    half_length: float

    def cross_section(
        self, point: np.ndarray, normal: np.ndarray
    ) -> list[tuple[np.ndarray, float]]:
        d = float(np.dot(np.asarray(self.centre) - point, normal))
        if abs(d) > self.half_length:
            return []
        return [(np.asarray(self.centre) - d * normal, self.radius)]


# ---- the written series ----------------------------------------------------------------------
@dataclass
class CtSeriesInfo:
    """What :func:`write_ct_series` wrote, in sorted-slice order (ascending ``IPP · n``).

    Attributes:
        geometry: the full, regular grid the series was cut from.
        slice_indices: index in ``geometry``'s grid of each written slice.
        positions: ``(n_written, 3)`` ImagePositionPatient of each written slice, as written.
        sop_uids: SOPInstanceUID of each written slice.
        files: path of each written slice.
        hu: ``(n_cols, n_rows, n_written)`` int16 array of the HU values written.
    """

    geometry: Geometry
    folder: Path
    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    slice_indices: list[int]
    positions: np.ndarray
    sop_uids: list[str]
    files: list[Path]
    hu: np.ndarray
    instance_numbers: list[int] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_cols, n_rows, n_written)``."""
        return (self.geometry.cols, self.geometry.rows, len(self.slice_indices))


def default_hu(geometry: Geometry, k: int) -> np.ndarray:
    """The ``(n_cols, n_rows)`` HU values of grid slice ``k``, different along every axis.

    ``hu[i, j, k] = ((97 i + 131 j + 353 k) mod 4000) − 3024``: any transposition, flip or slice
    misorder changes the image. Values span ``[-3024, 975]`` HU, i.e. stored values
    ``[-2000, 1999]`` (negative stored values test signed pixels); voxel ``(1, 0)`` of every
    slice is set to −1024 HU (stored 0).
    """
    i = np.arange(geometry.cols)[:, None]
    j = np.arange(geometry.rows)[None, :]
    hu = ((97 * i + 131 * j + 353 * k) % 4000 - 3024).astype(np.int32)
    hu[min(1, geometry.cols - 1), 0] = -1024
    return hu


def write_ct_series(
    folder: str | Path,
    geometry: Geometry,
    hu: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    file_names: Literal["ordered", "shuffled", "uid"] = "ordered",
    instance_numbers: Literal["ordered", "reversed", "random"] = "ordered",
    drop_slices: Sequence[int] = (),
    nonuniform: Mapping[int, float] | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "P001",
    name_prefix: str = "CT",
    patient_position: str | None = None,
    seed: int = 0,
) -> CtSeriesInfo:
    """Write one CT series, one file per slice, and return what was written.

    Args:
        folder: created if missing; other files in it are left alone (two series may share it).
        geometry: the grid.
        hu: HU values: an ``(n_cols, n_rows, n_slices)`` array over the full grid, a function of
            voxel centres ``(n_cols, n_rows, 3)`` (LPS) → HU for one slice, or ``None`` for
            :func:`default_hu`. Stored as ``round(hu) + 1024`` (RescaleIntercept −1024).
        file_names: ``"ordered"`` (``CT0000.dcm`` … in slice order), ``"shuffled"`` (the same
            names randomly permuted over the slices) or ``"uid"`` (``<SOPInstanceUID>.dcm``).
        instance_numbers: InstanceNumber ``"ordered"`` (1…n along ``n``), ``"reversed"`` or
            ``"random"`` (a permutation).
        drop_slices: grid indices of slices not to write (a missing slice).
        nonuniform: ``{grid index: fraction}``: shift that slice by ``fraction`` of a step.
        series_uid, study_uid, frame_of_reference_uid: default to deterministic UIDs derived
            from ``patient_id``, ``name_prefix`` and ``seed``.
        patient_id: PatientID and PatientName.
        name_prefix: file-name prefix (give two series in one folder different ones).
        patient_position: PatientPosition; ``"HFP"`` when ``c`` points anterior (prone), else
            ``"HFS"``.
        seed: seeds the shuffles and the default UIDs.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    key = (patient_id, name_prefix, seed)
    study_uid = study_uid or _uid("study", *key)
    series_uid = series_uid or _uid("series", *key)
    frame_of_reference_uid = frame_of_reference_uid or _uid("for", *key)
    if patient_position is None:
        patient_position = "HFP" if geometry.iop[4] < 0 else "HFS"
    nonuniform = dict(nonuniform or {})

    indices = [k for k in range(geometry.n_slices) if k not in set(drop_slices)]
    positions = np.stack([geometry.slice_position(k + nonuniform.get(k, 0.0)) for k in indices])
    n = len(indices)
    hu_volume = np.empty((geometry.cols, geometry.rows, n), dtype=np.int16)
    for out_k, (k, pos) in enumerate(zip(indices, positions, strict=True)):
        if hu is None:
            values = default_hu(geometry, k)
        elif callable(hu):
            values = np.asarray(hu(geometry.plane_centres(pos)))
        else:
            values = np.asarray(hu)[:, :, k]
        values = np.rint(values)
        if values.min() - RESCALE_INTERCEPT < -32768 or values.max() - RESCALE_INTERCEPT > 32767:
            raise ValueError(f"HU of slice {k} do not fit int16 after the rescale intercept")
        hu_volume[:, :, out_k] = values

    sop_uids = [_uid("sop", *key, series_uid, k) for k in indices]
    if file_names == "ordered":
        names = [f"{name_prefix}{m:04d}.dcm" for m in range(n)]
    elif file_names == "shuffled":
        names = [f"{name_prefix}{m:04d}.dcm" for m in rng.permutation(n)]
    elif file_names == "uid":
        names = [f"{uid}.dcm" for uid in sop_uids]
    else:
        raise ValueError(f"file_names must be ordered, shuffled or uid, got {file_names!r}")
    if instance_numbers == "ordered":
        numbers = list(range(1, n + 1))
    elif instance_numbers == "reversed":
        numbers = list(range(n, 0, -1))
    elif instance_numbers == "random":
        numbers = [int(v) + 1 for v in rng.permutation(n)]
    else:
        raise ValueError(
            f"instance_numbers must be ordered, reversed or random: {instance_numbers}"
        )

    files = []
    for m in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uids[m]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        d = Dataset()
        d.file_meta = meta
        d.SpecificCharacterSet = "ISO_IR 100"
        d.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        d.SOPClassUID = CTImageStorage
        d.SOPInstanceUID = sop_uids[m]
        d.StudyDate = d.SeriesDate = "20240102"
        d.StudyTime = d.SeriesTime = "101500"
        d.AccessionNumber = ""
        d.Modality = "CT"
        d.Manufacturer = "tumoraware test factory"
        d.ReferringPhysicianName = ""
        d.PatientName = patient_id
        d.PatientID = patient_id
        d.PatientBirthDate = ""
        d.PatientSex = "O"
        d.KVP = "120"
        d.SliceThickness = _ds_str(geometry.slice_thickness)
        d.PatientPosition = patient_position
        d.StudyInstanceUID = study_uid
        d.SeriesInstanceUID = series_uid
        d.StudyID = "1"
        d.SeriesNumber = 1
        d.InstanceNumber = numbers[m]
        d.ImagePositionPatient = [_ds_str(v) for v in positions[m]]
        d.ImageOrientationPatient = [_ds_str(v) for v in geometry.iop]
        d.FrameOfReferenceUID = frame_of_reference_uid
        d.PositionReferenceIndicator = ""
        d.SliceLocation = _ds_str(float(np.dot(positions[m], geometry.normal)))
        d.SamplesPerPixel = 1
        d.PhotometricInterpretation = "MONOCHROME2"
        d.Rows = geometry.rows
        d.Columns = geometry.cols
        d.PixelSpacing = [_ds_str(v) for v in geometry.pixel_spacing]
        d.BitsAllocated = 16
        d.BitsStored = 16
        d.HighBit = 15
        d.PixelRepresentation = 1
        d.RescaleIntercept = _ds_str(RESCALE_INTERCEPT)
        d.RescaleSlope = "1"
        d.RescaleType = "HU"
        d.WindowCenter = "40"
        d.WindowWidth = "400"
        # PixelData is row-major (rows, cols): pixel_array == stored.T
        stored = hu_volume[:, :, m].astype(np.int32) - int(RESCALE_INTERCEPT)
        d.PixelData = np.ascontiguousarray(stored.T).astype("<i2").tobytes()
        path = folder / names[m]
        d.save_as(path, enforce_file_format=True)
        files.append(path)

    return CtSeriesInfo(
        geometry=geometry,
        folder=folder,
        patient_id=patient_id,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        slice_indices=indices,
        positions=positions,
        sop_uids=sop_uids,
        files=files,
        hu=hu_volume,
        instance_numbers=numbers,
    )


# ---- contours --------------------------------------------------------------------------------
@dataclass
class Contour:
    """One ContourSequence item.

    Attributes:
        points: ``(N, 3)`` LPS mm (written as flat ``x, y, z`` ContourData).
        slice_index: position in the series' written (sorted) slices of the slice it lies on,
            used for ContourImageSequence; ``None`` writes no ContourImageSequence for it.
        geometric_type: ContourGeometricType.
    """

    points: np.ndarray
    slice_index: int | None = None
    geometric_type: str = "CLOSED_PLANAR"


def circle_contour(
    geometry: Geometry,
    position: Sequence[float],
    centre: Sequence[float],
    radius: float,
    slice_index: int | None = None,
    n_points: int = DEFAULT_POINTS,
    clockwise: bool = False,
) -> Contour:
    """A circle of ``radius`` about ``centre`` projected onto the slice plane through ``position``.

    The points are ``centre' + radius (cos θ r + sin θ c)`` with the plane's own ``r``, ``c``
    axes, so they lie on the slice plane for any orientation.
    """
    pos = np.asarray(position, dtype=float)
    n = geometry.normal
    centre_in_plane = np.asarray(centre, dtype=float)
    centre_in_plane = centre_in_plane - np.dot(centre_in_plane - pos, n) * n
    theta = np.linspace(0.0, 2.0 * math.pi, n_points, endpoint=False)
    if clockwise:
        theta = theta[::-1]
    points = (
        centre_in_plane
        + radius * np.cos(theta)[:, None] * geometry.r
        + radius * np.sin(theta)[:, None] * geometry.c
    )
    return Contour(points=points, slice_index=slice_index)


def shape_contours(
    ct: CtSeriesInfo,
    shape: Shape,
    n_points: int = DEFAULT_POINTS,
    hole_winding: Literal["opposite", "same"] = "opposite",
) -> list[Contour]:
    """The contours that describe ``shape`` on every written slice it cuts.

    Args:
        ct: the written series (one set of contours per written slice).
        shape: the solid.
        n_points: points per circle.
        hole_winding: ``"opposite"`` writes inner circles (holes) clockwise and outer ones
            counter-clockwise, as most planning systems do; ``"same"`` writes all
            counter-clockwise. A correct reader gives the same label for both (XOR rule).
    """
    contours = []
    for k, pos in enumerate(ct.positions):
        circles = shape.cross_section(pos, ct.geometry.normal)
        for m, (centre, radius) in enumerate(circles):
            clockwise = m > 0 and hole_winding == "opposite"
            contours.append(
                circle_contour(ct.geometry, pos, centre, radius, k, n_points, clockwise)
            )
    return contours


def two_point_contour(ct: CtSeriesInfo, slice_index: int, length: float = 5.0) -> Contour:
    """A degenerate contour with 2 points on slice ``slice_index`` (to be skipped, warned)."""
    pos = ct.positions[slice_index]
    g = ct.geometry
    start = pos + 0.5 * g.cols * g.pixel_spacing[1] * g.r + 0.5 * g.rows * g.pixel_spacing[0] * g.c
    return Contour(points=np.stack([start, start + length * g.r]), slice_index=slice_index)


# ---- ground truth ----------------------------------------------------------------------------
def _inside(points: np.ndarray, circles: list[tuple[np.ndarray, float]]) -> np.ndarray:
    inside = np.zeros(points.shape[:-1], dtype=bool)
    for centre, radius in circles:
        inside ^= np.sum((points - centre) ** 2, axis=-1) < radius**2
    return inside


def _planes(target: Geometry | CtSeriesInfo) -> tuple[Geometry, np.ndarray]:
    if isinstance(target, CtSeriesInfo):
        return target.geometry, target.positions
    return target, target.slice_positions()


def truth_mask(target: Geometry | CtSeriesInfo, shape: Shape) -> np.ndarray:
    """uint8 ``(n_cols, n_rows, n_slices)``: 1 where a voxel centre is inside ``shape``.

    ``target`` is a written series (its actual slices, dropped ones left out) or a geometry
    (every slice of the regular grid). Each slice is cut with its own plane, so the truth is
    exactly what the contours of that slice describe (for a sphere: ``|p - C| < R``).
    """
    geometry, positions = _planes(target)
    mask = np.zeros((geometry.cols, geometry.rows, len(positions)), dtype=np.uint8)
    for k, pos in enumerate(positions):
        circles = shape.cross_section(pos, geometry.normal)
        if circles:
            mask[:, :, k] = _inside(geometry.plane_centres(pos), circles)
    return mask


def ambiguous_voxel_count(
    target: Geometry | CtSeriesInfo, shape: Shape, n_points: int = DEFAULT_POINTS
) -> int:
    """Voxel centres so close to a cross-section circle that polygon and circle may disagree.

    A regular ``n_points``-gon inscribed in a circle of radius ``ρ`` departs from it by at most
    ``ρ (1 − cos(π / n_points))``; voxels closer than that (plus 1e-6 mm) are counted. Zero
    means the truth is unambiguous and an exact rasteriser must reproduce it voxel for voxel.
    """
    geometry, positions = _planes(target)
    count = 0
    for pos in positions:
        circles = shape.cross_section(pos, geometry.normal)
        if not circles:
            continue
        centres = geometry.plane_centres(pos)
        for centre, radius in circles:
            band = radius * (1.0 - math.cos(math.pi / n_points)) + _SAFETY_MM
            dist = np.sqrt(np.sum((centres - centre) ** 2, axis=-1))
            count += int(np.count_nonzero(np.abs(dist - radius) <= band))
    return count


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary arrays of the same shape (1.0 when both are empty)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


# ---- RTSTRUCT --------------------------------------------------------------------------------
def _contour_item(contour: Contour, ct: CtSeriesInfo, number: int, with_refs: bool) -> Dataset:
    item = Dataset()
    if with_refs and contour.slice_index is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CTImageStorage
        ref.ReferencedSOPInstanceUID = ct.sop_uids[contour.slice_index]
        item.ContourImageSequence = DicomSequence([ref])
    item.ContourGeometricType = contour.geometric_type
    item.NumberOfContourPoints = len(contour.points)
    item.ContourNumber = number
    item.ContourData = [_ds_str(v) for v in np.asarray(contour.points, dtype=float).ravel()]
    return item


def write_rtstruct(
    path: str | Path,
    ct: CtSeriesInfo,
    rois: Mapping[str, Shape | Sequence[Contour]],
    *,
    contour_image_sequence: bool = True,
    n_points: int = DEFAULT_POINTS,
    referenced_series_uid: str | None = None,
    roi_numbers: Sequence[int] | None = None,
    reverse_roi_contours: bool = False,
    seed: int = 0,
) -> Path:
    """Write an RT Structure Set for ``ct`` with one ROI per entry of ``rois``.

    Args:
        path: the file to write (parents created).
        ct: the series the contours are drawn on.
        rois: ROI name → a :class:`Shape` (contoured on every slice it cuts with
            :func:`shape_contours`) or an explicit list of :class:`Contour` (to add a 2-point
            contour, a contour partly outside the image, an empty ROI, …).
        contour_image_sequence: write ContourImageSequence (ReferencedSOPInstanceUID of the
            slice) in every contour; ``False`` leaves only the plane to match contours by.
        n_points: points per circle for shapes.
        referenced_series_uid: the series named in RTReferencedSeriesSequence (default: ``ct``).
        roi_numbers: ROINumber of each ROI (default 1, 2, …); real files often skip numbers.
        reverse_roi_contours: write ROIContourSequence in the reverse order of
            StructureSetROISequence (allowed: they are linked by ROI number, not position).
        seed: seeds the RTSTRUCT's own UIDs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_uid = _uid("rtstruct", ct.series_uid, seed, *rois)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    d = Dataset()
    d.file_meta = meta
    d.SpecificCharacterSet = "ISO_IR 100"
    d.SOPClassUID = RTStructureSetStorage
    d.SOPInstanceUID = sop_uid
    d.StudyDate = d.SeriesDate = d.StructureSetDate = "20240103"
    d.StudyTime = d.SeriesTime = d.StructureSetTime = "090000"
    d.AccessionNumber = ""
    d.Modality = "RTSTRUCT"
    d.Manufacturer = "tumoraware test factory"
    d.ReferringPhysicianName = ""
    d.OperatorsName = ""
    d.PatientName = ct.patient_id
    d.PatientID = ct.patient_id
    d.PatientBirthDate = ""
    d.PatientSex = "O"
    d.StudyInstanceUID = ct.study_uid
    d.SeriesInstanceUID = _uid("rtstruct-series", ct.series_uid, seed)
    d.StudyID = "1"
    d.SeriesNumber = 2
    d.InstanceNumber = 1
    d.StructureSetLabel = "tumoraware"
    d.ApprovalStatus = "UNAPPROVED"

    image_refs = []
    for uid in ct.sop_uids:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CTImageStorage
        ref.ReferencedSOPInstanceUID = uid
        image_refs.append(ref)
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = referenced_series_uid or ct.series_uid
    series_ref.ContourImageSequence = DicomSequence(image_refs)
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    study_ref.ReferencedSOPInstanceUID = ct.study_uid
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    for_ref = Dataset()
    for_ref.FrameOfReferenceUID = ct.frame_of_reference_uid
    for_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    d.ReferencedFrameOfReferenceSequence = DicomSequence([for_ref])

    structure_set, roi_contours, observations = [], [], []
    numbers = list(roi_numbers) if roi_numbers is not None else list(range(1, len(rois) + 1))
    if len(numbers) != len(rois) or len(set(numbers)) != len(numbers):
        raise ValueError(f"need {len(rois)} distinct roi_numbers, got {numbers}")
    for number, (name, spec) in zip(numbers, rois.items(), strict=True):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ct.frame_of_reference_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        structure_set.append(roi)

        contours = list(spec) if isinstance(spec, Sequence) else shape_contours(ct, spec, n_points)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = [255, 0, 0]
        roi_contour.ContourSequence = DicomSequence(
            [
                _contour_item(contour, ct, m, contour_image_sequence)
                for m, contour in enumerate(contours, start=1)
            ]
        )
        roi_contour.ReferencedROINumber = number
        roi_contours.append(roi_contour)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "GTV" if name.upper().startswith("GTV") else "ORGAN"
        obs.ROIInterpreter = ""
        observations.append(obs)

    if reverse_roi_contours:
        roi_contours.reverse()
    d.StructureSetROISequence = DicomSequence(structure_set)
    d.ROIContourSequence = DicomSequence(roi_contours)
    d.RTROIObservationsSequence = DicomSequence(observations)
    d.save_as(path, enforce_file_format=True)
    return path
