"""Errors as users meet them: one line that names the file and the fix, the traceback behind it.

Our own errors already say what was expected, what was found, the file and the fix (``... Fix:
...``). They reach the user through layers that bury them: a bundle run wraps them in MONAI's
``RuntimeError: Failed to evaluate ConfigExpression`` or ``applying transform <...>``, a
DataLoader worker re-raises them as ``Caught ValueError in DataLoader worker process 0``, and
the study then shows the log's last lines. This module digs the meaningful error back out of a
log (:func:`innermost_error`), turns PyTorch's state-dict key lists into a count and a fix
(:func:`state_dict_mismatch`), and formats errors for the command line
(:func:`user_message`, :func:`save_traceback`).
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TRACEBACK_LOG",
    "check_state_dict",
    "innermost_error",
    "save_traceback",
    "state_dict_mismatch",
    "user_message",
]

TRACEBACK_LOG = Path(tempfile.gettempdir()) / f"tumoraware-{os.getuid()}-last-error.log"
"""Where the command line writes the full traceback of the last error it shortened."""

_TRACEBACK = re.compile(r"Traceback \(most recent call last\):\s*$")
_CHAINED = re.compile(r"^(The above exception was the direct cause|During handling of the above)")
_EXCEPTION = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Failure))(?::\s?(?P<message>.*))?$"
)
_WRAPPERS = re.compile(
    r"Failed to evaluate ConfigExpression|applying transform|Caught \w+ in DataLoader worker"
    r"|Engine run is terminating"
)
_STATE_DICT = re.compile(r"Error\(s\) in loading state_dict for (?P<network>[\w.]+)")
_TENSOR_SIZES = re.compile(
    r"Sizes of tensors must match|The size of tensor a \(\d+\) must match the size of tensor b"
)
_TRUNCATED = re.compile(r"^EOFError|Compressed file ended|Expected \d+ bytes, got \d+")
_MAX_LINES = 30


@dataclass
class _Raised:
    """One exception as a log shows it: its type and message lines."""

    type: str
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines).rstrip()


def _exceptions(log_text: str) -> list[list[_Raised]]:
    """The exceptions of every traceback in ``log_text``, grouped into chains (``raise ... from``
    and exceptions raised while handling another belong to one chain, innermost first)."""
    chains: list[list[_Raised]] = []
    current: _Raised | None = None
    in_frames, chained = False, False
    for line in log_text.splitlines():
        if _TRACEBACK.search(line):
            nested = current is not None and line.startswith("Original ")  # DataLoader worker
            if not (chained or nested) or not chains:
                chains.append([])
            current, in_frames, chained = None, True, False
            continue
        if _CHAINED.match(line):
            current, in_frames, chained = None, False, True
            continue
        if in_frames:
            match = _EXCEPTION.match(line)
            if line[:1].isspace() or not line or match is None:
                continue  # a frame, its source line, or a caret line
            current = _Raised(match["type"], [f"{match['type']}: {match['message'] or ''}"])
            chains[-1].append(current)
            in_frames = False
            continue
        if current is not None and line.strip() and len(current.lines) < _MAX_LINES:
            current.lines.append(line)
        elif current is not None and not line.strip():
            current = None  # a blank line ends a message
    return [chain for chain in chains if chain]


def innermost_error(log_text: str) -> str:
    """The error that explains a failed run, from its log: ours if there is one, never a wrapper.

    In the last traceback of the log, the innermost exception whose message carries a fix
    (``Fix:``, how tumoraware words its errors) wins; otherwise the innermost exception that is
    not one of MONAI's or PyTorch's wrappers ("Failed to evaluate ConfigExpression", "applying
    transform", "Caught ... in DataLoader worker"). PyTorch's state-dict key lists become a
    count and a fix (:func:`state_dict_mismatch`); tensor-size mismatches get the likely cause.

    Args:
        log_text: the whole log of the run (stdout and stderr).

    Returns:
        ``"Type: message"`` (a message may span lines, e.g. a manifest's problem list), or the
        log's last non-empty line when it holds no traceback, or ``""`` for an empty log.
    """
    chains = _exceptions(log_text)
    if not chains:
        lines = [line for line in log_text.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""
    chain = chains[-1]
    ours = [e for e in chain if "Fix:" in e.text and not _WRAPPERS.search(e.lines[0])]
    plain = [e for e in chain if not _WRAPPERS.search(e.lines[0])]
    chosen = (ours or plain or chain)[0]
    text = chosen.text
    mismatch = state_dict_mismatch(text)
    if mismatch is not None:
        return f"{chosen.type}: {mismatch}"
    end = "" if text.endswith(".") else "."
    if _TRUNCATED.search(text) and "Fix:" not in text:
        text += end + (
            " Likely cause: an input volume is truncated (its file ends early), and the reader "
            "does not say which. Fix: run `tumoraware manifest validate MANIFEST --deep` on the "
            "run's manifests: it names the file; re-export or re-download that file."
        )
    elif _TENSOR_SIZES.search(text) and "Fix:" not in text:
        text += end + (
            " Likely cause: an image size the network cannot take (spatial_size is not a "
            "multiple of the network's total downsampling, e.g. 2**(len(channels) - 1) or the "
            "product of the U-Net strides). Fix: set spatial_size (and the crop sizes derived "
            "from it) to such a multiple, e.g. 64, 128 or 256, or use a profile's value."
        )
    return text


def _keys(line: str) -> list[str]:
    return re.findall(r'"([^"]+)"', line)


def state_dict_mismatch(
    message: str,
    network: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    fix: str | None = None,
) -> str | None:
    """PyTorch's "Error(s) in loading state_dict for X" as counts and a fix, else None.

    The raw message lists every key; what the user needs is which network, how much differs
    (a few keys: a renamed layer; most keys: another architecture or profile) and what to do.

    Args:
        message: the exception message (from ``load_state_dict`` or a log).
        network: the network's name in the config (e.g. ``network_def``), if known.
        checkpoint: the weights file, if known.
        fix: the fix to give; by default, load it with the configs/profile it was trained with.

    Returns:
        one sentence with the counts and the fix, or None if ``message`` is no such error.
    """
    match = _STATE_DICT.search(message)
    if match is None:
        return None
    missing = unexpected = 0
    resized: list[str] = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Missing key(s)"):
            missing += len(_keys(line))
        elif line.startswith("Unexpected key(s)"):
            unexpected += len(_keys(line))
        elif line.startswith("size mismatch for"):
            shapes = re.findall(r"torch\.Size\(\[([^\]]*)\]\)", line)
            name = line[len("size mismatch for ") :].split(":")[0]
            if len(shapes) == 2:
                name += f" (checkpoint [{shapes[0]}] vs network [{shapes[1]}])"
            resized.append(name)
    return _mismatch_sentence(
        network or match["network"], checkpoint, missing, unexpected, resized, fix
    )


def _mismatch_sentence(
    network: str,
    checkpoint: str | os.PathLike | None,
    missing: int,
    unexpected: int,
    resized: list[str],
    fix: str | None,
) -> str:
    source = f"the checkpoint {checkpoint}" if checkpoint else "the checkpoint"
    counts = [
        f"{missing} key(s) of the network missing from it",
        f"{unexpected} unexpected key(s) in it",
        f"{len(resized)} weight(s) of another shape",
    ]
    example = f" (e.g. {resized[0]})" if resized else ""
    fix = fix or (
        "load it with the configs and profile it was trained with (a study run's stage.json "
        "lists them: configs and overrides, e.g. configs/profiles/demo.json), or point the "
        "config at the checkpoint of this architecture."
    )
    return (
        f"{source} does not fit network {network}: "
        + ", ".join(c for c in counts if not c.startswith("0 "))
        + f"{example}; it was saved from another architecture or profile. Fix: {fix}"
    )


def check_state_dict(
    network: Any, state: Mapping[str, Any], name: str, checkpoint: str | os.PathLike, fix: str
) -> None:
    """Raise ``ValueError`` (counts and ``fix``) unless ``state`` loads strictly into
    ``network``; compare first so the message never depends on PyTorch's wording."""
    expected = network.state_dict()
    missing = sum(k not in state for k in expected)
    unexpected = sum(k not in expected for k in state)
    resized = [
        f"{k} (checkpoint {list(state[k].shape)} vs network {list(v.shape)})"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or resized:
        raise ValueError(_mismatch_sentence(name, checkpoint, missing, unexpected, resized, fix))


# ------------------------------------------------------------------------------------ CLI


def user_message(error: BaseException) -> str:
    """The error as the command line prints it: its message, or the meaningful error inside a
    wrapper's message (a failed stage's log excerpt)."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, (ValueError, FileNotFoundError, FileExistsError, KeyError)):
        return text.strip("'\"") if isinstance(error, KeyError) else text
    return f"{type(error).__name__}: {text}"


def save_traceback(error: BaseException, path: str | os.PathLike = TRACEBACK_LOG) -> Path | None:
    """Write ``error``'s full traceback to ``path``; None if it cannot be written."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError:
        return None
    return Path(path)
