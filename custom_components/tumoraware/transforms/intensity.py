"""Intensity normalisation for the two modalities of the paper (CT window, robust MRI scaling).

Both transforms are thin subclasses of MONAI's dictionary transforms; MONAI does the scaling.
What they add is the input check MONAI leaves out: an image that is not what the transform
expects (CT not in Hounsfield units, NaN/Inf, a constant MRI) raises a ``ValueError`` that names
the file and the fix, instead of being silently scaled to garbage.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    ScaleIntensityRange,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_dst_type, convert_to_tensor

from tumoraware.hounsfield import HU_RANGE, diagnose_hu

__all__ = ["CTWindowd", "RobustMRINormalized", "ValueRangeCheckd", "source_name"]


def source_name(img: Any, key: Hashable | None = None) -> str:
    """Name an input in error messages: its file when MONAI loaded it from disk.

    Args:
        img: the array; a :class:`monai.data.MetaTensor` carries ``meta["filename_or_obj"]``.
        key: the dictionary key, used when there is no file name.

    Returns:
        the file name if known, else ``data['<key>']`` (or ``input image`` without a key).
    """
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj")
        if name:
            return str(name)
    return f"data[{key!r}]" if key is not None else "input image"


def _as_float_tensor(img: NdarrayOrTensor) -> torch.Tensor:
    """A plain float tensor view of ``img`` for the checks (no metadata, no copy when possible)."""
    t = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img))
    return t if t.is_floating_point() else t.float()


def _check_finite(t: torch.Tensor, name: str) -> None:
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(
            f"{name}: expected finite intensities, got {bad} NaN/Inf voxel(s) of {t.numel()}. "
            "Fix: check the conversion that wrote this file (e.g. a division by zero) and "
            "replace or mask the non-finite voxels before normalising."
        )


class CTWindowd(ScaleIntensityRanged):
    """Window a CT in Hounsfield units to ``[b_min, b_max]``, clipped, after checking it is HU.

    The paper's CT preprocessing: the window ``[-1000, 500]`` HU (air to dense soft tissue and
    bone) is mapped linearly to ``[-1, 1]``, the range of the CycleGAN generator's ``tanh``
    output, and values outside are clipped. The scaling itself is MONAI's
    :class:`~monai.transforms.ScaleIntensityRanged` (``clip=True``); written here by hand is only
    the Hounsfield-unit sanity check, on by default, which raises ``ValueError`` (naming the file
    from ``meta["filename_or_obj"]`` and the fix) when the input

    - contains NaN or Inf;
    - lies entirely within ``[-1.5, 1.5]``: it is already normalised (supply raw HU instead);
    - is entirely ``>= 0`` with maximum ``<= 4095``: raw stored DICOM values, RescaleSlope and
      RescaleIntercept were not applied (a CT of a patient always contains air, about -1000 HU);
    - has values outside ``hu_range``: not Hounsfield units at all.

    Args:
        keys: keys of the corresponding items to be transformed, e.g. ``"image"``.
            See also: :py:class:`monai.transforms.MapTransform`.
        a_min: lower bound of the window in HU; maps to ``b_min``. Default -1000.
        a_max: upper bound of the window in HU; maps to ``b_max``. Default 500.
        b_min: output value of ``a_min``. Default -1.
        b_max: output value of ``a_max``. Default 1.
        check_hu: run the Hounsfield-unit check above before scaling. Default True; switch it
            off only for inputs you know to be HU that fail the heuristic (e.g. a crop that
            contains no air).
        hu_range: values a Hounsfield-unit CT may take. Default ``(-3024, 4000)``: -3024 is the
            padding value many scanners (GE, Siemens) write outside the field of view, which the
            window clips to ``b_min`` like air; 4000 is well above cortical bone and most metal
            that 12-bit CT can store.
        dtype: output data type. Default float32.
        allow_missing_keys: don't raise an exception if a key is missing.

    Shapes:
        any channel-first array, e.g. ``(C, H, W, D)``; the output has the same shape and
        metadata (a :class:`~monai.data.MetaTensor` stays a MetaTensor).

    Raises:
        ValueError: the input fails the Hounsfield-unit check (see above).
    """

    def __init__(
        self,
        keys: KeysCollection,
        a_min: float = -1000.0,
        a_max: float = 500.0,
        b_min: float = -1.0,
        b_max: float = 1.0,
        check_hu: bool = True,
        hu_range: tuple[float, float] = HU_RANGE,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        if not a_max > a_min:
            raise ValueError(
                f"CTWindowd: expected a_max > a_min, got a_min={a_min}, a_max={a_max}."
            )
        if not hu_range[1] > hu_range[0]:
            raise ValueError(
                f"CTWindowd: expected hu_range (low, high) with low < high, got {hu_range}."
            )
        super().__init__(
            keys,
            a_min,
            a_max,
            b_min,
            b_max,
            clip=True,
            dtype=dtype,
            allow_missing_keys=allow_missing_keys,
        )
        self.check_hu = check_hu
        self.hu_range = (float(hu_range[0]), float(hu_range[1]))

    def check(self, img: NdarrayOrTensor, name: str) -> None:
        """Raise ``ValueError`` naming ``name`` if ``img`` does not look like Hounsfield units."""
        t = _as_float_tensor(img)
        _check_finite(t, name)
        lo, hi = float(t.min()), float(t.max())
        diagnosis = diagnose_hu(lo, hi, self.hu_range)
        if diagnosis is not None:
            problem, fix = diagnosis
            raise ValueError(
                f"{name}: expected a CT in Hounsfield units (air about -1000 HU), got intensities "
                f"in [{lo:g}, {hi:g}]: {problem}. Fix: {fix}; or widen hu_range / pass "
                "check_hu=False if the values are genuine HU."
            )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.check_hu:
                self.check(d[key], source_name(d[key], key))
            d[key] = self.scaler(d[key])
        return d


class RobustMRINormalized(ScaleIntensityRangePercentilesd):
    """Scale an MRI per volume so its ``lower``..``upper`` percentiles map to ``[b_min, b_max]``.

    MRI intensities have no physical unit and change with scanner gain, so each volume is
    normalised on its own percentiles (robust to a few hot voxels) and clipped: the output is
    invariant to a global gain ``x -> g * x``. It behaves as MONAI's
    :class:`~monai.transforms.ScaleIntensityRangePercentilesd` (``clip=True``), whose parameters it
    takes: the percentiles are computed once (for the checks below) and the scaling is MONAI's
    :class:`~monai.transforms.ScaleIntensityRange` on them. Written here by hand are two checks
    MONAI lacks, each raising ``ValueError`` naming the file:

    - NaN/Inf voxels (MONAI's percentiles would be NaN and the whole output NaN);
    - a constant image, i.e. the ``lower`` and ``upper`` percentiles coincide (MONAI only warns
      about the division by zero and returns ``img - a_min + b_min``).

    Args:
        keys: keys of the corresponding items to be transformed, e.g. ``"image"``.
            See also: :py:class:`monai.transforms.MapTransform`.
        lower: lower percentile in [0, 100], maps to ``b_min``. Default 1.
        upper: upper percentile in [0, 100], maps to ``b_max``. Default 99.
        b_min: output value of the lower percentile. Default -1.
        b_max: output value of the upper percentile. Default 1.
        channel_wise: compute the percentiles of every channel separately. Default True.
        dtype: output data type. Default float32.
        allow_missing_keys: don't raise an exception if a key is missing.

    Shapes:
        any channel-first array, e.g. ``(C, H, W, D)``; the output has the same shape and
        metadata, with values in ``[b_min, b_max]``.

    Raises:
        ValueError: ``lower >= upper``; NaN/Inf in the input; a constant image.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 1.0,
        upper: float = 99.0,
        b_min: float = -1.0,
        b_max: float = 1.0,
        channel_wise: bool = True,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(
                "RobustMRINormalized: expected percentiles 0 <= lower < upper <= 100, "
                f"got lower={lower}, upper={upper}."
            )
        super().__init__(
            keys,
            lower,
            upper,
            b_min,
            b_max,
            clip=True,
            relative=False,
            channel_wise=channel_wise,
            dtype=dtype,
            allow_missing_keys=allow_missing_keys,
        )

    def check(self, img: NdarrayOrTensor, name: str) -> list[tuple[float, float]]:
        """Raise ``ValueError`` naming ``name`` if ``img`` has NaN/Inf or is constant.

        Returns the ``(lower, upper)`` percentile values per channel (one pair when not
        ``channel_wise``), so the scaling does not compute them again.
        """
        t = _as_float_tensor(img)
        _check_finite(t, name)
        lower, upper = self.scaler.lower, self.scaler.upper
        channels = list(t) if self.scaler.channel_wise else [t]
        bounds = []
        for c, x in enumerate(channels):
            lo, hi = (float(v) for v in percentile(x.reshape(-1), [lower, upper]))
            if hi <= lo:
                where = f"channel {c}" if self.scaler.channel_wise else "the image"
                raise ValueError(
                    f"{name}: expected an MRI with contrast, got {where} with its {lower:g}th and "
                    f"{upper:g}th percentiles both {lo:g} (a constant image, or more than "
                    f"{upper - lower:g}% of voxels share one value). Fix: check that the file "
                    "holds the intended series (not an empty or mask volume) or widen lower/upper."
                )
            bounds.append((lo, hi))
        return bounds

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        s = self.scaler
        for key in self.key_iterator(d):
            img = d[key]
            bounds = self.check(img, source_name(img, key))
            # The percentiles are known now: scale with MONAI's ScaleIntensityRange on them, as
            # ScaleIntensityRangePercentiles does after computing them a second time itself.
            t = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
            channels = list(t) if s.channel_wise else [t]
            scaled = [
                ScaleIntensityRange(lo, hi, s.b_min, s.b_max, clip=True)(x)
                for x, (lo, hi) in zip(channels, bounds, strict=True)
            ]
            out = torch.stack(scaled) if s.channel_wise else scaled[0]
            # ScaleIntensityRange wraps plain tensors as MetaTensors with a default affine;
            # drop that so the input's metadata (affine, file name) is what the output carries.
            out = convert_to_tensor(out, track_meta=False)
            d[key] = convert_to_dst_type(out, dst=img, dtype=s.dtype)[0]
        return d


class ValueRangeCheckd(MapTransform):
    """Pass data through unchanged after checking it is finite and inside ``value_range``.

    For images that are already on the networks' scale, e.g. the synthesis bundle's synthetic
    MRI (generator ``tanh`` output in ``[-1, 1]``): normalising them again would shift them off
    the real-MRI scale the generator learned, so they get this check instead of a scaler. A
    file from elsewhere (raw MRI in scanner units, NaNs) raises an error naming it. Hand-written:
    MONAI has no check-only intensity transform.

    Args:
        keys: keys of the corresponding items to be checked, e.g. ``"image"``.
            See also: :py:class:`monai.transforms.MapTransform`.
        value_range: inclusive ``(low, high)`` the values must lie in. Default ``(-1, 1)``.
        tolerance: slack on both ends (float rounding of saved files). Default 1e-3.
        allow_missing_keys: don't raise an exception if a key is missing.

    Shapes:
        any array; returned as given (same object, same metadata).

    Raises:
        ValueError: NaN/Inf, or a value outside ``value_range`` (naming the file).
    """

    def __init__(
        self,
        keys: KeysCollection,
        value_range: tuple[float, float] = (-1.0, 1.0),
        tolerance: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise ValueError(f"ValueRangeCheckd: expected low < high, got {value_range}.")
        self.low, self.high, self.tolerance = low, high, float(tolerance)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            name = source_name(d[key], key)
            t = _as_float_tensor(d[key])
            _check_finite(t, name)
            lo, hi = float(t.min()), float(t.max())
            if lo < self.low - self.tolerance or hi > self.high + self.tolerance:
                raise ValueError(
                    f"{name}: expected values in [{self.low:g}, {self.high:g}] (already "
                    f"normalised, e.g. synthetic MRI from the synthesis bundle), got "
                    f"[{lo:g}, {hi:g}]. Fix: list raw MRI under a real-MRI split (it is "
                    "normalised there), or regenerate the synthetic MRI with the synthesis "
                    "bundle's inference.json."
                )
        return d
