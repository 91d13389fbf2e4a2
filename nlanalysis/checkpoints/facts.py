"""The facts of a checkpoint's ``meta`` that a result set keeps in its ``run.json`` (what the run is: variant, seed,
step, task metric), so that a report reads them without the checkpoint file (which may be gone or retrained)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["FACT_KEYS", "METRIC_KEYS", "run_facts"]

#: task metrics looked up in a checkpoint's meta, in order of preference.
METRIC_KEYS = ("miou", "mIoU", "bbox_mAP", "segm_mAP", "accuracy", "top1", "pixel_accuracy")
#: the meta entries kept (mmdetection's ``config`` and ``env_info`` texts and the like are not).
FACT_KEYS = ("variant", "seed", "step", "iter", "epoch", "final", "train_config", *METRIC_KEYS)


def run_facts(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of ``meta`` named in :data:`FACT_KEYS` whose values JSON writes as they are (finite numbers, text,
    flags, and lists and mappings of those); ``{}`` for no meta."""
    facts = {}
    for key in FACT_KEYS:
        value = (meta or {}).get(key)
        if value is None:
            continue
        try:
            if json.loads(json.dumps(value, allow_nan=False)) == value:
                facts[key] = value
        except (TypeError, ValueError):  # not JSON (a tensor, a tuple's round trip, NaN): left out
            continue
    return facts
