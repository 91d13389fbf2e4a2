"""reports/controls/make.sh's grid mechanics, run with a stand-in `nlanalysis` that records what it is asked to train:
an extension batch trains exactly its variants and seeds, never a kept run, and its closing call trains nothing more."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE = r"""#!/usr/bin/env bash
# stand-in for `nlanalysis train`: the last --variants/--seeds/--epochs/--design/--out win, as with argparse
set -euo pipefail
[ "$1" = train ] || { echo "unexpected: $*" >&2; exit 3; }
shift; variants=(); seeds=(); key=
for a in "$@"; do
    case "$a" in
        --variants) key=v; variants=() ;; --seeds) key=s; seeds=() ;;
        --epochs|--design|--out|--num-items|--snapshots) key=$a ;;
        --*) key= ;;
        *) case "$key" in v) variants+=("$a") ;; s) seeds+=("$a") ;; --epochs) epochs=$a ;; --design) design=$a ;;
                          --out) out=$a ;; esac ;;
    esac
done
mkdir -p "$out/runs"
for v in "${variants[@]}"; do for s in "${seeds[@]}"; do
    [ -f "$out/runs/${v}_s$s.json" ] && continue
    echo "{\"variant\": \"$v\", \"seed\": $s}" > "$out/runs/${v}_s$s.json"
    echo "$design $epochs $v $s" >> "$TRAIN_LOG"
done; done
ls "$out/runs" > "$out/training.csv"
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_independent_48_trains_concatenation_and_its_references_only(tmp_path):
    (tmp_path / "reports" / "controls").mkdir(parents=True)
    shutil.copy(ROOT / "reports" / "controls" / "make.sh", tmp_path / "reports" / "controls" / "make.sh")
    kept = tmp_path / "reports" / "controls" / "runs" / "independent_e48"
    kept.mkdir(parents=True)
    (kept / "gc_s1.json").write_text('{"variant": "gc", "seed": 1, "kept": true}\n')  # evidence: never trained again
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "nlanalysis"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "train.log"
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "TRAIN_LOG": str(log)}
    done = subprocess.run(["bash", str(tmp_path / "reports" / "controls" / "make.sh"), "independent-48"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    trained = log.read_text().splitlines()
    expected = [f"independent 48 {v} {s}" for v in ("baseline", "gc", "snl", "concatenation") for s in (0, 1, 2)]
    expected.remove("independent 48 gc 1")
    assert trained == expected  # the order fixed in PLAN.md (references first), nothing else, the kept run not again
    assert sorted(p.name for p in kept.glob("*.json")) == sorted(
        f"{v}_s{s}.json" for v in ("baseline", "concatenation", "gc", "snl") for s in (0, 1, 2))
    assert '"kept": true' in (kept / "gc_s1.json").read_text() and (kept / "training.csv").is_file()
