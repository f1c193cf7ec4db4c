"""Synthesise MRI from CT with G, then let an independent reader segment it, in one inferer.

The tumour-preservation evaluation needs the reader's prediction on ``G(CT)``: writing the
synthetic MRI to disk first (bundle 1's ``inference.json``) and reading it back with bundle 2 would
work, but costs a NIfTI round trip per model and split, and the two bundles' crops would have to
be kept in step by hand. Here one MONAI ``SupervisedEvaluator`` does both: its ``network`` is G,
and this inferer runs G slice by slice (``synthesis_inferer``, MONAI's ``SliceInferer``) and then
the reader over the synthetic volume (``reader_inferer``, e.g. a ``SliceInferer`` with the reader's
own sliding window), exactly as the segmentation bundle evaluates real MRI.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.inferers import Inferer
from torch import nn

from tumoraware.errors import check_state_dict

__all__ = ["SynthesiseThenReadInferer", "load_reader"]


class SynthesiseThenReadInferer(Inferer):
    """``reader_inferer(synthesis_inferer(x, G)[:, :1], reader)``: the reader's logits on G(x).

    Args:
        reader: the segmentation network that reads the synthetic MRI (kept in eval mode).
        synthesis_inferer: runs G (the evaluator's ``network``) over the CT input, e.g.
            ``SliceInferer(roi_size=region, spatial_dim=2)``.
        reader_inferer: runs the reader over the synthetic MRI, e.g. a ``SliceInferer`` with the
            reader's window and overlap.
        append_synthetic: also return the synthetic MRI as one more channel after the logits
            (split it off in postprocessing, e.g. for figures of what the reader read).

    Shapes:
        ``__call__(inputs, network)``: ``(B, C, H, W, D)`` CT (``C = 2`` for the masked
        CycleGAN: image + mask channel) → reader logits ``(B, K, H, W, D)`` (``K + 1`` channels
        with ``append_synthetic``, the last the synthetic MRI). Only the first
        output channel of G (the synthetic image) reaches the reader. With
        ``network = torch.nn.Identity()`` the reader reads the input itself (its ceiling on
        real MRI).
    """

    def __init__(
        self,
        reader: nn.Module,
        synthesis_inferer: Inferer,
        reader_inferer: Inferer,
        append_synthetic: bool = False,
    ) -> None:
        super().__init__()
        self.reader = reader
        self.synthesis_inferer = synthesis_inferer
        self.reader_inferer = reader_inferer
        self.append_synthetic = bool(append_synthetic)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        self.reader.eval()
        with torch.no_grad():
            synthetic = self.synthesis_inferer(inputs, network, *args, **kwargs)[:, :1]
            logits = self.reader_inferer(synthetic, self.reader)
            if self.append_synthetic:
                return torch.cat([logits, synthetic.to(logits.dtype)], dim=1)
            return logits


def load_reader(
    config_files: str | os.PathLike | Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    network_key: str = "network_def",
    pixel_mm: float | None = None,
) -> nn.Module:
    """The reader: ``network_key`` of the segmentation bundle's configs, with its trained weights.

    Args:
        config_files: the segmentation bundle's ``configs/train.json`` and the profile it was
            trained with (later files override earlier ones), so the architecture is the one the
            weights were trained with.
        checkpoint: its ``models/model.pt`` (a state dict, or ``{"model": state_dict}``).
        device: where the reader runs.
        network_key: the config id of the network definition.
        pixel_mm: the pixel size (mm) of the images the reader will read; checked against the
            reader's own ``crop_mm / spatial_size[0]`` when its config has both, because a
            reader shown tumours at another scale than it learned them reads them badly.

    Raises:
        FileNotFoundError: a config or the checkpoint is missing (naming it).
        ValueError: the weights do not fit the architecture, or the pixel sizes differ
            (naming the files).
    """
    files = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
    for path in [*files, checkpoint]:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"reader: {path} does not exist. Fix: pass the segmentation bundle's configs "
                "(reader_configs) and the weights of a model trained on real MRI only "
                "(reader_checkpoint), e.g. a week_one_only run's models/model.pt."
            )
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    if pixel_mm is not None and "crop_mm" in parser and "spatial_size" in parser:
        own = float(parser.get_parsed_content("crop_mm")) / float(
            parser.get_parsed_content("spatial_size")[0]
        )
        if abs(own - float(pixel_mm)) > 0.01 * own:
            raise ValueError(
                f"reader: {files} trains on {own:.3f} mm pixels, the images to read have "
                f"{float(pixel_mm):.3f} mm. Fix: give both bundles the same crop_mm and "
                "spatial_size (the same profile)."
            )
    network = parser.get_parsed_content(network_key, instantiate=True)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    check_state_dict(
        network, state, f"{network_key} of {files}", checkpoint,
        "pass the reader_configs (profile included) the reader was trained with.",
    )  # fmt: skip
    network.load_state_dict(state)
    return network.to(device).eval()
