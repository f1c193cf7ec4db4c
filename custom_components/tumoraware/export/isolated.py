"""Run MONAI bundle commands the way a Model Zoo user would: no ``tumoraware`` importable.

This file is executed as a script in a subprocess (``python isolated.py ...``) whose
``PYTHONPATH`` holds only the exported bundle folder, so it must not import ``tumoraware``
itself. ``tumoraware`` may still be installed in the interpreter's environment (an editable
install is a ``.pth`` entry in site-packages that ``PYTHONPATH`` cannot remove), so an import
hook refuses it: any ``import tumoraware`` in the exported configs or scripts fails loudly, as it
would on a machine without the package.

Commands:

- ``bundle ARGS...``: ``python -m monai.bundle ARGS...`` (``run``, ``ckpt_export``, ...).
- ``export ARGS...``: the same, with ``scripts`` imported by path relative to the bundle (for
  ``ckpt_export`` and ``onnx_export``: no build path is recorded in the exported model).
- ``checks SPEC_JSON RESULT_JSON``: the Model Zoo CI checks that need MONAI (metadata schema,
  ``verify_net_in_out``, ``ckpt_export`` + ``torch.jit.load``, TorchScript vs eager outputs,
  ``ConfigWorkflow`` properties of train and inference, ONNX when present) of the bundle in the
  working directory; SPEC_JSON: ``{"schema", "schema_md5", "train_configs", "ids"}`` (``ids``:
  config ids such as the manifests, set in both workflows). One JSON record per check is
  written to RESULT_JSON.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

BLOCKED = "tumoraware"
_SCRIPT = Path(__file__).resolve()


def run_isolated(
    bundle: str | Path, args: list[str], timeout_s: float = 1800
) -> subprocess.CompletedProcess:
    """``python isolated.py ARGS`` from ``bundle`` with ``PYTHONPATH`` = ``bundle`` only.

    Bytecode writing is off so the bundle folder gets no ``__pycache__``. For ``export`` the
    string hash seed is fixed: TorchScript writes a module's constants in set order, which
    otherwise changes from run to run (and with it ``model.ts``). Output is captured (text);
    the caller decides what a non-zero exit means.
    """
    bundle = Path(bundle).resolve()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=str(bundle), PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    if args and args[0] == "export":
        env["PYTHONHASHSEED"] = "0"
    return subprocess.run(
        [sys.executable, str(_SCRIPT), *args],
        cwd=bundle, env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


class _RefuseTumoraware(importlib.abc.MetaPathFinder):
    """Import hook: ``tumoraware`` and its submodules cannot be imported."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(
                f"No module named {name!r} (the exported bundle must run without tumoraware)",
                name=name,
            )
        return None


def _isolate() -> None:
    """Refuse ``tumoraware``; drop this file's folder from ``sys.path`` (a script's folder is
    prepended by Python, and it is not part of the exported bundle)."""
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != here]
    sys.meta_path.insert(0, _RefuseTumoraware())


class _RelativeScripts(importlib.abc.MetaPathFinder):
    """Import hook: ``scripts.*`` loaded from the working directory by *relative* path.

    TorchScript stores the file name of every scripted function's source (``*.debug_pkl`` in
    ``model.ts``). Python's own finders make paths absolute, which would put the temporary
    build folder into the model and change it with every export folder; loaded by relative
    path, the code names ``scripts/tumoraware/...`` wherever it was exported.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "scripts" and not name.startswith("scripts."):
            return None
        base = os.path.join(*name.split("."))
        package = os.path.isfile(os.path.join(base, "__init__.py"))
        file = os.path.join(base, "__init__.py") if package else base + ".py"
        if not os.path.isfile(file):
            return None
        spec = importlib.machinery.ModuleSpec(
            name, importlib.machinery.SourceFileLoader(name, file), origin=file, is_package=package
        )
        spec.has_location = True
        if package:
            spec.submodule_search_locations = [base]
        return spec


def _bundle(args: list[str], relative: bool = False) -> None:
    """``python -m monai.bundle ARGS``; with ``relative``, ``scripts`` is imported by relative
    path from the working directory (the bundle), see :class:`_RelativeScripts`."""
    if relative:
        sys.meta_path.insert(0, _RelativeScripts())
    sys.argv = ["python -m monai.bundle", *args]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


def _fake_input(meta: dict, key: str = "image") -> Any:
    import torch

    spec = meta["network_data_format"]["inputs"][key]
    shape = [1, int(spec["num_channels"]), *(int(s) for s in spec["spatial_shape"])]
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _checks(bundle: Path, result_file: Path, spec: dict[str, Any]) -> None:
    import torch
    from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out
    from monai.bundle import verify_metadata as monai_verify_metadata

    schema, schema_md5 = spec.get("schema"), spec.get("schema_md5")
    ids = {k: str(v) for k, v in spec.get("ids", {}).items()}
    configs = bundle / "configs"
    meta_file, infer_file = str(configs / "metadata.json"), str(configs / "inference.json")
    meta = json.loads(Path(meta_file).read_text())
    records: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="zoo_checks_"))

    def check(name: str, fn: Callable[[], str | None]) -> None:
        start = time.perf_counter()
        try:
            detail = fn() or ""
            ok = True
        except Exception as error:  # a failing check is a result, not a crash
            ok, detail = False, "".join(traceback.format_exception_only(error)).strip()
        records.append(
            {"name": name, "ok": ok, "detail": detail, "seconds": time.perf_counter() - start}
        )

    def metadata_schema() -> str:
        kwargs: dict[str, Any] = {"meta_file": meta_file}
        if schema:
            kwargs.update(filepath=schema, hash_val=schema_md5)
        else:
            kwargs.update(filepath=str(tmp / "schema.json"))
        monai_verify_metadata(**kwargs)
        return f"against {kwargs['filepath']}"

    def net_in_out() -> str:
        verify_net_in_out(
            net_id="network_def", meta_file=meta_file, config_file=infer_file,
            bundle_root=str(bundle),
        )  # fmt: skip
        return "network_def in/out shapes and dtypes match metadata"

    @functools.cache
    def eager_network() -> torch.nn.Module:
        """``network_def`` of inference.json with models/model.pt loaded, in eval mode."""
        parser = ConfigParser()
        parser.read_config(infer_file)
        parser["bundle_root"] = str(bundle)
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(torch.load(bundle / "models/model.pt", weights_only=True))
        return net.eval()

    def torchscript() -> str:
        exported = tmp / "verify_model.ts"
        ckpt_export(
            net_id="network_def", filepath=str(exported), ckpt_file=str(bundle / "models/model.pt"),
            meta_file=meta_file, config_file=infer_file, bundle_root=str(bundle),
        )  # fmt: skip
        torch.jit.load(str(exported))
        shipped = torch.jit.load(str(bundle / "models" / "model.ts"))
        net = eager_network()
        x = _fake_input(meta)
        with torch.no_grad():
            eager, scripted = net(x), shipped(x)
        if not torch.allclose(eager, scripted, atol=1e-4, rtol=1e-4):
            diff = (eager - scripted).abs().max().item()
            raise ValueError(f"models/model.ts and models/model.pt disagree (max |diff| {diff})")
        return f"ckpt_export ok; models/model.ts loads and matches model.pt on {tuple(x.shape)}"

    def properties(workflow: str, names: list[str]) -> Callable[[], str]:
        def run() -> str:
            flow = ConfigWorkflow(
                config_file=[str(configs / n) for n in names], meta_file=meta_file,
                logging_file=str(configs / "logging.conf"), workflow_type=workflow,
                bundle_root=str(bundle), output_dir=str(tmp / "out"), ckpt_dir=str(tmp / "ckpt"),
                **ids,
            )  # fmt: skip
            flow.initialize()
            missing = flow.check_properties()
            if missing:
                raise ValueError(f"missing or misnamed {workflow} properties: {missing}")
            return f"{' + '.join(names)}: all required {workflow} properties present"

        return run

    def onnx_model() -> str:
        import onnx

        onnx_file = str(bundle / "models" / "model.onnx")
        onnx.checker.check_model(onnx_file)
        try:
            import onnxruntime
        except ImportError:
            return "models/model.onnx passes onnx.checker (onnxruntime absent: not run)"
        net = eager_network()
        x = torch.cat([_fake_input(meta)] * 2)  # batch 2: the batch axis must be dynamic
        session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        out = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        with torch.no_grad():
            diff = (net(x) - out).abs().max().item()
        if diff > 1e-3:
            raise ValueError(f"models/model.onnx and model.pt disagree (max |diff| {diff})")
        return "models/model.onnx passes onnx.checker; onnxruntime matches model.pt (batch 2)"

    def large_files() -> str:
        from monai.bundle import download_large_files

        download_large_files(bundle_path=str(bundle))  # present files are hash-checked only
        return "download_large_files: every listed file present with its sha256"

    check("metadata schema", metadata_schema)
    check("verify_net_in_out", net_in_out)
    check("ckpt_export + torch.jit.load", torchscript)
    check("train properties", properties("train", spec.get("train_configs", ["train.json"])))
    check("inference properties", properties("infer", ["inference.json"]))
    if (bundle / "large_files.yml").exists() and find_spec("yaml") is not None:
        check("download_large_files", large_files)
    if (bundle / "models" / "model.onnx").exists():
        check("onnx model", onnx_model)
    leaked = sorted(m for m in sys.modules if m == BLOCKED or m.startswith(BLOCKED + "."))
    records.append(
        {"name": "no tumoraware imported", "ok": not leaked,
         "detail": ", ".join(leaked) or "sys.modules has no tumoraware module", "seconds": 0.0}
    )  # fmt: skip
    result_file.write_text(json.dumps(records, indent=2))


def main(argv: list[str]) -> None:
    _isolate()
    if not argv:
        raise SystemExit(__doc__)
    command, rest = argv[0], argv[1:]
    if command in ("bundle", "export"):
        _bundle(rest, relative=command == "export")
    elif command == "checks":
        spec, result = json.loads(Path(rest[0]).read_text()), Path(rest[1])
        _checks(Path.cwd().resolve(), result, spec)
    else:
        raise SystemExit(f"unknown command {command!r}; expected bundle or checks")


if __name__ == "__main__":
    main(sys.argv[1:])
