"""The controls report of issue 16 (``reports/controls``): training margins, attention readings, the answer.

Reads the numbers ``reports/controls/make.sh`` keeps in the repository (``reports/controls/runs``): per
design ``D`` the training grid's run records ``D_e12`` (``nlanalysis train``'s ``runs/*.json``), the same
grid trained longer ``D_e24`` (the plateau rule) and ``D/{variant}_s{seed}``, the result sets (``metrics.csv``, ``images.csv``,
``run.json``) of the grid's finals (``D/*_step*``: its snapshots, not read here). Writes ``OUT/README.md`` and,
per design, ``OUT/D_training.csv`` and ``OUT/D_attention.csv``.

The words follow the reading rules of ``reports/controls/PLAN.md``, fixed before any result existed:

1. ``same_category_lift`` (on ``query-specific`` scenes: the own-group lift) whose interval lies above
   1: "attends its own group"; below 1: "avoids its own group"; else "no own-group preference shown";
2. ``att`` whose interval lies above / below that of ``ctrl_form_att``: "att above / below its
   form-matched control", else "not distinguishable from its control";
3. maps with explicit query/key projections: ``unary_var_share`` whose interval lies below / above 0.5:
   "pairwise term dominates" / "unary term dominates";
4. the lifts against their locality control (result sets extracted with ``--locality-control``; PLAN.md,
   session 15, 02:50, fixed before the control was built, in the ratio form of 02:55): ``own_object_lift_objects_vs_local`` and ``same_category_lift_vs_local`` whose interval
   lies above 1: "above its locality control", below 1: "below its locality control", else "not
   distinguishable from locality" (for a map shared by every query, GC/SNL, the line says that its lift is 1
   by construction: the ratio then reads only the control); images whose control lift is below 1e-3 (its Gaussian tail, not its locality,
   would set the ratio; fixed in session 16 before any such set was read) are left out and counted;
5. the gate: ``embedded_gaussian`` better than both ``gc`` and ``snl`` on ``query-specific`` (seed-paired
   mIoU margins whose 95% intervals lie above 0); the answer: yes when the gate holds and
   ``embedded_gaussian`` attends its own group there.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_write
from .tables import LOCALITY_RATIOS, format_ci, summarise, with_locality_ratios
from .train.compare import load_results, paired_margins, plateau
from .train.variants import ALL_VARIANTS, block_parameters
from .report.meta import load_runs

__all__ = ["ATTENTION_STATS", "DESIGNS", "answer", "attention_summary", "gate", "read_attention", "training_table",
           "write_controls_report"]  # fmt: skip

DESIGNS = ("query-specific", "query-specific-v2", "query-specific-v3", "independent", "shared")  # v2, v3: PLAN.md revisions
REFERENCES = ("baseline", "gc", "snl")
GATE_VARIANT = "embedded_gaussian"
#: seeds per variant and design (PLAN.md's grid): the gate is decided on all of them, not on the first to finish
PLAN_SEEDS = 3
#: the attention statistics the report tables, as the issue lists them
ATTENTION_STATS = (
    "input", "output", "att", "ctrl_form_att", "logit_rank1", "att_gain_only", "gain_only_tv", "unary_var_share",
    "own_object_lift_objects", "same_category_lift",
)  # fmt: skip
QK_VARIANTS = frozenset({"embedded_gaussian", "dot_product", "danet_pam"})  # explicit query/key projections


#: how far an interval must clear 1 to lie above or below it: a map shared by every query has lifts of exactly 1, and
#: float rounding (1 +- 1e-16) must not read as a preference
ROUNDING = 1e-9


def _side(low: float, high: float) -> int:
    """+1 where ``[low, high]`` lies above 1, -1 where below, 0 where it holds 1 (within :data:`ROUNDING`)."""
    return 1 if low > 1 + ROUNDING else -1 if high < 1 - ROUNDING else 0


class NoReferenceYet(ValueError):
    """A grid none of whose references (:data:`REFERENCES`) has finished: nothing to pair its margins with yet."""


def _interval(row: pd.Series, stat: str) -> tuple[float, float]:
    return float(row.get(f"{stat}_low", math.nan)), float(row.get(f"{stat}_high", math.nan))


def read_attention(row: pd.Series) -> list[str]:
    """Rules 1-4 (module docstring) for one row of :func:`attention_summary`; a rule whose statistic the
    row lacks is left out."""
    words = []
    low, high = _interval(row, "same_category_lift")
    if not math.isnan(low):
        reading = {1: "attends its own group", -1: "avoids its own group", 0: "no own-group preference shown"}[_side(low, high)]
        words.append(f"{reading} (same-category lift {format_ci(row['same_category_lift'], low, high)}{_zeros(row, 'same_category_lift')})")
    (a_low, a_high), (c_low, c_high) = _interval(row, "att"), _interval(row, "ctrl_form_att")
    if not (math.isnan(a_low) or math.isnan(c_low)):
        where = ("above its form-matched control" if a_low > c_high else "below its form-matched control" if a_high < c_low
                 else "not distinguishable from its form-matched control")  # fmt: skip
        words.append(f"att {format_ci(row['att'], a_low, a_high)} {where} ({format_ci(row['ctrl_form_att'], c_low, c_high)})")
    u_low, u_high = _interval(row, "unary_var_share")
    if row.get("variant") in QK_VARIANTS and not math.isnan(u_low):
        term = "pairwise term dominates" if u_high < 0.5 else "unary term dominates" if u_low > 0.5 else "neither term dominates"
        words.append(f"{term} (unary share {format_ci(row['unary_var_share'], u_low, u_high)})")
    for ratio, (lift, _) in LOCALITY_RATIOS.items():
        r_low, r_high = _interval(row, ratio)
        if not math.isnan(r_low):
            where = {1: "above its locality control", -1: "below its locality control", 0: "not distinguishable from locality"}[
                _side(r_low, r_high)]  # fmt: skip
            # four digits: an interval that just excludes 1 ([1.001, 1.71]) must not print as one that touches it
            unread = int(row.get(f"{ratio}_unread", 0) or 0)
            left = f"; {unread} of {_count(row, lift)} image results without a readable control" if unread else ""
            shared = ("; one map for every query: its lift is 1 by construction, the ratio is 1 over the control's lift"
                      if bool(row.get("query_independent", False)) else "")  # fmt: skip
            words.append(f"{lift} {where} (ratio {row[ratio]:.4g} [{r_low:.4g}, {r_high:.4g}]{left}{_zeros(row, lift)}{shared})")
    return words


def _count(row: pd.Series, lift: str) -> int:
    """The image results (an image once per seed) with a value of ``lift`` in ``row``'s group
    (:func:`attention_summary`'s ``{lift}_images``)."""
    return int(row.get(f"{lift}_images", 0) or 0)


def _zeros(row: pd.Series, lift: str) -> str:
    """``"; K of M image results with lift 0 left out"`` (an image counts once per seed) where the group has lifts of
    0 (no log: out of every geometric mean of the lift and of its ratios), else ``""``."""
    zeros = int(row.get(f"{lift}_zero", 0) or 0)
    return f"; {zeros} of {_count(row, lift)} image results with lift 0 left out" if zeros else ""


def training_table(short: str | os.PathLike[str], long: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Per variant: seeds, mIoU, the seed-paired margins over each of :data:`REFERENCES` present (mean,
    interval, p, verdict) and, with ``long``, the plateau rule; numbers, one row per variant."""
    results = load_results(short)
    present = {r.variant for r in results}
    table = None
    for ref in (r for r in REFERENCES if r in present):
        m = paired_margins(results, baseline=ref)
        cols = {c: f"{c}_vs_{ref}" for c in ("pairs", "margin", "margin_low", "margin_high", "margin_p", "verdict")}
        part = m.rename(columns=cols)[["variant", *cols.values()]]
        table = m[["variant", "seeds", "miou", "miou_sd", "seconds_per_run"]].merge(part) if table is None else table.merge(part)
    if table is None:
        raise NoReferenceYet(f"{short}: none of {REFERENCES} trained yet, nothing to pair with")
    table.insert(1, "block_params", [block_parameters(v) if v in ALL_VARIANTS else math.nan for v in table.variant])
    if long is not None and _has_records(long):
        table = table.merge(plateau(results, load_results(long))[["variant", "pairs", "gain", "threshold", "plateau"]],
                            how="left")  # fmt: skip
    return table


def _has_records(folder: str | os.PathLike[str]) -> bool:
    """A training output (``runs/``) or its run records as the repository keeps them (flat ``*_s*.json``)."""
    folder = Path(folder)
    return folder.is_dir() and ((folder / "runs").is_dir() or any(folder.glob("*_s*.json")))


def gate(training: pd.DataFrame) -> tuple[bool | None, str]:
    """The PLAN's gate on a ``query-specific`` :func:`training_table`: ``(holds, sentence)``; ``None`` while
    it cannot be decided (a reference or the gate variant missing, or fewer than the plan's :data:`PLAN_SEEDS`
    paired seeds)."""
    row = training[training.variant == GATE_VARIANT]
    parts, verdicts = [], []
    for ref in ("gc", "snl"):
        col = f"margin_vs_{ref}"
        if (row.empty or col not in training or math.isnan(float(row[f"margin_low_vs_{ref}"].iloc[0]))
                or int(row[f"pairs_vs_{ref}"].iloc[0]) < PLAN_SEEDS):  # fmt: skip
            return None, f"gate not decided yet: {GATE_VARIANT} vs {ref} needs the plan's {PLAN_SEEDS} paired seeds"
        r = row.iloc[0]
        parts.append(f"{GATE_VARIANT} - {ref} {format_ci(r[col], r[f'margin_low_vs_{ref}'], r[f'margin_high_vs_{ref}'])}"
                     f" mIoU (p = {r[f'margin_p_vs_{ref}']:.3g})")  # fmt: skip
        verdicts.append(r[f"margin_low_vs_{ref}"] > 0)
    holds = all(verdicts)
    return holds, ("the gate holds: " if holds else "the gate fails: ") + "; ".join(parts)


def answer(gate_holds: bool | None, gate_row: pd.Series | None) -> str:
    """The PLAN's answer from the gate and ``embedded_gaussian``'s attention row on ``query-specific``."""
    if gate_holds is None:
        return "Not answered yet: the gate is not decided."
    if not gate_holds:
        return ("No valid positive control: the NL block does not beat both GC and SNL on the query-specific "
                "scenes, so they do not show that query-specific context is needed (a revised design needs its own PLAN entry).")  # fmt: skip
    low, high = (math.nan, math.nan) if gate_row is None else _interval(gate_row, "same_category_lift")
    if math.isnan(low):
        return "The gate holds; the attention statistics of the query-specific finals are not extracted yet."
    if _side(low, high) > 0:
        return ("Yes: where query-specific context is needed (the gate holds), the embedded-Gaussian block's maps "
                "attend the query's own group, and the analysis shows it.")  # fmt: skip
    return "The block helps (the gate holds) but its maps do not show an own-group preference."


def attention_summary(extracts: list[Path]) -> pd.DataFrame:
    """:func:`~nlanalysis.tables.summarise` of the result sets, one row per variant and block, pooled over
    seeds (images nested in seeds); with the lifts' ratios to their locality control where the sets have it."""
    runs = load_runs(extracts)
    unknown = [f"{m.path} ({m.source})" for m in runs.meta if m.seed is None]
    if unknown:  # each set would be read as a variant of its own, with images for seeds
        raise ValueError("the controls report needs each result set's variant and seed; not known for: " + "; ".join(unknown))
    frame = with_locality_ratios(runs.frame)
    out = summarise(frame, by=("variant",), stats=(*ATTENTION_STATS, *LOCALITY_RATIOS))
    counted = {}  # per lift: the images with a value, those of lift <= 0 (no log: out of its geometric means) and, per
    for ratio, (lift, _) in LOCALITY_RATIOS.items():  # ratio, those whose locality control is not readable
        if lift in frame:
            counted[f"{lift}_images"] = frame[lift].notna()
            counted[f"{lift}_zero"] = frame[lift] <= 0
        if ratio in frame:
            counted[f"{ratio}_read"] = (frame[ratio] > 0) & np.isfinite(frame[ratio])
            counted[f"{ratio}_unread"] = frame[lift].notna() & frame[ratio].isna()
    if counted:
        counts = frame.assign(**counted).groupby(["variant", "block"], sort=False)[list(counted)].sum().reset_index()
        out = out.merge(counts, how="left")
    return out


def _training_markdown(t: pd.DataFrame) -> str:
    refs = [r for r in REFERENCES if f"margin_vs_{r}" in t]
    head = (["variant", "block params", "seeds", "mIoU (sd)", *(f"vs {r}" for r in refs), "min / run"]
            + (["plateau"] if "plateau" in t else []))  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in t.iterrows():
        params = "–" if pd.isna(r.block_params) else f"{int(r.block_params):,}"
        cells = [r.variant, params, str(int(r.seeds)), f"{r.miou:.3f} ({r.miou_sd:.3f})" if not math.isnan(r.miou_sd) else f"{r.miou:.3f}"]
        for ref in refs:
            if r.variant == ref:
                cells.append("–")
                continue
            ci = format_ci(r[f"margin_vs_{ref}"], r[f"margin_low_vs_{ref}"], r[f"margin_high_vs_{ref}"])
            if int(r[f"pairs_vs_{ref}"]) < int(r.seeds):  # the margin is over the seeds both have
                ci += f" ({int(r[f'pairs_vs_{ref}'])} pair{'s' * (int(r[f'pairs_vs_{ref}']) != 1)})"
            cells.append(f"{ci} {r[f'verdict_vs_{ref}']}" if r[f"verdict_vs_{ref}"] != "no difference shown" else ci)
        cells.append(f"{r.seconds_per_run / 60:.1f}")
        if "plateau" in t:
            cells.append("–" if pd.isna(r.plateau) else ("yes" if r.plateau else f"NO (+{r.gain:.3f})")
                         + ("" if pd.isna(r.plateau) or int(r.pairs) >= int(r.seeds) else f" ({int(r.pairs)} of {int(r.seeds)} seeds)"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: the longer schedules (PLAN.md's plateau rule: 24 epochs; v2's extension, session 16: 48), in order, each read beside
#: the 12-epoch grid as a further reading
LONGER = ((24, "second"), (48, "third"))
#: runs in a design's full grid (PLAN.md: 9 variants x 3 seeds)
GRID_RUNS = 27


def _runs(training: pd.DataFrame) -> str:
    """``"27 runs"``, or ``"4 of 27 runs: the grid is still training"``."""
    n = int(training.seeds.sum())
    return f"{n} runs" if n >= GRID_RUNS else f"{n} of {GRID_RUNS} runs: the grid is still training"


def _not_at_plateau(training: pd.DataFrame, variant: str) -> str:
    """``", not at plateau"`` for a variant the plateau rule marks so (PLAN.md: "marked in every table"), else ``""``."""
    row = training[training.variant == variant]
    if "plateau" not in training or row.empty or pd.isna(row.plateau.iloc[0]) or bool(row.plateau.iloc[0]):
        return ""
    r = row.iloc[0]
    return ", not at plateau" + ("" if int(r.pairs) >= int(r.seeds) else f" ({int(r.pairs)} of {int(r.seeds)} seeds)")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_write(path, encoding="utf-8") as f:  # as pandas writes to a path
        frame.to_csv(f, index=False)


def write_controls_report(root: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write ``out/README.md`` (and the per-design CSVs) from the kept numbers in ``root``
    (``reports/controls/runs``); returns its path."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    head = ["# Controls: can the analysis see query dependence when it is there? (issue 16)", "",
             f"Generated by `reports/controls/make.sh report` from `{root}`; the grid, the gate and the reading rules are "
             "in [PLAN.md](PLAN.md), fixed before the results. Margins: seed-paired mIoU differences, mean [95% t-interval] "
             "over seeds, called better/worse only when the interval excludes 0. Attention: means [95% CI] over images "
             "nested in seeds, 300 validation scenes of the design.", ""]  # fmt: skip
    lines: list[str] = []
    verdict = "Not answered yet: no query-specific grid."
    for design in DESIGNS:
        short, long = root / f"{design}_e12", root / f"{design}_e24"
        if not _has_records(short):
            lines += [f"## {design}", "", "Not trained yet.", ""]
            continue
        training = training_table(short, long)
        _write_csv(training, out / f"{design}_training.csv")
        lines += [f"## {design}", "", f"12-epoch finals ({_runs(training)}):", "", _training_markdown(training), ""]
        longer = []  # PLAN.md: the plateau rule's longer schedules, each a further reading of the gate beside the first
        for i, (epochs, nth) in enumerate(LONGER):
            folder = root / f"{design}_e{epochs}"
            after = root / f"{design}_e{LONGER[i + 1][0]}" if i + 1 < len(LONGER) else None  # its own plateau rule
            try:
                table = training_table(folder, after) if _has_records(folder) else None
            except NoReferenceYet:  # its first runs (a folder of two jobs or a record twice is raised, not skipped)
                table = None
            if table is not None:
                _write_csv(table, out / f"{design}_training_e{epochs}.csv")
                lines += [f"{epochs}-epoch finals ({_runs(table)}; a {nth} reading beside the 12-epoch one, never in its place):",
                          "", _training_markdown(table), ""]  # fmt: skip
                longer.append((epochs, nth, table))
        extracts = sorted(p for p in (root / design).glob("*_s*") if "_step" not in p.name and (p / "metrics.csv").is_file())
        attention = attention_summary(extracts) if extracts else None
        if attention is not None:
            _write_csv(attention, out / f"{design}_attention.csv")
            lines += [f"Attention of the finals ({len(extracts)} result sets):", ""]
            lines += [f"- **{r.variant}** ({r.block}{_not_at_plateau(training, r.variant)}): "
                      + "; ".join(read_attention(r) or ["no statistic to read"]) for _, r in attention.iterrows()]  # fmt: skip
            lines.append("")
        if design.startswith("query-specific"):  # the positive controls: the latest one trained gives the answer
            holds, sentence = gate(training)
            row = None if attention is None else next((r for _, r in attention.iterrows() if r.variant == GATE_VARIANT), None)
            verdict = f"On `{design}`: {answer(holds, row)}"
            lines += [f"Gate: {sentence}.", ""]
            for epochs, nth, table in longer:
                lines += [f"Gate at {epochs} epochs (the {nth} reading; the answer above keeps the 12-epoch one): {gate(table)[1]}.", ""]
    path = out / "README.md"
    with atomic_write(path) as f:
        f.write("\n".join([*head, "## The answer", "", verdict, "", *lines]) + "\n")
    return path
