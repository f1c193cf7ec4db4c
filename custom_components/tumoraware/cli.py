"""The ``tumoraware`` command line (python-fire). Each command is a thin call into the modules.

tumoraware phantoms --out_dir data/phantoms --seed 0 --profile demo [--preview]
tumoraware manifest validate data_manifests/phantoms.json [--deep]
tumoraware demo
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import fire

__all__ = ["main"]

_EXIT_BAD_INPUT = 2


class ManifestCommands:
    """Check data manifests (MONAI datalist JSON)."""

    def validate(self, file: str, deep: bool = False) -> None:
        """Report every problem in manifest FILE (schema, paths; with --deep also the volumes).

        Exits 0 when the manifest is sound, 2 when any problem was found.
        """
        from tumoraware.data.manifest import run_validate

        code = run_validate(file, deep=deep)
        if code:
            sys.exit(code)


class TumourAwareCLI:
    """Tumour-aware CT→MRI domain adaptation for lung tumour segmentation on T2w MRI."""

    def __init__(self) -> None:
        self.manifest = ManifestCommands()

    def phantoms(
        self,
        out_dir: str = "data/phantoms",
        seed: int = 0,
        profile: str = "demo",
        manifest: str = "data_manifests/phantoms.json",
        preview: bool = False,
        overwrite: bool = False,
    ) -> None:
        """Generate the phantom thorax world (NIfTI) and its manifest.

        Args:
            out_dir: folder for the volumes (ct/, mri/, mri_test/, preview/).
            seed: the same seed always gives byte-identical volumes.
            profile: tiny (tests), demo (2-core CPU) or full (closer to the paper's counts).
            manifest: where to write the MONAI datalist (paths relative to it).
            preview: also write one quick-look PNG per split under OUT_DIR/preview/.
            overwrite: regenerate volumes that already exist.
        """
        from tumoraware.data.phantoms import generate_world

        start = time.perf_counter()
        path = generate_world(out_dir, seed, profile, manifest, preview, overwrite)
        print(
            f"phantoms: world in {out_dir}, manifest {path} ({time.perf_counter() - start:.1f} s)"
        )
        if preview:
            print(f"phantoms: previews in {Path(out_dir) / 'preview'}")

    def demo(self, out_dir: str = "data/phantoms", seed: int = 0) -> None:
        """Run what exists of the paper's pipeline on the embedded phantom data.

        Today: generate the demo phantom world with previews and deep-validate its manifest.
        Synthesis, segmentation and the Table-1 report join as their bundles land.
        """
        manifest = "data_manifests/phantoms.json"
        print(
            "demo: the bundles (synthesis, segmentation, report) are not built yet; this demo "
            "generates the phantom world and validates it."
        )
        self.phantoms(out_dir=out_dir, seed=seed, profile="demo", manifest=manifest, preview=True)
        self.manifest.validate(manifest, deep=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tumoraware`` console script and ``python -m tumoraware``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(TumourAwareCLI, command=argv, name="tumoraware")
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(_EXIT_BAD_INPUT)
