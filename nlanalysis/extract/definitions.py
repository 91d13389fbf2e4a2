"""Which column definitions wrote a run's rows (``run.json``'s ``settings.measure.definitions``), and the refusal to
resume or merge across them.

:data:`nlanalysis.schema.DEFINITIONS` is bumped with every change that can move a column's value for the same model, image
and settings. A run's rows are of one definitions version: a run is resumed only by an nlanalysis of its version, and
shards are merged only with shards of theirs (each refusal says why, and what to do: the generic "other settings" words
would send a user to rerun the same arguments, which is refused again). Runs written before the version was recorded
have none: their definitions are unknown, so they are refused too, as runs written before other rules were
(``_describe_run``). Reading a finished run is never refused; :func:`definitions_note` names the versions a report mixes.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..schema import DEFINITIONS, DEFINITIONS_HISTORY

__all__ = ["check_same_definitions", "check_shards_definitions", "definitions_note", "recorded_definitions"]


def recorded_definitions(settings: Any) -> Any:
    """The definitions version a run's ``settings`` record (``None``: none recorded, a run written before 2026-12-06)."""
    measure = settings.get("measure") if isinstance(settings, Mapping) else None
    return measure.get("definitions") if isinstance(measure, Mapping) else None


def _same(a: Any, b: Any) -> bool:
    """Whether two recorded versions are one (``true`` is not 1, ``1.0`` is not 1: neither was written by extract)."""
    return type(a) is type(b) and a == b


def _since(version: int) -> str:
    """The date from which ``version`` was written (its history line's first field)."""
    return DEFINITIONS_HISTORY[version].split(":", 1)[0]


def _phrase(recorded: Any, place: str) -> str:
    """``recorded`` (a run's definitions) for a message: ``1 there``, ``none recorded there: before 2026-12-06``, ..."""
    if recorded is None:
        return f"none recorded {place}: before {_since(min(DEFINITIONS_HISTORY))}"
    if type(recorded) is int and recorded in DEFINITIONS_HISTORY:
        return f"{recorded} {place}" + (f": before {_since(recorded + 1)}" if recorded + 1 in DEFINITIONS_HISTORY else "")
    if type(recorded) is int and recorded > DEFINITIONS:
        return f"{recorded} {place}: a newer nlanalysis than this one"
    return f"{json.dumps(recorded, default=str)} {place}: not a version any nlanalysis wrote"


def check_same_definitions(old: Any, where: Path | str) -> None:
    """Refuse to resume the run at ``where`` (its ``settings``: ``old``) unless this nlanalysis's definitions wrote it."""
    there = recorded_definitions(old)
    if _same(there, DEFINITIONS):
        return
    newer = type(there) is int and there > DEFINITIONS
    raise ValueError(
        f"{where}: written by an nlanalysis whose column definitions differ (definitions {DEFINITIONS} here, {_phrase(there, 'there')}); "
        f"its rows cannot be mixed with this version's: use another --out (or remove {where} to start it again"
        + (", or finish it with the newer nlanalysis that wrote it)" if newer else ")")
    )


def check_shards_definitions(roots: Sequence[Path | str], settings: Sequence[Any]) -> None:
    """Refuse to merge shards (``roots``, their ``settings``) written with different column definitions, naming the first
    that differs from the first shard's (shards of one version merge, whichever it is: merge computes nothing)."""
    first = recorded_definitions(settings[0])
    for root, s in zip(roots[1:], settings[1:]):
        this = recorded_definitions(s)
        if not _same(this, first):
            raise ValueError(
                f"{root} (against {roots[0]}): written by nlanalysis versions whose column definitions differ (definitions "
                f"{_phrase(first, f'in {roots[0]}')}, {_phrase(this, f'in {root}')}); their rows cannot be mixed in one run: "
                "merge only shards written with the same definitions: extract again, with this nlanalysis (definitions "
                f"{DEFINITIONS}) and each into a new --out, every shard written with other definitions, then merge"
            )


def definitions_note(runs: Mapping[str, Any]) -> str | None:
    """A report's note where its runs (``{label: settings}``) were written with different column definitions (``None``
    where they were not): a column's values of two of them may differ for the same model and image."""
    groups: dict[str, list[str]] = {}
    for label, s in runs.items():
        recorded = recorded_definitions(s)
        version = (f"none recorded (before {_since(min(DEFINITIONS_HISTORY))})" if recorded is None
                   else json.dumps(recorded, default=str))  # fmt: skip
        groups.setdefault(version, []).append(f"`{label}`")
    if len(groups) < 2:
        return None
    shown = "; ".join(f"definitions {version}: {', '.join(labels)}" for version, labels in groups.items())
    return (f"the runs were written by nlanalysis versions whose column definitions differ ({shown}; this nlanalysis writes "
            f"{DEFINITIONS}): a column's values of runs of two versions may differ for the same model and image (extract the "
            "older ones again to compare like with like)")
