#!/usr/bin/env bash
# Issue-16 controls grid (plan: reports/controls/PLAN.md). Usage: reports/controls/make.sh [BATCH...] [tables] [extract] [report]
# (BATCH: 1-5 of the plan, v2: the revised query-specific design's 12-epoch gate batch)
# Each batch is resumable: rerunning skips finished runs (OUT/runs/*.json). Runs live under runs/controls/
# (gitignored); the per-run metrics and summaries that the report needs are copied here afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
VARIANTS="baseline embedded_gaussian dot_product concatenation gc snl se pooled_fc danet_pam"
MAPPED="embedded_gaussian dot_product concatenation gc snl danet_pam"  # the variants with a map over positions
train() {  # design epochs [name extra-args...]: OUT is runs/controls/NAME_eEPOCHS (NAME: the design)
    local design=$1 epochs=$2 name=${3:-$1}
    nlanalysis train --design "$design" --epochs "$epochs" --snapshots 0.25 0.5 0.75 1 --seeds 0 1 2 \
        --variants $VARIANTS --out "runs/controls/${name}_e$epochs" --quiet "${@:4}"
}
for batch in "${@:-1 2 3 4 5}"; do
    case "$batch" in
        1) train query-specific 12 ;;
        2) train query-specific 24 ;;
        3) train independent 12 ;;
        4) train shared 12 ;;
        5) train independent 24; train shared 24 ;;
        v2) train query-specific 12 query-specific-v2 --num-items 4 10 ;;  # PLAN.md, session 11: the revised design's gate
        tables)  # seed-paired margins and the plateau rule of every design trained so far; the per-run records
            for d in query-specific query-specific-v2 independent shared; do
                [ -d "runs/controls/${d}_e12/runs" ] || continue
                long=(); [ -d "runs/controls/${d}_e24/runs" ] && long=(--long "runs/controls/${d}_e24")
                nlanalysis compare-runs "runs/controls/${d}_e12" "${long[@]}" --against baseline gc snl --csv "reports/controls/$d"
                for e in 12 24; do
                    [ -d "runs/controls/${d}_e$e/runs" ] || continue
                    mkdir -p "reports/controls/runs/${d}_e$e"
                    cp "runs/controls/${d}_e$e"/runs/*.json "runs/controls/${d}_e$e/training.csv" "reports/controls/runs/${d}_e$e/" 2>/dev/null || true
                done
            done ;;
        extract)  # attention statistics of every seed's 12-epoch final with a map (and att of its snapshots), one report per design
            for d in query-specific query-specific-v2 independent shared; do
                [ -d "runs/controls/${d}_e12/checkpoints" ] || continue
                folder=nlanalysis/data/demo/scenes_val; [ "$d" = shared ] || folder=${folder}_${d/-/_}  # the shipped 300
                [ "$d" = query-specific-v2 ] && folder=runs/controls/${d}_e12/data/val_query-specific_items4-10_300_seed0  # v2's own 300
                ann=$folder/instances.json; img=$folder/images
                for s in 0 1 2; do for v in $MAPPED; do
                    ckpt=runs/controls/${d}_e12/checkpoints/${v}_s${s}.pth
                    [ -f "$ckpt" ] || continue
                    maps=(); [ "$s" = 0 ] && maps=(--save-maps --queries objects:4)  # 4 of <= 6 items, groups of 2-3: both groups
                    nlanalysis extract --ckpt "$ckpt" --coco-ann "$ann" --coco-images "$img" --controls \
                        --jsd-pairs 256 --query-dependence all "${maps[@]}" --quiet --out "runs/controls/extract/$d/${v}_s$s"
                    for step in 282 564 846; do  # over training: the headline statistics only
                        nlanalysis extract --ckpt "runs/controls/${d}_e12/checkpoints/${v}_s${s}_step$step.pth" --coco-ann "$ann" \
                            --coco-images "$img" --quiet --out "runs/controls/snapshots/$d/${v}_s${s}_step$step"
                    done
                done; done
                nlanalysis report runs/controls/extract/$d/* runs/controls/snapshots/$d/* --out "reports/controls/$d"
                for run in runs/controls/extract/$d/* runs/controls/snapshots/$d/*; do  # the per-run numbers, not the maps
                    mkdir -p "reports/controls/runs/$d/$(basename "$run")"
                    cp "$run/metrics.csv" "$run/run.json" "reports/controls/runs/$d/$(basename "$run")/"
                done
            done ;;
        report)  # margins over baseline, GC and SNL, the gate, the attention readings and the answer (PLAN.md's rules)
            nlanalysis controls-report runs/controls --out reports/controls ;;
        *) echo "unknown batch $batch (1-5, v2, tables, extract, report)" >&2; exit 2 ;;
    esac
done
