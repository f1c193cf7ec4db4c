"""Check a command line against the commands' signatures before python-fire runs anything.

python-fire calls the function first and complains about leftover flags afterwards
(google/python-fire#168): a misspelt flag ran the command with its defaults (``export_zoo
--outdir X`` replaced ./dist/NAME, ``phantoms --outdir X`` wrote a world elsewhere) and a
malformed value reached the code (``phantoms --seed abc``). :func:`check_command` resolves the
command the way fire does (groups are attributes, ``-`` may stand for ``_``), binds flags and
positionals as fire would, converts each value as fire would and checks it against the
parameter's annotation. Anything wrong raises :class:`CommandLineError`; what passes comes back
as the argument list for ``fire.Fire``, with values that fire would mistype (``--out_dir 2024``
is an int to fire) quoted so that the command gets what its annotation promises.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fire import parser as fire_parser

__all__ = ["CommandLineError", "check_command", "checked_argv_or_exit"]

_HELP = ("-h", "--help")
_FIRE_FLAGS = ("help", "interactive", "trace", "verbose", "separator", "completion")
_SEQUENCES = (tuple, list, collections.abc.Sequence)
_EXIT_BAD_INPUT = 2


class CommandLineError(ValueError):
    """A command line that must not run: the message says what is wrong and how to fix it."""


class _MismatchError(Exception):
    """A value that does not fit an annotation; carries what the annotation expects."""


@dataclass
class _Flag:
    """One parsed ``--name[=value]``: ``raw`` is None for fire's bare ``--name`` / ``--noname``."""

    token: str
    key: str
    raw: str | None
    bare: bool


def check_command(root: object, argv: Sequence[str], prog: str = "tumoraware") -> list[str]:
    """Return the arguments for ``fire.Fire(root, command=...)``, or raise CommandLineError.

    ROOT is what fire gets (a class is instantiated without arguments, as fire does, to reach
    the command groups it builds). Help (``-h``/``--help`` anywhere, or after ``--``) only
    needs a valid command path, and comes back as ``PATH -- --help``: fire would otherwise run
    the command when --help is not the first flag.
    """
    args, fire_args = fire_parser.SeparateFlagArgs(list(argv))
    fire_flags, unknown = fire_parser.CreateParser().parse_known_args(fire_args)
    if unknown:
        raise CommandLineError(
            f"{prog}: unknown flag {unknown[0]} after a lone --; only python-fire's own flags "
            f"go there ({_list(['--' + f for f in _FIRE_FLAGS])}), the command's before it."
        )
    wants_help = fire_flags.help or any(arg in _HELP for arg in args)
    component = root() if inspect.isclass(root) else root
    separator = fire_flags.separator
    path, target, rest = _resolve(component, [a for a in args if a not in _HELP], separator,
                                  prog, stop_at_flag=wants_help)  # fmt: skip
    if wants_help:
        return [*path, "--", *fire_args, *([] if fire_flags.help else ["--help"])]
    if not inspect.isroutine(target):  # a group alone: fire lists its commands
        return [*path, *(["--", *fire_args] if fire_args else [])]
    where = " ".join([prog, *path])
    if separator in rest:
        chained = [arg for arg in rest[rest.index(separator) :] if arg != separator]
        if chained:
            raise CommandLineError(
                f"{where}: unexpected {' '.join(chained)} after {separator!r}; commands cannot "
                f"be chained (a lone {separator!r} ends the command's arguments)."
            )
        rest = rest[: rest.index(separator)]
    lenient = bool(fire_flags.trace or fire_flags.interactive or fire_flags.completion)
    bound = _bind(target, rest, where, require_all=not lenient)
    return [*path, *bound, *(["--", *fire_args] if fire_args else [])]


def checked_argv_or_exit(root: object, argv: Sequence[str], prog: str = "tumoraware") -> list[str]:
    """:func:`check_command`, or the problem on stderr and exit 2 before anything runs."""
    try:
        return check_command(root, argv, prog)
    except CommandLineError as error:
        print(f"error: {error} Nothing was run.", file=sys.stderr)
        raise SystemExit(_EXIT_BAD_INPUT) from None


def _resolve(
    component: Any, args: list[str], separator: str, prog: str, *, stop_at_flag: bool
) -> tuple[list[str], Any, list[str]]:
    """Walk groups by name (fire's member access) to a command; return path, target, rest."""
    path: list[str] = []
    while not inspect.isroutine(component):
        while args and args[0] == separator:  # fire skips a separator between groups
            args = args[1:]
        if not args or (stop_at_flag and _is_flag(args[0])):
            return path, component, args
        commands = sorted(n for n in dir(component) if not n.startswith("_"))
        where, token = " ".join([prog, *path]), args[0]
        if _is_flag(token):
            raise CommandLineError(
                f"{where}: {token} must follow a command ({_list(commands)}), e.g. "
                f"`{where} COMMAND {token}`."
            )
        name = token.replace("-", "_")
        if name not in commands:
            raise CommandLineError(
                f"{where}: unknown command {token!r}{_did_you_mean(name, commands, '')} "
                f"Commands: {_list(commands)} (see `{where} --help`)."
            )
        path.append(name)
        component, args = getattr(component, name), args[1:]
    return path, component, args


def _bind(fn: Any, args: list[str], where: str, *, require_all: bool) -> list[str]:
    """Bind ARGS to FN's parameters as fire does; return them as ``--name=text`` for fire
    (then any extra positionals for a ``*args``), each text parsing to a valid value."""
    params = _signature(fn).parameters
    kind = inspect.Parameter
    named = [
        p for p in params.values() if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)
    ]
    positional = [p.name for p in named if p.kind is kind.POSITIONAL_OR_KEYWORD]
    names = [p.name for p in named]
    any_flag = any(p.kind is kind.VAR_KEYWORD for p in params.values())
    any_count = any(p.kind is kind.VAR_POSITIONAL for p in params.values())
    valid = f"Valid flags: {_list(['--' + n for n in names])}." if names else "It takes no flags."

    given: dict[str, str] = {}
    loose: list[str] = []
    for item in _split(args):
        if isinstance(item, str):
            loose.append(item)
            continue
        name = _flag_name(item, names, any_flag, where, valid)
        if name in given:
            raise CommandLineError(f"{where}: --{name} is given twice; give it once.")
        negated = item.key != name and item.key.startswith("no")
        text = ("False" if negated else "True") if item.raw is None else item.raw
        given[name] = _checked(text, params.get(name), f"--{name}", where, bare=item.raw is None)

    free = [name for name in positional if name not in given]
    if len(loose) > len(free) and not any_count:
        usage = " ".join(n.upper() for n in positional) or "no positional arguments"
        raise CommandLineError(
            f"{where}: unexpected argument(s) {' '.join(loose[len(free) :])}; it takes {usage} "
            f"in this order (each also as a flag). {valid}"
        )
    for name, text in zip(free, loose, strict=False):
        given[name] = _checked(text, params[name], name.upper(), where, bare=False)
    loose = loose[len(free) :]
    missing = [p.name for p in named if p.default is p.empty and p.name not in given]
    if missing and require_all:
        flags = " ".join(f"--{n} ..." for n in missing)
        raise CommandLineError(
            f"{where}: missing required {_list(['--' + n for n in missing])}; e.g. "
            f"`{where} {flags}` (or the values in order as positional arguments)."
        )
    return [*(f"--{name}={text}" for name, text in given.items()), *loose]


def _split(args: list[str]) -> list[str | _Flag]:
    """Fire's reading of ARGS: ``--k=v``, ``--k v``, bare ``--k`` (next is a flag or none)."""
    items: list[str | _Flag] = []
    index = 0
    while index < len(args):
        token = args[index]
        if not _is_flag(token):
            items.append(token)
            index += 1
            continue
        body = token.lstrip("-")
        key, equals, raw = body.partition("=")
        bare = not equals and (index + 1 == len(args) or _is_flag(args[index + 1]))
        if not equals and not bare:
            raw = args[index + 1]
            index += 1
        items.append(_Flag(token, key.replace("-", "_"), None if bare else raw, bare))
        index += 1
    return items


def _flag_name(flag: _Flag, names: list[str], any_flag: bool, where: str, valid: str) -> str:
    """The parameter FLAG sets (fire's rules: exact, bare ``--noNAME``, unique ``-x``)."""
    key = flag.key
    if key in names:
        return key
    if key.startswith("no") and key[2:] in names:
        if flag.bare:
            return key[2:]
        raise CommandLineError(
            f"{where}: {flag.token} takes no value; use --{key[2:]}=VALUE (or a bare {flag.token} "
            f"for False)."
        )
    if len(key) == 1:
        first = [n for n in names if n[0] == key]
        if len(first) == 1:
            return first[0]
        if first:
            raise CommandLineError(
                f"{where}: {flag.token} is ambiguous ({_list(['--' + n for n in first])}); "
                f"spell the flag out."
            )
    if any_flag:
        return key
    if key.startswith("no_") and key[3:] in names:
        hint = f"; fire spells it --no{key[3:]} (or --{key[3:]}=False)."
    elif key in _FIRE_FLAGS:
        hint = f"; it is python-fire's own flag: put it after a lone -- (`{where} -- --{key}`)."
    else:
        hint = _did_you_mean(key, names, "--")
    raise CommandLineError(f"{where}: unknown flag {flag.token}{hint} {valid}")


def _checked(text: str, param: inspect.Parameter | None, label: str, where: str,
             *, bare: bool) -> str:  # fmt: skip
    """TEXT as fire should get it for PARAM, or a CommandLineError naming LABEL and the type."""
    annotation = param.annotation if param is not None else inspect.Parameter.empty
    parsed = fire_parser.DefaultParseValue(text)
    try:
        value = _convert(parsed, text, annotation)
    except _MismatchError as error:
        if bare:
            raise CommandLineError(
                f"{where}: {label} needs a value, {error}: `{label} VALUE` or `{label}=VALUE`."
            ) from None
        switch = bool in _members(annotation) and label.startswith("--")
        hint = f" (a bare {label} means True only last or before another flag)" if switch else ""
        raise CommandLineError(f"{where}: {label} expects {error}, got {text!r}{hint}.") from None
    return text if value is parsed else repr(value)


def _convert(parsed: Any, raw: str, annotation: Any) -> Any:
    """The value fire should pass: PARSED when it fits, else RAW where text is accepted."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return parsed
    members = _members(annotation)
    items = _text_items(members)
    if (
        str in members
        and isinstance(parsed, str)
        and parsed != raw
        and raw.strip()[:1] not in "'\""
    ):
        parsed = raw  # fire reads an unquoted `run#2` as `run` (`#` starts a comment)
    if any(_fits(parsed, member, items) for member in members):
        return parsed
    takes_text = str in members and not isinstance(parsed, bool | None)
    if takes_text and _fits(raw, str, items):
        return raw
    raise _MismatchError(_describe(members, items))


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _text_items(members: tuple[Any, ...]) -> Any:
    """The item type of a comma-separated text, where a union also takes a sequence of non-str
    items (``int | str | tuple[int, ...]`` seeds: the code splits "0,1,2" itself); else None."""
    if str not in members:
        return None
    for member in members:
        if typing.get_origin(member) in _SEQUENCES:
            item = typing.get_args(member)[0] if typing.get_args(member) else Any
            if item not in (str, Any):
                return item
    return None


def _fits(value: Any, annotation: Any, text_items: Any = None) -> bool:
    """Whether VALUE (as fire parsed it) is a valid argument for ANNOTATION."""
    origin = typing.get_origin(annotation)
    if annotation in (None, type(None)):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        if not isinstance(value, str):
            return False
        parts = [part.strip() for part in value.split(",") if part.strip()]
        return text_items is None or (bool(parts) and all(_parses(p, text_items) for p in parts))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, member) for member in typing.get_args(annotation))
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        fixed = origin is tuple and Ellipsis not in typing.get_args(annotation) and args
        if not isinstance(value, tuple | list) or (fixed and len(value) != len(args)):
            return False
        kinds = args if fixed else [args[0] if args else Any] * len(value)
        return all(_fits(v, k) for v, k in zip(value, kinds, strict=True))
    return True  # a type fire cannot build (Path, ...) nor this checker judge: the command's


def _parses(text: str, annotation: Any) -> bool:
    """Whether TEXT, one item of a comma-separated list, converts to ANNOTATION."""
    try:
        annotation(text)
    except (TypeError, ValueError):
        return False
    return True


def _describe(members: tuple[Any, ...], text_items: Any) -> str:
    """Words for what the annotation accepts, e.g. 'an integer or comma-separated integers'."""
    words: list[str] = []
    for member in members:
        origin = typing.get_origin(member)
        if member is str and text_items is not None:
            word = f"comma-separated {_plural(text_items)} (e.g. {_example(text_items)})"
        elif origin in _SEQUENCES or member in _SEQUENCES:
            item = (typing.get_args(member) or (Any,))[0]
            word = f"comma-separated {_plural(item)} (e.g. {_example(item)})"
        elif origin is typing.Literal:
            word = "one of " + ", ".join(map(str, typing.get_args(member)))
        else:
            word = _SINGULAR.get(member, getattr(member, "__name__", str(member)))
        if word not in words:
            words.append(word)
    return " or ".join(words)


_SINGULAR = {int: "an integer", float: "a number", bool: "True or False", str: "text",
             None: "None", type(None): "None"}  # fmt: skip


def _plural(item: Any) -> str:
    return {int: "integers", float: "numbers", str: "names"}.get(item, "values")


def _example(item: Any) -> str:
    return {int: "0,1,2", float: "0.5,1.5"}.get(item, "a,b")


def _signature(fn: Any) -> inspect.Signature:
    """FN's signature with its string annotations (``from __future__ import annotations``)
    evaluated; unevaluable ones count as unknown rather than failing the command."""
    try:
        return inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError):
        signature = inspect.signature(fn)
        return signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()]
        )


def _is_flag(arg: str) -> bool:
    """Fire's test: ``--x``, ``-x`` or ``-xyz``, but not ``-1``, ``-0.5`` or a lone ``-``."""
    return arg.startswith("--") or re.match(r"^-[a-zA-Z]", arg) is not None


def _did_you_mean(word: str, choices: list[str], prefix: str) -> str:
    """'; did you mean --out_dir?' from difflib, or from the name without its underscores."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    squashed = [c for c in choices if c.replace("_", "") == word.replace("_", "")]
    match = (squashed or close or [None])[0]
    return f"; did you mean {prefix}{match}?" if match else "."


def _list(names: Sequence[str]) -> str:
    return ", ".join(names)
