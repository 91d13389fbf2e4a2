"""mmdetection config files and config text, read without importing or running them.

mmdetection configs (``configs/**/*.py``) are Python files of assignments; mmengine executes
them. Here they are parsed with :mod:`ast` and only literal-like expressions are evaluated:
numbers, strings, lists/tuples/dicts, ``dict(...)`` calls, arithmetic on numbers (``1. / 16``)
and names assigned earlier (``norm_cfg=norm_cfg``). Anything else (function calls, imports,
comprehensions) is left out, never run. ``_base_`` files are resolved next to the file and merged
the way mmengine merges them (child keys override, ``_delete_=True`` replaces). The same parser
reads the merged config text that mmdetection stores in a checkpoint's ``meta``
(``meta['config']`` in 2.x, ``meta['cfg']`` in 3.x).

A checkpoint's config is untrusted input, so evaluating it is bounded (:class:`ConfigLimits`):
the text's size, every value's size (a number's bits; a list's, tuple's, dict's or string's
elements and characters, nested ones included, as if it were printed), expression and value
nesting, the number of ``_base_`` files and their depth, and the total work (syntax nodes
visited plus the size of every value built, over the config and all its bases). Work is
counted, not timed, so a refusal is the same on every machine. Past a limit the config is refused
with :class:`~nlanalysis.checkpoints.errors.ConfigLimitError` naming the file and line.
"""
from __future__ import annotations

import ast
import operator
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import broken_link, file_kind
from .errors import CheckpointError, ConfigLimitError

__all__ = ["DEFAULT_LIMITS", "ConfigLimits", "check_config_file", "merge_config", "parse_config_file", "parse_config_text"]

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_CONTAINERS = (list, tuple, dict)


@dataclass(frozen=True)
class ConfigLimits:
    """Bounds on reading one config (real mmdetection configs stay far below each).

    Attributes:
        max_bytes: size of a config file or text.
        max_int_bits: bits of any integer, literal or computed.
        max_value_size: elements plus string characters of one value, nested ones included.
        max_nesting: depth of an expression, and of a value's nested containers.
        max_work: syntax nodes visited plus the sizes of all values built, config and bases together.
        max_base_files: ``_base_`` files read, all levels together.
        max_base_depth: length of a ``_base_`` chain.
    """

    max_bytes: int = 256 * 2**10
    max_int_bits: int = 1024
    max_value_size: int = 1_000_000
    max_nesting: int = 100
    max_work: int = 5_000_000
    max_base_files: int = 64
    max_base_depth: int = 16


DEFAULT_LIMITS = ConfigLimits()


class _Unsupported(Exception):
    """An expression that is not literal-like: its assignment is skipped."""


class _Refused(Exception):
    """A limit of :class:`ConfigLimits` was reached: the whole config is refused."""


class _Budget:
    """The work and ``_base_`` files left to one config and its bases (shared by all of them)."""

    def __init__(self, limits: ConfigLimits) -> None:
        self.limits = limits
        self.work = 0
        self.files = 0

    def charge(self, units: int) -> None:
        self.work += units
        if self.work > self.limits.max_work:
            raise _Refused(f"more than {self.limits.max_work:,} units of work (syntax nodes plus sizes of the values built)")


class _Evaluator:
    """Evaluates literal-like expressions of one config, keeping the size of every value it built.

    ``_sized`` maps ``id(container)`` to ``(container, size, nesting)``; holding the container keeps
    its id from being reused. Sizes of new containers are sums over their items (already known), so
    sizing costs the number of items, not the size of what they share.
    """

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        self.limits = budget.limits
        self.names: dict[str, Any] = {}
        self.lines: dict[str, int] = {}  # name -> line of its last assignment
        self.skipped: list[str] = []  # dict entries left out (not literal-like): 'line N: key (why)'
        self._sized: dict[int, tuple[Any, int, int]] = {}

    def measure(self, value: Any) -> tuple[int, int]:
        """``(size, nesting)`` of a value: 1 per scalar (+ characters of a string, + a word per 64
        bits of an integer) and per container; nesting counts containers inside containers."""
        if isinstance(value, _CONTAINERS):
            known = self._sized.get(id(value))
            if known is not None and known[0] is value:
                return known[1], known[2]
            return self._register(value)
        if isinstance(value, (str, bytes)):
            return 1 + len(value), 0
        if isinstance(value, int):
            return 1 + value.bit_length() // 64, 0
        return 1, 0

    def _register(self, value: Any) -> tuple[int, int]:
        items = [x for kv in value.items() for x in kv] if isinstance(value, dict) else value
        self.budget.charge(len(items))
        size, nesting = 1, 0
        for item in items:
            s, n = self.measure(item)
            size, nesting = size + s, max(nesting, n)
        nesting += 1
        self._check_size(value, size)
        if nesting > self.limits.max_nesting:
            raise _Refused(f"containers nested {nesting} deep (limit {self.limits.max_nesting})")
        self._sized[id(value)] = (value, size, nesting)
        self.budget.charge(size)
        return size, nesting

    def _check_size(self, like: Any, size: int) -> None:
        """Refuse a container of ``like``'s type and ``size`` over ``max_value_size``."""
        if size > self.limits.max_value_size:
            kind = type(like).__name__
            raise _Refused(f"a {kind} of {size:,} elements and characters (limit {self.limits.max_value_size:,})")

    def made(self, value: Any) -> Any:
        """Check a value just built (size, bits) and charge it; returns it."""
        if isinstance(value, int) and value.bit_length() > self.limits.max_int_bits:
            raise _Refused(f"a number of {value.bit_length():,} bits (limit {self.limits.max_int_bits:,})")
        if isinstance(value, complex):
            raise _Unsupported("complex number")
        if isinstance(value, _CONTAINERS):
            self._register(value)
        else:
            self.budget.charge(self.measure(value)[0])
        return value

    def eval(self, node: ast.AST, depth: int = 0) -> Any:
        """The value of a literal-like expression (raises :class:`_Unsupported` for others)."""
        self.budget.charge(1)
        if depth > self.limits.max_nesting:
            raise _Refused(f"an expression nested more than {self.limits.max_nesting} deep")
        depth += 1
        if isinstance(node, ast.Constant):
            return self.made(node.value)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.eval(e, depth) for e in node.elts]
            return self.made(items if isinstance(node, ast.List) else tuple(items))
        if isinstance(node, ast.Dict):
            out: dict[Any, Any] = {}
            for k, v in zip(node.keys, node.values):
                if k is None:  # {**other}
                    out.update(self.eval(v, depth))
                else:
                    self._entry(out, self.eval(k, depth), v, depth)
            return self.made(out)
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            raise _Unsupported(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.eval(node.operand, depth)
            if not isinstance(value, (int, float)):
                raise _Unsupported("unary op")
            return self.made(-value if isinstance(node.op, ast.USub) else value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return self.made(self._binop(node.op, self.eval(node.left, depth), self.eval(node.right, depth)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("dict", "list", "tuple"):
            return self.made(self._call(node, depth))
        raise _Unsupported(type(node).__name__)

    def _entry(self, out: dict[Any, Any], key: Any, node: ast.AST, depth: int) -> None:
        """``out[key]`` = the value of ``node``; one that is not literal-like (``num_classes=len(classes)``) is left out of
        its dict, not the whole assignment with it, and listed in ``skipped``."""
        try:
            out[key] = self.eval(node, depth)
        except (_Unsupported, TypeError, ZeroDivisionError, ValueError, OverflowError) as err:
            self.skipped.append(f"line {getattr(node, 'lineno', '?')}: {key} ({type(err).__name__}: {err})"[:160])

    def _binop(self, op: ast.operator, left: Any, right: Any) -> Any:
        """Arithmetic on two numbers, or ``+`` of two lists/tuples; integers that would outgrow
        ``max_int_bits`` are refused before they are computed."""
        if isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if isinstance(left, int) and isinstance(right, int):
                bits = self._product_bits(op, left, right)
                if bits > self.limits.max_int_bits:
                    raise _Refused(f"a number of about {bits:,} bits (limit {self.limits.max_int_bits:,})")
            return _BINOPS[type(op)](left, right)
        if isinstance(op, ast.Add) and type(left) is type(right) and isinstance(left, (list, tuple)):
            self._check_size(left, self.measure(left)[0] + self.measure(right)[0] - 1)  # before building it
            return left + right
        raise _Unsupported("binary op")

    @staticmethod
    def _product_bits(op: ast.operator, left: int, right: int) -> int:
        """Bits of ``left * right`` or ``left ** right`` at least (0 for the other operators)."""
        if isinstance(op, ast.Mult) and left and right:
            return left.bit_length() + right.bit_length() - 1
        if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1:
            return (abs(left).bit_length() - 1) * right + 1
        return 0

    def _call(self, node: ast.Call, depth: int) -> Any:
        if node.func.id == "dict":
            out = {}
            for arg in node.args:
                out.update(self.eval(arg, depth))
            for kw in node.keywords:
                if kw.arg is None:
                    out.update(self.eval(kw.value, depth))
                else:
                    self._entry(out, kw.arg, kw.value, depth)
            return out
        if len(node.args) == 1 and not node.keywords:
            arg = self.eval(node.args[0], depth)
            if not isinstance(arg, (str, bytes, *_CONTAINERS)):
                raise _Unsupported(f"{node.func.id}() of a {type(arg).__name__}")
            return (list if node.func.id == "list" else tuple)(arg)
        raise _Unsupported(node.func.id)


def _parse(text: str, source: str, limits: ConfigLimits) -> ast.Module:
    if len(text) > limits.max_bytes:
        raise ConfigLimitError(source, f"config text of {len(text):,} characters (limit {limits.max_bytes:,}); refused")
    try:
        return ast.parse(text, filename=source)
    except SyntaxError as err:
        raise CheckpointError(source, f"config is not valid Python (line {err.lineno}: {err.msg})") from err
    except (RecursionError, MemoryError) as err:  # the parser's own nesting limits
        raise ConfigLimitError(source, "config nested too deeply for the Python parser; refused") from err
    except ValueError as err:  # e.g. null bytes (Python < 3.12)
        raise CheckpointError(source, f"config is not valid Python ({err})") from err


def _parse_text(text: str, source: str, budget: _Budget) -> _Evaluator:
    """The evaluator after every top-level assignment (``names``, ``lines``)."""
    tree = _parse(text, source, budget.limits)
    evaluator = _Evaluator(budget)
    for stmt in tree.body:
        if not isinstance(stmt, ast.Assign):
            continue
        try:
            value = evaluator.eval(stmt.value)
        except (_Unsupported, TypeError, ZeroDivisionError, ValueError, OverflowError):
            continue
        except _Refused as err:
            raise ConfigLimitError(
                source, f"line {stmt.lineno}: {err}; configs are parsed, never run, and this one is refused"
            ) from None
        for target in stmt.targets:
            if isinstance(target, ast.Name):
                evaluator.names[target.id] = value
                evaluator.lines[target.id] = stmt.lineno
    return evaluator


#: the key under which a parsed config lists the dict entries it left out (:meth:`_Evaluator._entry`), if any
SKIPPED = "_skipped_entries_"


def _with_skipped(cfg: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
    if skipped:
        cfg[SKIPPED] = skipped
    return cfg


def parse_config_text(text: str, source: str = "<config>", limits: ConfigLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Top-level assignments of a config, evaluated as literals (others skipped; a dict entry that is not literal-like
    is left out of its dict and listed under :data:`SKIPPED`).

    Raises:
        ConfigLimitError: the text or one of its values is too large, too nested or too much work.
        CheckpointError: the text is not valid Python.
    """
    parsed = _parse_text(text, source, _Budget(limits))
    return _with_skipped(parsed.names, [f"{source} {s}" for s in parsed.skipped])


def merge_config(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """mmengine's merge: dicts merge recursively, child wins, ``_delete_=True`` replaces."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not value.get("_delete_", False):
            out[key] = merge_config(out[key], value)
        elif isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if k != "_delete_"}
        else:
            out[key] = value
    return out


def _kind(mode: int) -> str:
    """What a non-regular file is, from its ``st_mode`` (a directory: "a folder", as the checkpoint errors say)."""
    return file_kind(mode, folder="a folder")


def check_config_file(path: str | os.PathLike[str]) -> None:
    """Refuse, naming it, a config path that is no regular file, looked at by name before anything opens it (opening a
    named pipe wakes a writer waiting on it, opening a device may act on it): missing, a broken symbolic link, a folder,
    a named pipe, a socket, a device.

    Raises:
        ConfigLimitError: a folder, a named pipe, a socket or a device.
        CheckpointError: no file (a broken link said so), or one that cannot be looked at.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        link = broken_link(path)
        raise CheckpointError(path, f"config is {link}, not a file" if link else "no such config file") from None
    except (OSError, ValueError) as err:  # permissions on a folder above, a name too long, a NUL in it
        raise CheckpointError(path, f"cannot read config ({err.__class__.__name__}: {err})") from err
    if not stat.S_ISREG(mode):
        raise ConfigLimitError(path, f"config is {_kind(mode)}, not a regular file; refused")


def _read_config(path: Path, limits: ConfigLimits) -> str:
    """The text of a regular file of at most ``limits.max_bytes`` (devices, FIFOs, folders refused by name before it is
    opened, :func:`check_config_file`; and on the open descriptor, opened non-blocking, should one be put there between)."""
    check_config_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except (OSError, ValueError) as err:
        raise CheckpointError(path, f"cannot read config ({err.__class__.__name__}: {err})") from err
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ConfigLimitError(path, f"config is {_kind(mode)}, not a regular file; refused")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ConfigLimitError(path, f"config file larger than {limits.max_bytes:,} bytes; refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(path, f"cannot read config (not UTF-8 text: {err.reason} at byte {err.start})") from err


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` of a value, cut to ``limit`` characters with an ellipsis."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _base_list(path: Path, bases: Any) -> list[str]:
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise CheckpointError(path, f"config _base_ must be a file name or a list of them, not {_short(bases)}")
    return list(bases)


def _parse_file(path: Path, budget: _Budget, chain: tuple[Path, ...]) -> dict[str, Any]:
    """``chain``: the resolved files that include this one, outermost first."""
    limits = budget.limits
    if len(chain) > limits.max_base_depth:
        raise ConfigLimitError(path, f"config _base_ chain deeper than {limits.max_base_depth} files; refused")
    budget.files += 1
    if budget.files > limits.max_base_files + 1:
        raise ConfigLimitError(path, f"config with more than {limits.max_base_files} _base_ files in all; refused")
    parsed = _parse_text(_read_config(path, limits), str(path), budget)
    cfg, where = parsed.names, f"line {parsed.lines.get('_base_')}: config _base_ file"
    try:
        here = path.resolve()
    except (OSError, RuntimeError) as err:
        raise CheckpointError(path, f"cannot resolve the config's path ({err})") from err
    merged: dict[str, Any] = {}
    skipped: list[str] = []
    for base in _base_list(path, cfg.pop("_base_", [])):
        try:
            base_path = (path.parent / base).resolve()
        except (OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(path, f"{where} {_short(base)} is not a usable path ({err})") from err
        if base_path in (*chain, here):
            cycle = " -> ".join(p.name for p in (*chain, here, base_path))
            raise CheckpointError(path, f"config _base_ files form a cycle: {cycle}")
        try:
            mode = base_path.stat().st_mode
        except FileNotFoundError:
            raise CheckpointError(path, f"config _base_ file {base!r} not found (looked at {base_path})") from None
        except OSError as err:
            raise CheckpointError(path, f"{where} {_short(base)} cannot be read ({err.strerror})") from err
        if not stat.S_ISREG(mode):
            raise ConfigLimitError(path, f"{where} {_short(base)} is {_kind(mode)}, not a regular file; refused")
        base_cfg = _parse_file(base_path, budget, (*chain, here))
        skipped += base_cfg.pop(SKIPPED, [])
        merged = merge_config(merged, base_cfg)
    return _with_skipped(merge_config(merged, cfg), skipped + [f"{path} {s}" for s in parsed.skipped])


def parse_config_file(path: str | os.PathLike[str], limits: ConfigLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Parse an mmdetection config file and its ``_base_`` files (paths relative to the file).

    Raises:
        ConfigLimitError: a file that is no regular file, or too large; a value too large or too
            nested; too much work; too many or too deeply chained ``_base_`` files.
        CheckpointError: missing/unreadable file, invalid Python, a missing base file, a cycle.
    """
    return _parse_file(Path(path), _Budget(limits), ())
