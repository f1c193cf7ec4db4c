"""Write the (synthetic MRI, label) pairs an inference run saved as a manifest for bundle 2."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from tumoraware import __version__
from tumoraware.data.prepare._common import base_dir_for, relative_posix, write_manifest_checked

__all__ = ["PairedManifestWriter"]


def _saved_to(item: Any) -> str | None:
    meta = getattr(item, "meta", None) or {}
    return meta.get("saved_to")


def _patient(source: str) -> str:
    stem = Path(str(source)).name
    stem = re.sub(r"(\.nii(\.gz)?)$", "", stem)
    return re.sub(r"_image$", "", stem)


class PairedManifestWriter:
    """Collect what ``SaveImaged(..., savepath_in_metadict=True)`` wrote; write a manifest.

    Attach to the inference evaluator (``decollate=True``, the default). Every iteration's
    output items give ``pred`` (the synthetic MRI) and ``label`` saved paths; at completion
    the manifest lists them as split ``split`` with ``modality`` ``MR``, paths relative to
    the manifest's folder, and is validated before it is written (atomic).

    Args:
        manifest: path of the manifest to write.
        split: split name, e.g. ``synthetic_train``.
        image_key, label_key: output keys whose saved paths form a pair.
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        split: str = "synthetic_train",
        image_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        self.manifest = Path(manifest)
        self.split = split
        self.image_key, self.label_key = image_key, label_key
        self.pairs: list[dict[str, str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.pairs.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            image, label = _saved_to(item[self.image_key]), _saved_to(item[self.label_key])
            if image is None or label is None:
                raise RuntimeError(
                    f"PairedManifestWriter: expected saved paths of {self.image_key!r} and "
                    f"{self.label_key!r} in the output metadata, got {image!r}, {label!r}. Fix: "
                    "save both with SaveImaged(..., savepath_in_metadict=True) in postprocessing."
                )
            source = item[self.image_key].meta.get("filename_or_obj", image)
            self.pairs.append({"image": image, "label": label, "patient": _patient(source)})

    def write(self, engine: Engine) -> None:
        folder = self.manifest.parent
        folder.mkdir(parents=True, exist_ok=True)
        files = [p for pair in self.pairs for p in (pair["image"], pair["label"])]
        write_manifest_checked(
            self.manifest,
            {
                "name": "synthetic MRI from CT",
                "description": "Synthetic T2w MRI tumour-region volumes made by the CT->MRI "
                "generator of bundle lung_ct2mri_synthesis, with the CT tumour labels on the same "
                "grid; the training data of bundle lung_mri_tumor_segmentation.",
                "labels": {"0": "background", "1": "tumor"},
                "base_dir": base_dir_for(folder, files),
                "generator": {"tool": "lung_ct2mri_synthesis inference", "version": __version__},
                self.split: [
                    {
                        "image": relative_posix(pair["image"], folder),
                        "label": relative_posix(pair["label"], folder),
                        "modality": "MR",
                        "patient": pair["patient"],
                    }
                    for pair in self.pairs
                ],
            },
        )
