"""Whole-scan inference in two passes: a coarse look at every slice, the network's own scale only
where the coarse look found something.

Sliding a 2D window of the network's working scale over whole slices costs as many windows as the
field of view holds (a 384-mm slice at 0.375 mm is 16 windows without overlap, 49 at overlap 0.5),
while the tumour fills a few of them. :class:`CoarseToFineInferer` first runs a coarse network
over every slice shrunk by ``coarse_factor``, takes the 3D connected components of its tumour
probability as proposals, and slides the network at full resolution only over a box around each
proposal (grown in-plane by ``margin`` and across slices by ``slice_margin``). Everything outside
the boxes keeps the coarse pass's logits, upsampled.

The coarse network is best one trained at the coarse scale (``coarse_network``, e.g. this
bundle's ``demo``-profile U-Net, trained at 1.5 mm, for the paper's 0.375 mm): a segmentation
network trained at one scale misses most tumours on slices shrunk 2-4 times, so without
``coarse_network`` (the network itself on the shrunk slices) proposals are unreliable
(``docs/benchmarks.md``, "Whole-scan inference").

Inside a box the fine pass is MONAI's ``SliceInferer`` with the sliding inferer's own window,
overlap and blending, over a crop with ``margin`` of context on each side, so a tumour well
inside a box gets the answer the whole-slice sliding window gives it, up to where the windows
fall.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SliceInferer
from monai.utils import convert_to_dst_type
from scipy import ndimage
from torch import nn
from torch.nn import functional as nnf

__all__ = ["CoarseToFineInferer", "whole_scan_inferer", "windows_per_slice"]

Box = tuple[slice, slice, slice]  # in-plane rows, in-plane columns, slices (of one volume)


def windows_per_slice(size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's sliding window places on one slice of in-plane ``size``.

    The same count as ``monai.inferers.sliding_window_inference`` (a slice smaller than the window
    is padded to it: one window along that axis).
    """
    count = 1
    for s, r in zip(size, roi_size, strict=True):
        interval = max(int(r * (1 - overlap)), 1)
        count *= 1 if s <= r else math.ceil((s - r) / interval) + 1
    return count


class CoarseToFineInferer(Inferer):
    """Slice-by-slice inference of a 2D network over whole scans: coarse pass, then fine boxes.

    Args:
        roi_size: the network's window (2 ints), as for ``SliceInferer``.
        sw_batch_size: windows per network call, both passes.
        overlap: window overlap of both passes (a fraction in [0, 1)).
        mode: blending of overlapping windows, ``"gaussian"`` or ``"constant"``.
        spatial_dim: the axis of the slices in ``(H, W, D)``: 2 for axial slices of an RAS
            volume (the bundles'), as for ``SliceInferer``.
        coarse_factor: how much smaller (> 1) each slice is for the coarse pass (area-averaged):
            the coarse network's pixel size over the network's (4 for a 1.5-mm proposer and a
            0.375-mm network).
        coarse_network: the proposer, a 2D network ``(N, C, h, w)`` → ``(N, K', h, w)`` trained
            at the coarse scale (kept in eval mode); ``None``: ``network`` itself.
        coarse_roi_size: the coarse network's window (2 ints); default ``roi_size``.
        coarse_checkpoint: weights for ``coarse_network`` (a state dict, or
            ``{"model": state_dict}``), read at the first call that needs them, so a config can
            build this inferer whether or not it is used.
        threshold: coarse tumour probability (1 - softmax of channel 0, or the sigmoid of a
            single-channel output) from which a coarse pixel is a proposal.
        margin: in-plane context around each proposal for the fine pass, a fraction of
            ``roi_size`` on each side; the fine crop is also at least ``roi_size`` wide.
        slice_margin: slices above and below each proposal that the fine pass also covers (a
            tumour's thin ends are easy to miss at the coarse scale).
        max_regions: refine only this many proposals, those with the largest summed coarse
            tumour probability (bounds the time on a scan full of false proposals); ``None``:
            all of them.
        sliding_kwargs: other ``SliceInferer`` arguments for both passes (``padding_mode``,
            ``cval``, ``sigma_scale``, ...; not ``device``/``sw_device``: inputs and network
            share a device here).

    Shapes:
        ``__call__(inputs, network)``: ``(B, C, H, W, D)`` (slices along ``spatial_dim``) →
        ``(B, K, H, W, D)`` logits of a ``network`` mapping ``(N, C, h, w)`` to ``(N, K, h, w)``.
        When a whole slice fits one window at full resolution (or, with the network itself as
        the coarse network, needs no more windows than the coarse pass would), it is a plain
        ``SliceInferer`` (same output). ``last_stats`` holds the last call's window
        counts: ``coarse_windows``, ``fine_windows``, ``sliding_windows`` (what the whole-slice
        sliding window would have evaluated) and ``regions`` (proposals refined).

    Raises:
        ValueError: bad arguments, inputs that are not ``(B, C, H, W, D)``, or weights that do
            not fit ``coarse_network``.
        FileNotFoundError: ``coarse_checkpoint`` is missing when the coarse pass needs it.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: float = 0.5,
        mode: str = "gaussian",
        spatial_dim: int = 2,
        coarse_factor: float = 4.0,
        threshold: float = 0.5,
        margin: float = 0.25,
        slice_margin: int = 1,
        max_regions: int | None = None,
        coarse_network: nn.Module | None = None,
        coarse_roi_size: Sequence[int] | int | None = None,
        coarse_checkpoint: str | os.PathLike | None = None,
        **sliding_kwargs: Any,
    ) -> None:
        super().__init__()
        roi = _window(roi_size, "roi_size")
        coarse_roi = roi if coarse_roi_size is None else _window(coarse_roi_size, "coarse_roi_size")
        if coarse_checkpoint is not None and coarse_network is None:
            raise ValueError("coarse_checkpoint needs a coarse_network to load it into")
        if spatial_dim not in (0, 1, 2):
            raise ValueError(
                f"spatial_dim must be 0, 1 or 2 (an axis of H, W, D), got {spatial_dim}"
            )
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if not coarse_factor > 1.0:
            raise ValueError(
                f"coarse_factor must be > 1 (how much smaller the coarse slices are), got "
                f"{coarse_factor}; for no coarse pass use SliceInferer (whole_scan_mode 'sliding')"
            )
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}")
        if margin < 0 or slice_margin < 0:
            raise ValueError(f"margin and slice_margin must be >= 0, got {margin}, {slice_margin}")
        if max_regions is not None and max_regions < 1:
            raise ValueError(f"max_regions must be >= 1 or None (all), got {max_regions}")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        for key in ("device", "sw_device"):
            if key in sliding_kwargs:
                raise ValueError(f"{key} is not supported: move the inputs to the network's device")
        self.roi_size = roi
        self.overlap = float(overlap)
        self.spatial_dim = int(spatial_dim)
        self.coarse_factor = float(coarse_factor)
        self.threshold = float(threshold)
        self.margin = float(margin)
        self.slice_margin = int(slice_margin)
        self.max_regions = max_regions
        self.coarse_network = coarse_network
        self.coarse_roi_size = coarse_roi
        self.coarse_checkpoint = coarse_checkpoint
        self._coarse_loaded = coarse_checkpoint is None
        # both passes see the volume with its slices last (see _to_hwd)
        self.sliding = SliceInferer(
            roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, spatial_dim=2,
            **sliding_kwargs,
        )  # fmt: skip
        self.coarse_sliding = SliceInferer(
            roi_size=coarse_roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
            spatial_dim=2, **sliding_kwargs,
        )  # fmt: skip
        self.last_stats: dict[str, int | str] = {}

    # -------------------------------------------------------------------------------------------
    # geometry: the in-plane axes are the two of (H, W, D) that are not ``spatial_dim``

    def _plane_axes(self) -> list[int]:
        return [a for a in range(3) if a != self.spatial_dim]

    def _to_hwd(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` with the slice axis last: ``(B, C, h, w, slices)``."""
        a, b = self._plane_axes()
        return x.permute(0, 1, a + 2, b + 2, self.spatial_dim + 2)

    def _from_hwd(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`_to_hwd`."""
        order = [*self._plane_axes(), self.spatial_dim]
        return x.permute(0, 1, *[order.index(a) + 2 for a in range(3)])

    # -------------------------------------------------------------------------------------------

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Logits ``(B, K, H, W, D)`` of ``network`` over every slice of ``inputs``."""
        if inputs.ndim != 5:
            raise ValueError(
                f"CoarseToFineInferer needs a batch of 3D volumes (B, C, H, W, D), got shape "
                f"{tuple(inputs.shape)}"
            )
        counter = {"coarse": 0, "fine": 0}

        def counted(key: str, net: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
            def run(x: torch.Tensor) -> torch.Tensor:
                counter[key] += x.shape[0]
                return net(x, *args, **kwargs)

            return run

        temp_meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(
            inputs, MetaTensor) else None  # fmt: skip
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        x = self._to_hwd(x)  # (B, C, H, W, S)
        full = [int(s) for s in x.shape[2:4]]
        coarse = [max(1, round(s / self.coarse_factor)) for s in full]
        n_slices = int(x.shape[0] * x.shape[4])
        sliding_windows = windows_per_slice(full, self.roi_size, self.overlap) * n_slices
        per_slice = windows_per_slice(full, self.roi_size, self.overlap)
        same = self.coarse_network is None
        with torch.no_grad():
            regions = 0
            if per_slice <= (windows_per_slice(coarse, self.roi_size, self.overlap) if same else 1):
                out = self._slide(x, counted("fine", network))
            else:
                proposer = network if same else self._proposer(x.device)
                out, regions = self._coarse_to_fine(
                    x, counted("fine", network), counted("coarse", proposer), coarse
                )
        self.last_stats = {
            "mode": "coarse_to_fine" if counter["coarse"] else "sliding",
            "coarse_windows": counter["coarse"], "fine_windows": counter["fine"],
            "regions": regions, "sliding_windows": sliding_windows,
        }  # fmt: skip
        out = self._from_hwd(out).contiguous()
        return convert_to_dst_type(out, temp_meta if temp_meta is not None else inputs,
                                   device=out.device)[0]  # fmt: skip

    def _proposer(self, device: torch.device) -> Callable[..., torch.Tensor]:
        """The coarse network in eval mode on ``device``, its weights read on first use."""
        network = self.coarse_network
        assert network is not None
        if not self._coarse_loaded:
            path = self.coarse_checkpoint
            assert path is not None
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"coarse_checkpoint {path} does not exist. Fix: put the weights of this "
                    "bundle's network trained at the coarse scale there (e.g. a demo-profile "
                    "models/model.pt for the paper's 0.375 mm), or use whole_scan_mode 'sliding'."
                )
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
            try:
                network.load_state_dict(state)
            except RuntimeError as error:
                raise ValueError(
                    f"coarse_checkpoint {path} does not fit coarse_network (Fix: give the "
                    f"architecture it was trained with): {error}"
                ) from error
            self._coarse_loaded = True
        return network.to(device).eval()

    def _slide(
        self, x: torch.Tensor, network: Callable[..., torch.Tensor], coarse: bool = False
    ) -> torch.Tensor:
        """Whole-slice sliding window of ``(B, C, h, w, S)``, slices last → ``(B, K, h, w, S)``."""
        out = (self.coarse_sliding if coarse else self.sliding)(x, network)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the network must return one tensor, got {type(out).__name__}")
        return out

    def _coarse_to_fine(
        self,
        x: torch.Tensor,
        network: Callable[..., torch.Tensor],
        proposer: Callable[..., torch.Tensor],
        coarse: list[int],
    ) -> tuple[torch.Tensor, int]:
        """The two passes over ``(B, C, H, W, S)`` (slices last) → ``(B, K, H, W, S)`` logits
        and the number of boxes refined."""
        n_slices = int(x.shape[4])
        small = nnf.interpolate(x, size=(*coarse, n_slices), mode="area")
        coarse_logits = self._slide(small, proposer, coarse=True)  # (B, K, h, w, S)
        out = nnf.interpolate(coarse_logits, size=tuple(x.shape[2:]), mode="trilinear",
                              align_corners=False)  # fmt: skip
        probability = self.tumour_probability(coarse_logits)  # (B, h, w, S)
        regions = 0
        for b in range(x.shape[0]):
            boxes = self.proposals(probability[b], tuple(int(s) for s in x.shape[2:]))
            regions += len(boxes)
            count = torch.zeros(x.shape[2:], dtype=torch.int16, device=out.device)  # (H, W, S)
            for box in boxes:
                fine = self._slide(x[b : b + 1, :, box[0], box[1], box[2]], network)[0]
                if fine.shape[0] != out.shape[1]:
                    raise ValueError(
                        f"the coarse network gives {out.shape[1]} channels, the network "
                        f"{fine.shape[0]}: they must segment the same classes"
                    )
                seen = count[box]
                target = out[b, :, box[0], box[1], box[2]]
                target.copy_((target * seen + fine) / (seen + 1))  # running mean over boxes
                seen += 1  # a view of count: boxes that overlap are averaged
        return out, regions

    def tumour_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, K, ...)`` logits → ``(B, ...)`` probability of any class but channel 0."""
        if logits.shape[1] == 1:
            return torch.sigmoid(logits[:, 0])
        return 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]

    def proposals(self, probability: torch.Tensor, full: tuple[int, int, int]) -> list[Box]:
        """Fine-pass boxes from one volume's coarse probability.

        Args:
            probability: ``(h, w, S)`` coarse tumour probability, slices last.
            full: ``(H, W, S)``, the full-resolution shape the boxes index.

        Returns:
            ``(rows, columns, slices)`` slices of the full grid: each 3D connected component at
            or above ``threshold`` (the ``max_regions`` most probable), grown by ``margin`` of
            the window in-plane (and to at least the window) and by ``slice_margin`` slices.
        """
        values = probability.detach().float().cpu().numpy()
        labels, n = ndimage.label(values >= self.threshold)
        if n == 0:
            return []
        objects = ndimage.find_objects(labels)
        order = list(range(n))
        if self.max_regions is not None and n > self.max_regions:
            mass = ndimage.sum_labels(values, labels, index=np.arange(1, n + 1))
            order = sorted(order, key=lambda i: -float(mass[i]))[: self.max_regions]
        boxes = []
        for i in order:
            rows, cols, slices = objects[i]
            plane = []
            for axis, sl in enumerate((rows, cols)):
                scale = full[axis] / values.shape[axis]
                grow = round(self.margin * self.roi_size[axis])
                start = math.floor(sl.start * scale) - grow
                stop = math.ceil(sl.stop * scale) + grow
                plane.append(_at_least(start, stop, self.roi_size[axis], full[axis]))
            z = slice(max(slices.start - self.slice_margin, 0),
                      min(slices.stop + self.slice_margin, full[2]))  # fmt: skip
            boxes.append((plane[0], plane[1], z))
        return boxes


def _window(size: Sequence[int] | int, name: str) -> list[int]:
    """A 2D window as 2 positive ints (``64`` → ``[64, 64]``)."""
    window = [int(size)] * 2 if isinstance(size, int) else [int(r) for r in size]
    if len(window) != 2 or min(window) < 1:
        raise ValueError(f"{name} must be 2 positive ints (a 2D window), got {size!r}")
    return window


def _at_least(start: int, stop: int, size: int, length: int) -> slice:
    """``[start, stop)`` grown about its centre to ``size`` (where ``length`` allows), in range."""
    if stop - start < size:
        centre = (start + stop) / 2
        start, stop = math.floor(centre - size / 2), math.floor(centre - size / 2) + size
    if start < 0:
        start, stop = 0, stop - start
    if stop > length:
        start, stop = start - (stop - length), length
    return slice(max(start, 0), min(stop, length))


def whole_scan_inferer(
    mode: str,
    sliding: Callable[[], Inferer],
    coarse_to_fine: Callable[[], Inferer],
    coarse_checkpoint: str | os.PathLike | None = None,
) -> Inferer:
    """Build the whole-scan inferer ``mode`` names (a bundle's ``whole_scan_mode``).

    Args:
        mode: ``"sliding"`` (every window of every slice), ``"coarse_to_fine"``, or ``"auto"``:
            coarse-to-fine where ``coarse_checkpoint`` exists, else sliding.
        sliding: builds the sliding inferer (a config component with ``"_mode_": "callable"``,
            so only the chosen inferer is built and checked).
        coarse_to_fine: builds the :class:`CoarseToFineInferer`.
        coarse_checkpoint: the coarse network's weights.

    Raises:
        ValueError: an unknown ``mode`` (the choices listed).
        FileNotFoundError: ``"coarse_to_fine"`` without ``coarse_checkpoint``.
    """
    modes = ("auto", "coarse_to_fine", "sliding")
    if mode not in modes:
        raise ValueError(
            f"whole_scan_mode must be one of {list(modes)}, got {mode!r}. Fix: set it to one of "
            "them, e.g. --whole_scan_mode sliding."
        )
    ready = coarse_checkpoint is not None and os.path.isfile(coarse_checkpoint)
    if mode == "coarse_to_fine" and not ready:
        raise FileNotFoundError(
            f"whole_scan_mode 'coarse_to_fine' needs the coarse network's weights, and "
            f"coarse_ckpt_path {coarse_checkpoint} does not exist. Fix: put there this bundle's "
            "model trained at the coarse scale (crop_mm / spatial_size = coarse_crop_mm / "
            "coarse_spatial_size), or use whole_scan_mode 'auto' or 'sliding'."
        )
    return coarse_to_fine() if mode == "coarse_to_fine" or (mode == "auto" and ready) else sliding()
