"""The ``tumoraware`` command line (python-fire). Each command is a thin call into the modules.

tumoraware phantoms --out_dir data/phantoms --seed 0 --profile demo [--preview]
tumoraware manifest validate data_manifests/phantoms.json [--deep]
tumoraware demo [--seeds 0,1,2]
tumoraware reproduce --ct_manifest CT.json --mri_manifest MRI.json --profile paper
tumoraware dicom_out --mask M.nii.gz --series SERIES_DIR --out_dir OUT [--formats seg,rtstruct]
tumoraware monailabel serve --bundle dist/lung_mri_tumor_segmentation --studies DIR
tumoraware export_zoo --bundle bundles/NAME [--study runs/demo --seed 0 | --weights PATH/model.pt]
tumoraware verify_zoo dist/NAME [--ct_manifest CT.json --mri_manifest MRI.json]
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import fire

from tumoraware.cli_args import checked_argv_or_exit

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


class PrepareCommands:
    """Turn downloaded or local data into NIfTI + manifests (see data_manifests/README.md)."""

    def nsclc(
        self,
        dicom_root: str,
        out_dir: str = "data/nsclc_radiomics",
        roi: str = "GTV-1",
        allow_gaps: bool = False,
    ) -> None:
        """Convert a TCIA NSCLC-Radiomics download (CT + RTSTRUCT) patient by patient.

        Resumable; problems per patient go to OUT_DIR/skipped.csv and the batch goes on.
        Writes OUT_DIR/nsclc_radiomics.json.
        """
        from tumoraware.data.prepare import prepare_nsclc

        print(f"prepare nsclc: manifest {prepare_nsclc(dicom_root, out_dir, roi, allow_gaps)}")

    def msd(self, root: str, out_dir: str = "data_manifests", skip_missing: bool = False) -> None:
        """Write a manifest for an extracted MSD Task06_Lung folder (data stays in place)."""
        from tumoraware.data.prepare import prepare_msd

        print(f"prepare msd: manifest {prepare_msd(root, out_dir, skip_missing=skip_missing)}")

    def mri(
        self,
        images: str,
        out_dir: str = "data/own_t2w_mri",
        labels: str | None = None,
        test_patients: str | int | Sequence[str] = (),
    ) -> None:
        """Write a manifest for your own T2w MRI (NIfTI files or DICOM-series folders).

        Names: <patient>_week<N> (also -, wk, w; any case); no week part means week 1.
        Labels match by the same name, optionally suffixed _label, _seg or _mask.
        TEST_PATIENTS: comma-separated patients held out for testing.
        """
        from tumoraware.data.prepare import prepare_mri

        path = prepare_mri(images, out_dir, labels, test_patients)
        print(f"prepare mri: manifest {path}")


class MonaiLabelCommands:
    """Serve an exported segmentation bundle with MONAI Label 0.8.5 (its own environment)."""

    def setup(self, cache_dir: str | None = None, label_env: str = "monai15") -> None:
        """Build (once) the MONAI Label environment under ~/.cache/tumoraware (or CACHE_DIR).

        LABEL_ENV: monai15 (MONAI 1.5.2 pinned, the default) or monai16 (`pip install
        monailabel==0.8.5` as users install it: MONAI 1.6.x).
        """
        from tumoraware.label_server import ensure_label_env

        try:
            env = ensure_label_env(cache_dir, recipe=label_env)
        except RuntimeError as error:  # the install log's tail is the message
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        print(f"monailabel: environment {env.root} (torch, torchvision, monai, monailabel: "
              f"{env.versions})")  # fmt: skip

    def serve(
        self,
        bundle: str,
        studies: str,
        port: int = 8000,
        host: str = "127.0.0.1",
        app_dir: str | None = None,
        cache_dir: str | None = None,
        label_env: str = "monai15",
    ) -> None:
        """Start MONAI Label with BUNDLE (an exported bundle, e.g. dist/NAME) on STUDIES.

        Builds the environment on first use (a few minutes), copies the monaibundle app and
        the bundle (into APP_DIR/model/NAME), then runs the server on HOST:PORT (127.0.0.1,
        offline) until Ctrl-C. STUDIES holds NIfTI images; labels go in STUDIES/labels/final.
        LABEL_ENV: monai15 (MONAI 1.5.2, the default) or monai16 (MONAI 1.6.x, as pip picks it).
        """
        from tumoraware.label_server import serve

        try:
            serve(bundle, studies, port=port, host=host, app_dir=app_dir, cache_dir=cache_dir,
                  recipe=label_env)  # fmt: skip
        except RuntimeError as error:  # install or server failures quote their logs
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    def figure(
        self,
        weights: str | None = None,
        out_png: str = "bundles/lung_mri_tumor_segmentation/docs/images/monailabel_demo.png",
        work_dir: str = "runs/monailabel_demo",
        cache_dir: str | None = None,
    ) -> None:
        """The README figure: the demo's segmentation model exported, served by MONAI Label,
        its /infer masks (yellow) over the expert tumour (red) of held-out phantom MRI.

        WEIGHTS defaults to the demo's tumour-aware semi-supervised model (make demo).
        """
        from tumoraware.label_server.figure import DEMO_WEIGHTS, monailabel_demo_figure

        try:
            path = monailabel_demo_figure(
                weights or DEMO_WEIGHTS, out_png=out_png, work_dir=work_dir, cache_dir=cache_dir
            )
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        print(f"monailabel figure: {path}")


class TumourAwareCLI:
    """Tumour-aware CT→MRI domain adaptation for lung tumour segmentation on T2w MRI."""

    def __init__(self) -> None:
        self.manifest = ManifestCommands()
        self.prepare = PrepareCommands()
        self.monailabel = MonaiLabelCommands()

    def rtstruct_to_nifti(
        self,
        dicom_dir: str,
        rtstruct: str,
        out_dir: str,
        roi: str = "GTV-1",
        allow_gaps: bool = False,
    ) -> None:
        """Convert a DICOM CT series and one RTSTRUCT ROI to OUT_DIR/image.nii.gz + label.nii.gz.

        The series is the one the RTSTRUCT references (DICOM_DIR may hold several). A missing
        slice or uneven spacing is an error unless --allow_gaps (resample to a uniform grid).
        """
        from tumoraware.data.dicom import rtstruct_to_nifti

        image, label = rtstruct_to_nifti(dicom_dir, rtstruct, roi, out_dir, allow_gaps)
        print(f"rtstruct_to_nifti: {image}, {label}")

    def dicom_out(
        self,
        mask: str,
        series: str,
        out_dir: str,
        formats: str | tuple[str, ...] = "seg,rtstruct",
        model_name: str = "lung_mri_tumor_segmentation",
        model_version: str = "unknown",
        series_uid: str | None = None,
        resample: bool = False,
    ) -> None:
        """Write a NIfTI tumour mask as DICOM SEG and/or RTSTRUCT (ROI GTV) of its DICOM series.

        MASK (0/1 NIfTI, e.g. the bundle's runs/inference/<case>_seg.nii.gz) must lie on the
        grid of the series in SERIES (checked through its affine; any axis order). Writes
        OUT_DIR/<case>_seg.dcm and OUT_DIR/<case>_rtstruct.dcm, which reference the series'
        instances and copy its patient and study. --resample samples a mask on another grid
        onto the series (nearest neighbour); --series_uid picks a series in a shared folder.
        """
        from tumoraware.data.dicom.outputs import dicom_out

        paths = dicom_out(mask, series, out_dir, formats, model_name, model_version, series_uid,
                          resample)  # fmt: skip
        print(f"dicom_out: {', '.join(str(p) for p in paths.values())}")

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

    def reproduce(
        self,
        ct_manifest: str,
        mri_manifest: str,
        profile: str = "paper",
        seeds: int | str | tuple[int, ...] = 0,
        out_dir: str = "runs/reproduce",
        bundles_dir: str | None = None,
        workers: int = 1,
        tracking: str | None = None,
    ) -> None:
        """Run the paper's Table-1 study through both bundles and write the report.

        For each seed: train the three synthesis models (tumour-aware, CycleGAN, masked
        CycleGAN), evaluate their tumour KL, synthesise MRI from the CT; train the segmentation
        of the five Table-1 methods and evaluate each on the validation and test splits. Stages
        whose configs and inputs are unchanged are skipped, so an interrupted run continues.

        Args:
            ct_manifest: labelled CT, split ``ct_train``.
            mri_manifest: MRI splits ``mri_unlabelled``, ``mri_week1``, ``mri_validation``,
                ``mri_test``.
            profile: ``paper`` (the bundles' defaults, for a GPU), ``demo`` or ``test``.
            seeds: one seed or several (``0,1,2``): the study is repeated and the report gives
                mean ± std across seeds.
            out_dir: the study folder (``report.md``, ``report.json``, ``table1.csv``, stages).
            bundles_dir: the folder with both bundles (default: this checkout's ``bundles/``).
            workers: stages run at once where their inputs allow, each with cores / workers
                threads (on a small CPU one training leaves cores idle, so 2 overlap the
                stages; keep 1 on one GPU).
            tracking: ``mlflow``: the whole study in one MLflow experiment (SQLite in OUT_DIR):
                every training and evaluation stage a run tagged with its seed and method, and
                a run ``table1`` with Table 1 and the report.
        """
        from tumoraware.pipeline import run_study
        from tumoraware.pipeline.tracking import check_tracking

        tracking = check_tracking(tracking)

        if isinstance(seeds, str):
            seeds = tuple(int(s) for s in seeds.split(",") if s.strip())
        seed_list = (seeds,) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
        if profile not in ("paper", "demo", "test"):
            raise ValueError(f"reproduce: unknown profile {profile!r}; choose paper, demo or test.")
        _check_data(ct_manifest, mri_manifest)
        run_study(out_dir, ct_manifest, mri_manifest, seed_list,
                  None if profile == "paper" else profile, bundles_dir,
                  workers=workers, tracking=tracking)  # fmt: skip

    def demo(
        self,
        out_dir: str = "runs/demo",
        data_dir: str = "data/phantoms",
        seeds: int | str | tuple[int, ...] = 0,
        world_seed: int = 0,
        profile: str = "demo",
        world: str = "demo",
        manifest: str = "data_manifests/phantoms.json",
        workers: int = 2,
        tracking: str | None = None,
    ) -> None:
        """The paper end to end on the embedded phantom world (2-core CPU, ``demo`` profile).

        Generates the demo phantom world if missing (existing volumes are kept) and
        deep-validates its manifest, then runs the Table-1 study: three synthesis models, five
        segmentation methods, validation and test evaluation, ``OUT_DIR/report.md`` with the
        figures. Resumable: a re-run skips every stage whose configs and inputs are unchanged.

        Args:
            out_dir: the study folder.
            data_dir: where the phantom volumes live (or are generated).
            seeds: study seed(s), e.g. ``0,1,2`` to report mean ± std across seeds.
            world_seed: seed of the phantom world itself.
            profile: bundle profile of the study (``demo``; ``test``, the smallest, for tests).
            world: phantom world size (``demo``; ``tiny`` for tests).
            manifest: where the phantom world's datalist is (or is written).
            workers: stages run at once (each with cores / workers threads); 2 keeps both
                cores of a 2-core CPU busy, 1 runs them one after another.
            tracking: ``mlflow``: the study in one MLflow experiment (see ``reproduce``).
        """
        from tumoraware.pipeline.tracking import check_tracking

        check_tracking(tracking)  # before the phantoms: a bad flag writes nothing
        self.phantoms(out_dir=data_dir, seed=world_seed, profile=world, manifest=manifest,
                      preview=True)  # fmt: skip
        self.reproduce(manifest, manifest, profile=profile, seeds=seeds, out_dir=out_dir,
                       workers=workers, tracking=tracking)  # fmt: skip

    def export_zoo(
        self,
        bundle: str,
        weights: str | None = None,
        out_dir: str = "dist",
        overrides: str | Sequence[str] | None = None,
        key: str | None = None,
        report: str | None = None,
        study: str = "runs/demo",
        seed: int = 0,
        method: str | None = None,
    ) -> None:
        """Export BUNDLE with the weights STUDY trained (or WEIGHTS) as a Model Zoo bundle.

        Writes OUT_DIR/NAME/ (the tumoraware code the configs use vendored into scripts/,
        models/model.pt, model.ts via ckpt_export, model.onnx when onnx is installed, Model Zoo
        docs with the numbers of REPORT, large_files.yml) and the deterministic OUT_DIR/NAME.zip.

        Args:
            bundle: the source bundle folder, e.g. bundles/lung_mri_tumor_segmentation.
            weights: state_dict of the inference network; default: STUDY's weights of SEED and
                METHOD.
            out_dir: where NAME/ and NAME.zip go (replaced if present).
            overrides: override configs the weights were trained with (comma-separated, relative
                to the bundle), merged into the exported configs. Default: those recorded in the
                weights' stage.json (tumoraware demo / reproduce runs) except the data recipes
                in configs/variants/; "" for none.
            key: take network KEY from a nested checkpoint (e.g. g_ct2mri).
            report: the study report.json whose numbers go into the docs; default: STUDY's.
            study: the study folder (tumoraware demo / reproduce) whose weights are exported.
            seed: the study seed whose weights are exported.
            method: the study method whose weights are exported; default: the paper's
                (tumour_aware for synthesis, tumour_aware_semi_supervised for segmentation).
        """
        from tumoraware.export import export_bundle, main_summary, study_model

        trained = study_model(bundle, study, seed, method)
        result = export_bundle(bundle, weights or trained.weights, out_dir, overrides, key,
                               report or trained.report)  # fmt: skip
        print(main_summary(result))

    def verify_zoo(
        self,
        bundle_dir: str,
        ct_manifest: str | None = None,
        mri_manifest: str | None = None,
        synthetic_manifest: str | None = None,
        schema: str | None = None,
        runs: bool = True,
    ) -> None:
        """Run the Model Zoo CI checks on an exported bundle (exit 1 if any fails).

        Required files, version in changelog, metadata schema (20240725), verify_net_in_out,
        ckpt_export + torch.jit.load, ConfigWorkflow properties, no tumoraware reference, then
        (unless --runs False) one training iteration and an inference run, each in a subprocess
        with only the bundle on PYTHONPATH and tumoraware unimportable. Without manifests a
        tiny phantom world is generated for the runs.
        """
        from tumoraware.export import format_results, verify_bundle

        results = verify_bundle(bundle_dir, ct_manifest, mri_manifest, synthetic_manifest,
                                schema=schema, runs=runs)  # fmt: skip
        print(format_results(results))
        failed = [r.name for r in results if not r.ok]
        print(f"verify_zoo: {len(results) - len(failed)}/{len(results)} checks passed")
        if failed:
            sys.exit(1)


def _check_data(*manifests: str) -> None:
    """Deep-validate the manifests before any training: bad data stops here, not in hour 3.

    A passed check is remembered per data set (see :func:`check_manifest`), so a resumed study
    on unchanged data does not read every volume again.
    """
    from tumoraware.data.manifest import check_manifest

    for manifest in dict.fromkeys(manifests):
        start = time.perf_counter()
        check_manifest(manifest, deep=True, progress=sys.stderr.isatty())
        print(f"data: {manifest}: deep checks passed ({time.perf_counter() - start:.1f} s)")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _fail(error: BaseException, debug: bool, code: int) -> None:
    """Print ``error`` as one message (the traceback with ``--debug``, else saved to a file)."""
    import traceback

    from tumoraware.errors import save_traceback, user_message

    if debug:
        traceback.print_exception(error)
    print(f"error: {user_message(error)}", file=sys.stderr)
    if not debug:
        saved = save_traceback(error)
        where = f"; it is saved in {saved}" if saved else ""
        print(f"(run with --debug for the traceback{where})", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tumoraware`` console script and ``python -m tumoraware``.

    Our errors (bad input: ``ValueError``, ``FileNotFoundError``, ...; a failed bundle stage or
    install: ``RuntimeError``) print as their message, which names the file and the fix, with
    exit code 2 (bad input) or 1; ``--debug`` (anywhere on the line, or ``TUMORAWARE_DEBUG=1``)
    shows the full traceback too. Other exceptions are bugs and keep Python's traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.formatwarning = _one_line_warning
    raw = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in raw or os.environ.get("TUMORAWARE_DEBUG", "") not in ("", "0")
    raw = [arg for arg in raw if arg != "--debug"]
    # Checked before fire runs anything: fire calls the command first and rejects leftover
    # flags afterwards (google/python-fire#168).
    args = checked_argv_or_exit(TumourAwareCLI, raw)
    try:
        fire.Fire(TumourAwareCLI, command=args, name="tumoraware")
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        _fail(error, debug, _EXIT_BAD_INPUT)
    except RuntimeError as error:  # a failed stage or install: its message holds cause and log
        _fail(error, debug, 1)
