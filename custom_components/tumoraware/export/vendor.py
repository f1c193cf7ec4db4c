"""Vendor the ``tumoraware`` code a bundle's configs use into the bundle's ``scripts/``.

A Model Zoo bundle must run with nothing but MONAI and its listed packages installed, so the
exported bundle carries its own copy of our code: ``scripts/tumoraware/...``, imported as
``scripts.tumoraware...`` (MONAI puts the bundle root on ``sys.path``; Model Zoo bundles import
their code as ``scripts.*`` the same way).

Only what is needed is copied, found statically:

1. every reference to ``tumoraware`` in the config strings (``_target_``, ``$import``,
   ``$from ... import``, ``$`` expressions) is resolved to the module that *defines* the name,
   following re-exports through package ``__init__`` files (so ``tumoraware.transforms.CTWindowd``
   becomes ``scripts.tumoraware.transforms.intensity.CTWindowd``);
2. the ``tumoraware`` imports of those modules are followed the same way, transitively (``ast``,
   including imports inside functions);
3. each needed module is copied with its ``tumoraware`` imports rewritten to relative imports of
   the defining modules; package ``__init__`` files that are not needed for their own code are
   written as a docstring only, so importing one transform does not drag in the phantom
   generator or matplotlib;
4. data files next to a vendored module that it names in a string literal (the manifest JSON
   schema) are copied along.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

__all__ = [
    "BASE_PACKAGES",
    "VENDOR_PACKAGE",
    "SourceTree",
    "VendorError",
    "VendorPlan",
    "config_references",
    "distributions_of",
    "rewrite_config",
    "third_party_imports",
    "vendor_configs",
    "write_vendored",
]

PACKAGE = "tumoraware"
VENDOR_PACKAGE = f"scripts.{PACKAGE}"
# Provided by MONAI's own requirements (metadata has dedicated *_version fields for them), so
# never listed as the bundle's own required packages.
BASE_PACKAGES = frozenset({"torch", "numpy", "monai"})
_MAX_LINE = 100


class VendorError(ValueError):
    """A config or module uses ``tumoraware`` in a way the vendoring cannot rewrite."""


def _package_root(package: str) -> Path:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise VendorError(f"cannot find the {package!r} package to vendor (is it installed?)")
    return Path(next(iter(spec.submodule_search_locations)))


class SourceTree:
    """The ``tumoraware`` source files on disk, parsed lazily (module name -> file, AST).

    Args:
        root: the package folder (``.../custom_components/tumoraware``); default: where the
            importable ``tumoraware`` lives.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else _package_root(PACKAGE)
        self._trees: dict[str, ast.Module] = {}

    def path_of(self, module: str) -> Path | None:
        """The file of ``module`` (``__init__.py`` for a package), or None if it is not ours."""
        parts = module.split(".")
        if parts[0] != PACKAGE:
            return None
        base = self.root.joinpath(*parts[1:])
        if (base / "__init__.py").is_file():
            return base / "__init__.py"
        file = base.with_suffix(".py")
        return file if len(parts) > 1 and file.is_file() else None

    def is_module(self, module: str) -> bool:
        return self.path_of(module) is not None

    def is_package(self, module: str) -> bool:
        path = self.path_of(module)
        return path is not None and path.name == "__init__.py"

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            path = self.path_of(module)
            if path is None:
                raise VendorError(f"{module} is not a module of {self.root}")
            self._trees[module] = ast.parse(path.read_text(), filename=str(path))
        return self._trees[module]

    def split_reference(self, dotted: str) -> tuple[str, list[str]]:
        """``tumoraware.networks.ResnetGenerator`` -> (``tumoraware.networks``,
        ``["ResnetGenerator"]``): the longest module prefix and the attribute path after it."""
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            module = ".".join(parts[:cut])
            if self.is_module(module):
                return module, parts[cut:]
        raise VendorError(f"{dotted!r} does not name a module of {self.root}")

    def resolve(
        self, module: str, name: str, _seen: frozenset[str] = frozenset()
    ) -> tuple[str, str]:
        """Where ``from module import name`` really comes from: ``(defining module, name there)``.

        A submodule resolves to ``(module.name, "")``. Re-exports (``from .x import name`` in a
        package ``__init__``) are followed; a name bound from a third-party import (e.g.
        ``PatchDiscriminator`` re-exported by ``tumoraware.networks``) resolves to ``module``.
        """
        key = f"{module}:{name}"
        if key in _seen:
            raise VendorError(f"import cycle while resolving {name!r} in {module}")
        if self.is_module(f"{module}.{name}"):
            return f"{module}.{name}", ""
        for node in _top_level_statements(self.tree(module)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name == name:
                    return module, name
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(name in _bound_names(t) for t in targets):
                    return module, name
            elif isinstance(node, ast.ImportFrom):
                source = _absolute_module(module, node, self.is_package(module))
                for alias in node.names:
                    if (alias.asname or alias.name) != name:
                        continue
                    if source.split(".")[0] != PACKAGE:
                        return module, name  # third-party name re-exported here
                    return self.resolve(source, alias.name, _seen | {key})
            elif isinstance(node, ast.Import) and any(
                (a.asname or a.name.split(".")[0]) == name for a in node.names
            ):
                return module, name
        raise VendorError(f"{module} defines no top-level name {name!r}")


def _top_level_statements(tree: ast.Module) -> Iterator[ast.stmt]:
    """Module-level statements, looking into ``if``/``try`` blocks (``TYPE_CHECKING`` etc.)."""
    stack = list(reversed(tree.body))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If):
            stack.extend(reversed(node.body + node.orelse))
        elif isinstance(node, ast.Try):
            stack.extend(reversed(node.body + node.orelse + node.finalbody))
            for handler in node.handlers:
                stack.extend(reversed(handler.body))
        else:
            yield node


def _bound_names(target: ast.expr) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_bound_names(t) for t in target.elts))
    return set()


def _absolute_module(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` in ``module`` imports from."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _relative_module(current: str, current_is_package: bool, target: str) -> str:
    """``from <this> import ...`` text that reaches ``target`` from ``current``, relatively."""
    package = current.split(".") if current_is_package else current.split(".")[:-1]
    parts = target.split(".")
    common = 0
    while common < min(len(package), len(parts)) and package[common] == parts[common]:
        common += 1
    return "." * (len(package) - common + 1) + ".".join(parts[common:])


def _vendored(module: str) -> str:
    """``tumoraware.x`` -> ``scripts.tumoraware.x`` (see :data:`VENDOR_PACKAGE`)."""
    return f"scripts.{module}"


@dataclass
class VendorPlan:
    """What to copy and how to rewrite it.

    Attributes:
        modules: modules whose code is needed (copied, imports rewritten).
        packages: every package on the way to them (``__init__`` written as a docstring unless
            the package is also in ``modules``).
        data_files: non-Python files copied along (paths relative to the package root).
    """

    tree: SourceTree
    modules: set[str] = field(default_factory=set)
    packages: set[str] = field(default_factory=set)
    data_files: set[Path] = field(default_factory=set)

    def add(self, module: str) -> None:
        self.modules.add(module)
        parts = module.split(".")
        for cut in range(1, len(parts) + 1):
            if self.tree.is_package(".".join(parts[:cut])):
                self.packages.add(".".join(parts[:cut]))


def _iter_strings(config: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    if isinstance(config, dict):
        for k, v in config.items():
            yield from _iter_strings(v, k)
    elif isinstance(config, list):
        for v in config:
            yield from _iter_strings(v, None)
    elif isinstance(config, str):
        yield key, config


def _map_strings(config: Any, fn: Any, key: str | None = None) -> Any:
    if isinstance(config, dict):
        return {k: _map_strings(v, fn, k) for k, v in config.items()}
    if isinstance(config, list):
        return [_map_strings(v, fn, None) for v in config]
    if isinstance(config, str):
        return fn(key, config)
    return config


def _expression_references(expression: str) -> list[tuple[int, int, str]]:
    """Dotted ``tumoraware.a.b`` chains in a Python expression: (start, end, text) offsets.

    Found with :mod:`tokenize`, so names inside string literals are not touched. MONAI ids
    (``@train#dataset``) use ``#``, which Python would read as a comment: it is masked with ``_``
    for tokenizing only (same length, so offsets into ``expression`` hold).
    """
    if PACKAGE not in expression:
        return []
    masked = expression.replace("#", "_")
    tokens = list(tokenize.generate_tokens(io.StringIO(masked).readline))
    lines = expression.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(pos: tuple[int, int]) -> int:
        return starts[pos[0] - 1] + pos[1]

    found = []
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.NAME or tok.string != PACKAGE:
            continue
        if i > 0 and tokens[i - 1].type == tokenize.OP and tokens[i - 1].string == ".":
            continue  # an attribute called tumoraware, not the package
        j = i
        while (
            j + 2 < len(tokens)
            and tokens[j + 1].type == tokenize.OP
            and tokens[j + 1].string == "."
            and tokens[j + 2].type == tokenize.NAME
        ):
            j += 2
        start, end = offset(tok.start), offset(tokens[j].end)
        found.append((start, end, expression[start:end]))
    return found


def _import_statement(expression: str) -> ast.Import | ast.ImportFrom | None:
    try:
        node = ast.parse(expression.strip()).body
    except SyntaxError:
        return None
    if len(node) == 1 and isinstance(node[0], (ast.Import, ast.ImportFrom)):
        return node[0]
    return None


def _rewrite_string(key: str | None, value: str, plan: VendorPlan) -> str:
    """One config string with its ``tumoraware`` references pointed at the vendored copy."""
    tree = plan.tree
    if key == "_target_" and value.split(".")[0] == PACKAGE:
        module, attrs = tree.split_reference(value)
        if not attrs:
            raise VendorError(f'"_target_": "{value}" names a module, not a callable')
        defining, name = tree.resolve(module, attrs[0])
        plan.add(defining)
        return ".".join([_vendored(defining), *([name] if name else []), *attrs[1:]])
    if not value.startswith("$"):
        return value
    body = value[1:]
    statement = _import_statement(body)
    if isinstance(statement, ast.ImportFrom) and (statement.module or "").split(".")[0] == PACKAGE:
        if statement.level or len(statement.names) != 1:
            raise VendorError(f"config import {value!r}: use one absolute name per import")
        alias = statement.names[0]
        defining, name = tree.resolve(statement.module or PACKAGE, alias.name)
        plan.add(defining)
        bound = alias.asname or alias.name
        if not name:  # a submodule: from scripts.tumoraware.x import y
            parent, _, sub = _vendored(defining).rpartition(".")
            return f"$from {parent} import {sub}" + (f" as {bound}" if bound != sub else "")
        alias_text = f" as {bound}" if bound != name else ""
        return f"$from {_vendored(defining)} import {name}{alias_text}"
    if isinstance(statement, ast.Import):
        out = []
        for alias in statement.names:
            if alias.name.split(".")[0] == PACKAGE:
                module, attrs = tree.split_reference(alias.name)
                if attrs:
                    raise VendorError(f"config import {value!r}: {alias.name} is not a module")
                plan.add(module)
                out.append(_vendored(alias.name) + (f" as {alias.asname}" if alias.asname else ""))
            else:
                out.append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
        return "$import " + ", ".join(out)
    references = _expression_references(body)
    if not references:
        return value
    for start, end, dotted in reversed(references):
        module, _ = tree.split_reference(dotted)
        plan.add(module)  # attributes are read off this module: it is needed as written
        body = body[:start] + _vendored(dotted) + body[end:]
    return "$" + body


def rewrite_config(config: Any, plan: VendorPlan) -> Any:
    """A copy of a parsed config (JSON/YAML content) with every ``tumoraware`` reference
    rewritten to ``scripts.tumoraware``; the modules it needs are added to ``plan``."""
    return _map_strings(config, lambda key, value: _rewrite_string(key, value, plan))


def config_references(config: Any) -> list[str]:
    """Strings of a config that still reference the top-level ``tumoraware`` package."""
    bad = []
    for key, value in _iter_strings(config):
        if key == "_target_" and value.split(".")[0] == PACKAGE:
            bad.append(value)
        elif value.startswith("$"):
            statement = _import_statement(value[1:])
            names = []
            if isinstance(statement, ast.ImportFrom):
                names = [statement.module or ""]
            elif isinstance(statement, ast.Import):
                names = [a.name for a in statement.names]
            elif statement is None:
                try:
                    names = [d for _, _, d in _expression_references(value[1:])]
                except (tokenize.TokenError, SyntaxError):
                    names = []
            if any(n.split(".")[0] == PACKAGE for n in names):
                bad.append(value)
    return bad


def _package_imports(module: str, tree: SourceTree) -> Iterator[tuple[ast.stmt, list[tuple]]]:
    """Each ``tumoraware`` import statement of ``module`` (anywhere, functions included) with
    its names resolved: ``[(defining module, name there, bound name), ...]``."""
    is_package = tree.is_package(module)
    for node in ast.walk(tree.tree(module)):
        if isinstance(node, ast.Import):
            if any(a.name.split(".")[0] == PACKAGE for a in node.names):
                raise VendorError(
                    f"{tree.path_of(module)}:{node.lineno}: `import {PACKAGE}...` cannot be "
                    f"vendored; write `from {PACKAGE}.x import y`"
                )
        elif isinstance(node, ast.ImportFrom):
            source = _absolute_module(module, node, is_package)
            if source.split(".")[0] != PACKAGE:
                continue
            resolved = []
            for alias in node.names:
                if alias.name == "*":
                    raise VendorError(f"{tree.path_of(module)}:{node.lineno}: star import")
                defining, name = tree.resolve(source, alias.name)
                resolved.append((defining, name, alias.asname or alias.name))
            yield node, resolved


def vendor_configs(
    configs: Mapping[str, Any], tree: SourceTree | None = None
) -> tuple[dict[str, Any], VendorPlan]:
    """Rewrite every config (name -> parsed JSON/YAML content) to the vendored copy, and plan
    what to copy: the modules the configs reference, their transitive imports, and the data
    files those modules name."""
    plan = VendorPlan(tree or SourceTree())
    rewritten = {name: rewrite_config(config, plan) for name, config in configs.items()}
    pending = list(plan.modules)
    while pending:
        module = pending.pop()
        for _, resolved in _package_imports(module, plan.tree):
            for defining, _, _ in resolved:
                if defining not in plan.modules:
                    plan.add(defining)
                    pending.append(defining)
    for module in plan.modules:
        path = plan.tree.path_of(module)
        assert path is not None
        siblings = {p.name: p for p in path.parent.iterdir() if p.is_file() and p.suffix != ".py"}
        for node in ast.walk(plan.tree.tree(module)):
            if isinstance(node, ast.Constant) and str(node.value) in siblings:
                plan.data_files.add(siblings[str(node.value)].relative_to(plan.tree.root))
    return rewritten, plan


def _format_import(relative: str, names: list[tuple[str, str]], indent: str) -> str:
    """``from <relative> import a, b as c``, wrapped in parentheses past the line limit."""
    items = [n if n == bound else f"{n} as {bound}" for n, bound in names]
    line = f"from {relative} import {', '.join(items)}"
    if len(indent) + len(line) <= _MAX_LINE:
        return line
    inner = "".join(f"{indent}    {item},\n" for item in items)
    return f"from {relative} import (\n{inner}{indent})"


def _rewritten_source(module: str, tree: SourceTree) -> str:
    """The module's source with each ``tumoraware`` import replaced by relative imports of the
    defining modules (one statement per defining module, same indentation)."""
    path = tree.path_of(module)
    assert path is not None
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    is_package = tree.is_package(module)
    edits = []
    for node, resolved in _package_imports(module, tree):
        groups: dict[str, list[tuple[str, str]]] = {}
        for defining, name, bound in resolved:
            if name:
                groups.setdefault(_relative_module(module, is_package, defining), []).append(
                    (name, bound)
                )
            else:
                parent, _, sub = defining.rpartition(".")
                groups.setdefault(_relative_module(module, is_package, parent), []).append(
                    (sub, bound)
                )
        line_text = lines[node.lineno - 1]
        indent = line_text[: node.col_offset]
        own_line = not indent.strip()
        statements = [_format_import(rel, names, indent) for rel, names in groups.items()]
        text = ("\n" + indent).join(statements) if own_line else "; ".join(statements)
        start = starts[node.lineno - 1] + node.col_offset
        end = starts[(node.end_lineno or node.lineno) - 1] + (node.end_col_offset or 0)
        edits.append((start, end, text))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    ast.parse(source)  # the rewrite must still be valid Python
    return source


def _docstring_only(module: str, version: str) -> str:
    return (
        f'"""Package {module} (tumoraware {version}), vendored: only the modules this\n'
        'bundle\'s configs use are copied, so this file is left empty."""\n'
    )


def write_vendored(plan: VendorPlan, scripts_dir: str | Path, version: str) -> list[Path]:
    """Write ``scripts_dir/__init__.py`` and ``scripts_dir/tumoraware/...``; returns the files."""
    scripts_dir = Path(scripts_dir)
    written = []

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    if not (scripts_dir / "__init__.py").exists():
        write(scripts_dir / "__init__.py", '"""Code of this bundle (imported as scripts.*)."""\n')
    for module in sorted(plan.modules | plan.packages):
        parts = module.split(".")
        is_package = plan.tree.is_package(module)
        target = scripts_dir.joinpath(*parts, "__init__.py") if is_package else (
            scripts_dir.joinpath(*parts[:-1], parts[-1] + ".py")
        )  # fmt: skip
        if module in plan.modules:
            origin = plan.tree.path_of(module).relative_to(plan.tree.root.parent).as_posix()
            header = f"# Vendored from {origin} (tumoraware {version}), imports made relative.\n"
            write(target, header + _rewritten_source(module, plan.tree))
        else:
            write(target, _docstring_only(module, version))
    for relative in sorted(plan.data_files):
        source = plan.tree.root / relative
        write(scripts_dir / PACKAGE / relative, source.read_text())
    return written


def _stdlib() -> frozenset[str]:
    return frozenset(sys.stdlib_module_names) | {"__future__"}


def third_party_imports(files: Iterable[str | Path]) -> dict[str, set[str]]:
    """Top-level third-party import names of Python ``files`` -> the files that import them.

    Relative imports, the standard library and ``scripts`` (the bundle's own code) are left out.
    """
    found: dict[str, set[str]] = {}
    stdlib = _stdlib()
    for file in files:
        tree = ast.parse(Path(file).read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "scripts":
                    found.setdefault(top, set()).add(str(file))
    return found


def distributions_of(import_names: Iterable[str]) -> dict[str, str | None]:
    """Import name -> installed distribution name (``ignite`` -> ``pytorch-ignite``), or None."""
    mapping = importlib_metadata.packages_distributions()
    return {name: (mapping.get(name) or [None])[0] for name in import_names}
