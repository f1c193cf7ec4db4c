"""The paper's tumour-region crop: a physically square box around the tumour, resized in-plane.

Jiang et al. (MICCAI 2018, §3.2): "Image regions enclosing the tumors were extracted and rescaled
to 256 x 256". :class:`TumourRegionCropd` does that with MONAI's traceable array transforms, so
the output's affine stays right and the crop can be inverted.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import CropForeground, InvertibleTransform, MapTransform, Resize
from monai.transforms.utils import generate_spatial_bounding_box, is_positive
from monai.utils import ensure_tuple_rep

from tumoraware.transforms._checks import check_binary_label, check_same_grid
from tumoraware.transforms.intensity import source_name

__all__ = ["TumourRegionCropd", "square_tumour_box"]


def square_tumour_box(
    bbox_start: Sequence[int],
    bbox_end: Sequence[int],
    pixel_spacing: Sequence[float],
    margin: float,
    min_size_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """In-plane box, square in millimetres, centred on a tumour bounding box.

    The side is the longer tumour extent in mm, enlarged by ``margin`` x that extent on each
    side, and at least ``min_size_mm``; with ``margin > 0`` the box also keeps at least one
    pixel between the tumour and each edge. Each pixel count is rounded up, so the box in mm is
    square to within one pixel and always contains the whole tumour.

    Args:
        bbox_start: first tumour pixel ``(row, col)`` (inclusive).
        bbox_end: last tumour pixel + 1 ``(row, col)`` (exclusive).
        pixel_spacing: pixel size in mm along ``(row, col)``.
        margin: extra border on each side, as a fraction of the tumour's longer extent.
        min_size_mm: smallest side of the box in mm.

    Returns:
        ``(start, end)`` pixel indices (end exclusive); they may lie outside the image, in
        which case the caller pads.
    """
    start = np.asarray(bbox_start, dtype=int)
    length = np.asarray(bbox_end, dtype=int) - start
    spacing = np.asarray(pixel_spacing, dtype=float)
    side_mm = float(np.max(length * spacing)) * (1.0 + 2.0 * margin)
    side_mm = max(side_mm, float(min_size_mm))
    if margin > 0:
        side_mm = max(side_mm, float(np.max((length + 2) * spacing)))
    # 1e-6 absorbs float noise so that an exact multiple of the spacing is not rounded up.
    size = np.maximum(np.ceil(side_mm / spacing - 1e-6).astype(int), length)
    box_start = start - (size - length) // 2
    return box_start, box_start + size


class TumourRegionCropd(MapTransform, InvertibleTransform):
    """Crop a square region (in mm) around the whole tumour and resize it in-plane.

    From the label ``data[label_key]`` the in-plane bounding box of the tumour over **all**
    slices is taken (one box per volume, so the slices of a volume share a frame). The box is
    made square in millimetres using the pixel spacing of the label's affine (anisotropic pixels
    still give a physically square region), enlarged by ``margin`` x its side on each side and
    to at least ``min_size_mm``, cropped from every key (padding where it leaves the image) and
    resized in-plane to ``spatial_size``. The slice axis is left unchanged.

    Compared with :class:`monai.transforms.CropForegroundd` (which this builds on: its
    ``CropForeground.crop_pad`` does the crop-and-pad), the box here is square in millimetres
    rather than the tight voxel box, its margin is relative to the tumour size rather than a
    fixed voxel count, and the region is resized to a fixed in-plane size; CropForegroundd
    neither squares nor resizes. The box arithmetic (:func:`square_tumour_box`) is written by
    hand; the crop, pad and resize are MONAI's traceable ``CropForeground`` and ``Resize``, so
    MONAI updates the affine of each output :class:`~monai.data.MetaTensor` and records the
    operations for :meth:`inverse`.

    Args:
        keys: keys of the items to crop, e.g. ``("image", "label")``. Include ``label_key``
            if the cropped label is wanted; every key must share the label's ``H, W``.
            See also: :py:class:`monai.transforms.MapTransform`.
        label_key: key of the binary tumour label that defines the box (voxels > 0 are
            tumour, over all channels).
        spatial_size: in-plane output size ``(H', W')``. Default ``(256, 256)`` as in the paper.
        margin: border added on each side, as a fraction of the box side. Default 0.25.
        min_size_mm: smallest side of the region in mm (so a tiny tumour still comes with
            context). Default 0.
        mode: interpolation mode of :class:`monai.transforms.Resize`, one per key or one for
            all. Default ``("bilinear", "nearest-exact")`` for ``("image", "label")``.
            ``"nearest-exact"`` rather than ``"nearest"``: PyTorch's legacy ``"nearest"`` samples
            at ``floor(i * scale)``, which shifts the label by half an output pixel against the
            bilinear image and against the affine MONAI writes; ``"nearest-exact"`` samples pixel
            centres like ``"bilinear"`` with ``align_corners=False``.
            When the region is larger than ``spatial_size`` (downsampling), nearest sampling,
            like any nearest resize, can skip a structure thinner than one output pixel, e.g. the
            one-pixel cap of a tumour on its first slice; the region itself always contains it.
        padding_mode: ``numpy.pad`` / ``torch.nn.functional.pad`` mode where the region leaves
            the image, one per key or one for all. Default ``("edge", "constant")``: the image
            repeats its edge values; the label is padded with 0, since repeating its edge would
            invent tumour outside the image.
        allow_missing_keys: don't raise an exception if a key is missing.

    Shapes:
        input: each key ``(C, H, W, D)``, channel first, ``D`` the slice axis (as after
        ``LoadImaged`` + ``EnsureChannelFirstd``); label ``(1, H, W, D)``.
        output: each key ``(C, spatial_size[0], spatial_size[1], D)``, float32, a
        :class:`~monai.data.MetaTensor` whose affine maps the output voxels to the same world
        positions as the input.

    Raises:
        KeyError: ``label_key`` missing from the data.
        ValueError: a key is not 4-D, does not share the label's ``H, W`` or lies on another
            grid (affine); the label has values other than 0/1, or no tumour voxel ("empty
            label"). Each message names the file and the fix.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        spatial_size: Sequence[int] = (256, 256),
        margin: float = 0.25,
        min_size_mm: float = 0.0,
        mode: Sequence[str] | str = ("bilinear", "nearest-exact"),
        padding_mode: Sequence[str] | str = ("edge", "constant"),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        size = tuple(int(s) for s in spatial_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(
                f"TumourRegionCropd: expected spatial_size of two positive ints (H', W'), "
                f"got {spatial_size}. Fix: set the bundle's spatial_size to two sizes the "
                "networks take, e.g. [256, 256] (the paper's) or [64, 64] (the demo profile)."
            )
        if margin < 0 or min_size_mm < 0:
            raise ValueError(
                f"TumourRegionCropd: expected margin >= 0 and min_size_mm >= 0, "
                f"got margin={margin}, min_size_mm={min_size_mm}."
            )
        self.label_key = label_key
        self.spatial_size = size
        self.margin = float(margin)
        self.min_size_mm = float(min_size_mm)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))
        self.cropper = CropForeground(select_fn=is_positive)
        self.resizer = Resize(spatial_size=(*size, -1))

    def compute_box(self, label: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The crop box of ``label`` ``(C, H, W, D)`` as ``(start, end)`` over ``(H, W, D)``.

        ``start``/``end`` (exclusive) are voxel indices; in-plane they may lie outside the
        image. The slice axis spans the whole volume.
        """
        name = source_name(label, self.label_key)
        if label.ndim != 4:
            raise ValueError(
                f"{name}: expected a channel-first label (C, H, W, D), got shape "
                f"{tuple(label.shape)}. Fix: load it with LoadImaged + EnsureChannelFirstd."
            )
        check_binary_label(label, name)
        bb_start, bb_end = generate_spatial_bounding_box(label, select_fn=is_positive)
        if bb_end[0] <= bb_start[0]:
            raise ValueError(
                f"{name}: empty label, expected at least one tumour voxel (> 0) to place the "
                f"tumour-region crop, got none in shape {tuple(label.shape)}. Fix: check the "
                "label or move the case to an unlabelled split."
            )
        affine = label.affine if isinstance(label, MetaTensor) else torch.eye(4)
        spacing = affine_to_spacing(affine, r=3)[:2]
        start, end = square_tumour_box(
            bb_start[:2], bb_end[:2], [float(s) for s in spacing], self.margin, self.min_size_mm
        )
        depth = label.shape[-1]
        return np.asarray([*start, 0]), np.asarray([*end, depth])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.label_key not in d:
            raise KeyError(
                f"TumourRegionCropd: expected the label under key {self.label_key!r}, got keys "
                f"{list(d)}. Fix: set label_key, or do not crop unlabelled cases."
            )
        label = d[self.label_key]
        box_start, box_end = self.compute_box(label)
        for key, mode, pad_mode in self.key_iterator(d, self.mode, self.padding_mode):
            img = d[key]
            if img.ndim != 4 or tuple(img.shape[1:3]) != tuple(label.shape[1:3]):
                raise ValueError(
                    f"{source_name(img, key)}: expected (C, H, W, D) with H, W = "
                    f"{tuple(label.shape[1:3])} like the label "
                    f"{source_name(label, self.label_key)}, got shape {tuple(img.shape)}. "
                    "Fix: resample image and label onto one grid."
                )
            if key != self.label_key:
                check_same_grid(
                    img, label, source_name(img, key), source_name(label, self.label_key)
                )
            cropped = self.cropper.crop_pad(img, box_start, box_end, mode=pad_mode)
            d[key] = self.resizer(cropped, mode=mode)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Undo the resize and the crop: each key back to ``(C, H, W, D)`` on the input grid.

        Voxels outside the tumour region are zero (MONAI's crop inverse pads with 0).
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cropper.inverse(self.resizer.inverse(d[key]))
        return d
