"""Every command rejects a bad flag or value before it does anything (issue 23).

python-fire runs the command and only then complains about leftover flags
(google/python-fire#168); tumoraware.cli_args checks the command line first. The subprocess
tests run the console script in an empty folder and check that nothing was written; the unit
tests drive the checker on a fake command tree and through fire itself.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import fire
import pytest

from tumoraware.cli import TumourAwareCLI
from tumoraware.cli_args import CommandLineError, check_command, checked_argv_or_exit

from ..conftest import REPO_ROOT

ENV = {**os.environ, "PAGER": "cat", "PYTHONUNBUFFERED": "1"}
SCRIPT = Path(sys.executable).with_name("tumoraware")
ZOO_BUNDLE = REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation"


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tumoraware"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, env=ENV,
                          timeout=120)  # fmt: skip


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


def _assert_rejected(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one paragraph on stderr naming each needle, nothing on stdout."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("error: tumoraware") and "\n" not in message, message
    assert message.endswith("Nothing was run."), message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# ---- the reported cases, as users run them -------------------------------------------------


def test_export_zoo_misspelt_out_dir_leaves_dist_alone(tmp_path):
    kept = tmp_path / "dist" / ZOO_BUNDLE.name / "keep.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    before = _tree(tmp_path)
    result = _run(tmp_path, "export_zoo", "--bundle", str(ZOO_BUNDLE), "--outdir", "X")
    _assert_rejected(result, "export_zoo", "unknown flag --outdir", "did you mean --out_dir?")
    assert _tree(tmp_path) == before and kept.read_text() == "mine"


def test_phantoms_misspelt_out_dir_writes_nothing(tmp_path):
    result = _run(tmp_path, "phantoms", "--outdir", "X")
    _assert_rejected(result, "phantoms", "--outdir", "did you mean --out_dir?", "--overwrite")
    assert list(tmp_path.iterdir()) == []  # neither X nor the default data/phantoms


def test_manifest_validate_misspelt_deep_does_not_pass_shallow(tiny_world, tmp_path):
    _, manifest = tiny_world
    result = _run(tmp_path, "manifest", "validate", str(manifest), "--deeep")
    _assert_rejected(result, "manifest validate", "--deeep", "did you mean --deep?")
    assert "OK" not in result.stdout


def test_reproduce_seed_suggests_seeds_and_starts_no_study(tmp_path):
    result = _run(tmp_path, "reproduce", "--ct_manifest", "ct.json", "--mri_manifest",
                  "mri.json", "--seed", "1")  # fmt: skip
    _assert_rejected(result, "reproduce", "unknown flag --seed", "did you mean --seeds?")
    assert not (tmp_path / "runs").exists()


def test_phantoms_bad_seed_names_the_type_and_leaves_no_generator_json(tmp_path):
    result = _run(tmp_path, "phantoms", "--out_dir", "w", "--seed", "abc")
    _assert_rejected(result, "--seed expects an integer", "got 'abc'")
    assert list(tmp_path.rglob("generator.json")) == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["demo", "--seeds", "0,x"], ["--seeds expects", "comma-separated integers (e.g. 0,1,2)"]),
        (["phantoms", "--preview=yes"], ["--preview expects True or False", "got 'yes'"]),
        (["phantoms", "--no-preview"], ["--no-preview", "fire spells it --nopreview"]),
        (["phantoms", "--out_dir"], ["--out_dir needs a value", "`--out_dir=VALUE`"]),
        (["phantoms", "--", "--seed", "1"], ["--seed after a lone --", "--trace"]),
        (["phantom"], ["unknown command 'phantom'", "did you mean phantoms?"]),
        (["prepare", "nsklc", "dicom"], ["prepare: unknown command", "did you mean nsclc?"]),
        (["manifest", "validate", "m.json", "True", "extra"], ["argument(s) extra", "FILE DEEP"]),
        (["reproduce", "--ct_manifest", "ct"], ["required --mri_manifest", "--mri_manifest ."]),
        (["monailabel", "serve", "b", "s", "--port", "80.5"], ["--port expects an integer", "80"]),
        (["manifest", "--deep", "validate", "m"], ["--deep must follow a command", "validate"]),
    ],
)  # fmt: skip
def test_malformed_command_lines_exit_2_before_running(tmp_path, args, needles):
    _assert_rejected(_run(tmp_path, *args), *needles)
    assert list(tmp_path.iterdir()) == []


def test_help_after_a_bad_flag_shows_help_and_runs_nothing(tmp_path):
    result = _run(tmp_path, "phantoms", "--outdir", "X", "--help")
    assert result.returncode == 0, result.stderr
    assert "tumoraware phantoms" in result.stderr and "--out_dir" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_correct_command_still_runs(tmp_path):
    """`--out_dir 2024` is text (fire alone would pass the int 2024 on)."""
    result = _run(tmp_path, "phantoms", "--out_dir", "2024", "--profile", "tiny", "--seed", "0",
                  "--manifest", "m/phantoms.json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "2024" / "ct").is_dir()
    validated = _run(tmp_path, "manifest", "validate", "m/phantoms.json")
    assert validated.returncode == 0 and "OK" in validated.stdout, validated.stderr


# ---- the checker on a fake fire tree ----------------------------------------------------------

CALLS: list[tuple[str, dict]] = []


class _Tools:
    def check(self, file: str, deep: bool = False) -> None:
        CALLS.append(("check", {"file": file, "deep": deep}))


class _FakeCLI:
    def __init__(self) -> None:
        self.tools = _Tools()

    def make(
        self,
        out_dir: str = "out",
        seed: int = 0,
        ratio: float = 0.5,
        seeds: int | str | tuple[int, ...] = 0,
        tag: str | None = None,
        names: str | Sequence[str] | None = None,
        fast: bool = False,
    ) -> None:
        CALLS.append(("make", dict(locals(), self=None)))

    def need(self, source: str, target: str, *, mode: str = "a") -> None:
        CALLS.append(("need", {"source": source, "target": target, "mode": mode}))

    def loose(self, *paths: str, **extra: int) -> None:
        CALLS.append(("loose", {"paths": paths, "extra": extra}))


def _check(*argv: str) -> list[str]:
    return check_command(_FakeCLI, list(argv), prog="fake")


def _fired(*argv: str) -> tuple[str, dict]:
    """What the command receives when fire runs the checked command line."""
    CALLS.clear()
    fire.Fire(_FakeCLI, command=_check(*argv), name="fake")
    (call,) = CALLS
    return call


@pytest.mark.parametrize(
    ("argv", "key", "expected"),
    [
        (["make", "--seed", "3"], "seed", 3),
        (["make", "--seed=-1"], "seed", -1),
        (["make", "-o", "d"], "out_dir", "d"),
        (["make", "-seed=5"], "seed", 5),
        (["make", "--out-dir", "x"], "out_dir", "x"),
        (["make", "--out_dir", "2024"], "out_dir", "2024"),
        (["make", "--out_dir", "run#2"], "out_dir", "run#2"),
        (["make", "--ratio", "1"], "ratio", 1),
        (["make", "--seeds", "0,1,2"], "seeds", (0, 1, 2)),
        (["make", "--seeds", "7"], "seeds", 7),
        (["make", "--seeds", "'0,1'"], "seeds", "0,1"),
        (["make", "--tag", "None"], "tag", None),
        (["make", "--names", "a,b"], "names", ("a", "b")),
        (["make", "--names", "1,2"], "names", "1,2"),
        (["make", "--fast"], "fast", True),
        (["make", "--fast", "--seed", "1"], "fast", True),
        (["make", "--nofast"], "fast", False),
        (["make", "--fast=False"], "fast", False),
        (["make", "here", "9"], "seed", 9),
    ],
)
def test_fire_gets_the_typed_value(argv, key, expected):
    name, kwargs = _fired(*argv)
    assert name == "make" and kwargs[key] == expected
    assert type(kwargs[key]) is type(expected)


def test_nested_group_and_positionals_resolve_like_fire():
    argv = _check("tools", "check", "m.json", "--deep")
    assert argv == ["tools", "check", "--deep=True", "--file=m.json"]
    assert _fired("tools", "check", "m.json", "True") == ("check", {"file": "m.json", "deep": True})
    _, kwargs = _fired("need", "a", "--target", "b", "--mode", "z")
    assert kwargs == {"source": "a", "target": "b", "mode": "z"}


def test_var_args_and_var_kwargs_take_anything():
    _, kwargs = _fired("loose", "p", "q", "--depth", "3")
    assert kwargs == {"paths": ("p", "q"), "extra": {"depth": 3}}


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["make", "--outdir", "x"], ["make: unknown flag --outdir", "did you mean --out_dir?"]),
        (["make", "--outdir", "x"], ["Valid flags: --out_dir, --seed, --ratio, --seeds, --tag"]),
        (["make", "--sed", "1"], ["--sed", "did you mean --seed?"]),
        (["make", "--zzz"], ["unknown flag --zzz.", "Valid flags"]),
        (["make", "--verbose"], ["python-fire's own flag", "`fake make -- --verbose`"]),
        (["make", "--seed", "1.5"], ["--seed expects an integer", "got '1.5'"]),
        (["make", "--ratio", "fast"], ["--ratio expects a number", "got 'fast'"]),
        (["make", "--seeds", "a"], ["--seeds expects an integer or comma-separated integers"]),
        (["make", "--seeds", "1.5,2"], ["comma-separated integers"]),
        (["make", "--fast", "yes"], ["--fast expects True or False", "a bare --fast means True"]),
        (["make", "--tag"], ["--tag needs a value, text or None"]),
        (["make", "--out_dir", "True"], ["--out_dir expects text", "got 'True'"]),
        (["make", "--seed", "1", "--seed", "2"], ["--seed is given twice"]),
        (["make", "--nofast=1"], ["--nofast=1 takes no value", "--fast=VALUE"]),
        (["make", "-r", "1"], []),  # -r: ratio, the only flag starting with r
        (["tools", "check"], ["fake tools check: missing required --file"]),
        (["tools", "check", "a", "b", "c"], ["unexpected argument(s) c", "FILE DEEP"]),
        (["tools", "chek"], ["fake tools: unknown command 'chek'", "did you mean check?"]),
        (["tools", "chek"], ["Commands: check (see `fake tools --help`)"]),
        (["mkae"], ["did you mean make?"]),
        (["--seed", "1", "make"], ["fake: --seed must follow a command"]),
        (["make", "--seed", "1", "-", "tools"], ["unexpected tools after '-'", "be chained"]),
        (["make", "--", "--seed", "1"], ["unknown flag --seed after a lone --"]),
        (["need", "a", "b", "c"], ["unexpected argument(s) c", "SOURCE TARGET"]),
    ],
)  # fmt: skip
def test_bad_command_lines_raise_with_the_fix(argv, needles):
    if not needles:
        assert _check(*argv) == ["make", "--ratio=1"]
        return
    with pytest.raises(CommandLineError) as raised:
        _check(*argv)
    for needle in needles:
        assert needle in str(raised.value)


def test_ambiguous_single_letter_flag():
    with pytest.raises(CommandLineError, match=r"-s is ambiguous \(--seed, --seeds\)"):
        check_command(_OneLetter, ["run", "-s", "1"], prog="x")


class _OneLetter:
    def run(self, seed: int = 0, seeds: int = 0) -> None: ...


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], ["--", "--help"]),
        (["-h"], ["--", "--help"]),
        (["tools", "--help"], ["tools", "--", "--help"]),
        (["make", "--outdir", "x", "--help"], ["make", "--", "--help"]),
        (["tools", "check", "-h"], ["tools", "check", "--", "--help"]),
        (["make", "--", "--help"], ["make", "--", "--help"]),
        (["tools", "check", "--", "--trace"], ["tools", "check", "--", "--trace"]),
        (["make", "--seed", "1", "-"], ["make", "--seed=1"]),
        (["tools", "-", "check", "f"], ["tools", "check", "--file=f"]),
        (["tools"], ["tools"]),
        ([], []),
    ],
)
def test_help_trace_separators_and_groups_pass_through(argv, expected):
    assert _check(*argv) == expected


def test_help_for_an_unknown_command_is_an_error():
    with pytest.raises(CommandLineError, match="did you mean make"):
        _check("mak", "--help")


def test_checked_argv_or_exit_prints_one_paragraph_and_exits_2(capsys):
    with pytest.raises(SystemExit) as raised:
        checked_argv_or_exit(_FakeCLI, ["make", "--outdir", "x"], prog="fake")
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fake make: unknown flag --outdir") and err.count("\n") == 1
    assert err.rstrip().endswith("Nothing was run.")


def test_every_tumoraware_parameter_has_an_annotation_the_checker_reads():
    """A command whose annotations do not evaluate would go unchecked: keep them evaluable."""
    root, pending = TumourAwareCLI(), [()]
    seen = 0
    while pending:
        path = pending.pop()
        node = root
        for name in path:
            node = getattr(node, name)
        if inspect.isroutine(node):
            for param in inspect.signature(node, eval_str=True).parameters.values():
                assert param.annotation is not param.empty, (path, param.name)
            seen += 1
            continue
        pending += [(*path, n) for n in dir(node) if not n.startswith("_")]
    assert seen >= 13  # 6 top-level commands, validate, 3 prepare, 3 monailabel
