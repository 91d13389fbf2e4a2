"""mmdetection config files and config text, read without importing or running them.

mmdetection configs (``configs/**/*.py``) are Python files of assignments; mmengine executes
them. Here they are parsed with :mod:`ast` and only literal-like expressions are evaluated:
numbers, strings, lists/tuples/dicts, ``dict(...)`` calls, arithmetic on numbers (``1. / 16``)
and names assigned earlier (``norm_cfg=norm_cfg``). Anything else (function calls, imports,
comprehensions) is left out, never run. ``_base_`` files are resolved next to the file and merged
the way mmengine merges them (child keys override, ``_delete_=True`` replaces). The same parser
reads the merged config text that mmdetection stores in a checkpoint's ``meta``
(``meta['config']`` in 2.x, ``meta['cfg']`` in 3.x).
"""
from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any

from .errors import CheckpointError

__all__ = ["merge_config", "parse_config_file", "parse_config_text"]

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_MAX_BASE_DEPTH = 16


class _Unsupported(Exception):
    """An expression that is not literal-like: its assignment is skipped."""


def _eval(node: ast.AST, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_eval(e, names) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        out: dict[Any, Any] = {}
        for k, v in zip(node.keys, node.values):
            if k is None:  # {**other}
                out.update(_eval(v, names))
            else:
                out[_eval(k, names)] = _eval(v, names)
        return out
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise _Unsupported(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand, names)
        if not isinstance(value, (int, float)):
            raise _Unsupported("unary op")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left, names), _eval(node.right, names)
        numbers = isinstance(left, (int, float)) and isinstance(right, (int, float))
        sequences = isinstance(node.op, ast.Add) and type(left) is type(right) and isinstance(left, (list, tuple))
        if numbers and not (isinstance(node.op, ast.Pow) and abs(right) > 64):
            return _BINOPS[type(node.op)](left, right)
        if sequences:
            return left + right
        raise _Unsupported("binary op")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("dict", "list", "tuple"):
        if node.func.id == "dict":
            out = {}
            for arg in node.args:
                out.update(_eval(arg, names))
            for kw in node.keywords:
                if kw.arg is None:
                    out.update(_eval(kw.value, names))
                else:
                    out[kw.arg] = _eval(kw.value, names)
            return out
        if len(node.args) == 1 and not node.keywords:
            return (list if node.func.id == "list" else tuple)(_eval(node.args[0], names))
    raise _Unsupported(type(node).__name__)


def parse_config_text(text: str, source: str = "<config>") -> dict[str, Any]:
    """Top-level assignments of a config, evaluated as literals (others skipped).

    Raises:
        CheckpointError: the text is not valid Python.
    """
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as err:
        raise CheckpointError(source, f"config is not valid Python (line {err.lineno}: {err.msg})") from err
    names: dict[str, Any] = {}
    for stmt in tree.body:
        if not isinstance(stmt, ast.Assign):
            continue
        try:
            value = _eval(stmt.value, names)
        except (_Unsupported, TypeError, ZeroDivisionError, ValueError):
            continue
        for target in stmt.targets:
            if isinstance(target, ast.Name):
                names[target.id] = value
    return names


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


def parse_config_file(path: str | Path, _depth: int = 0) -> dict[str, Any]:
    """Parse an mmdetection config file and its ``_base_`` files (relative paths).

    Raises:
        CheckpointError: missing/unreadable file, invalid Python, a missing base file.
    """
    path = Path(path)
    if _depth > _MAX_BASE_DEPTH:
        raise CheckpointError(path, "config _base_ chain too deep (a cycle?)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"cannot read config ({err.__class__.__name__}: {err})") from err
    cfg = parse_config_text(text, str(path))
    bases = cfg.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.exists():
            raise CheckpointError(path, f"config _base_ file {base!r} not found (looked at {base_path})")
        merged = merge_config(merged, parse_config_file(base_path, _depth + 1))
    return merge_config(merged, cfg)
