#!/usr/bin/env bash
# Issue-16 controls grid (plan: reports/controls/PLAN.md). Usage: reports/controls/make.sh [BATCH...] [tables] [extract] [locality] [report]
# (BATCH: 1-5 of the plan, v2: the revised query-specific design's 12-epoch gate batch, v2-24: its 24-epoch grid,
# v3: v2's scenes with an image shortcut to the block's input, after its marker check; v3-planted: the planted block on
# v3's embedded-Gaussian finals with a random twin, v3-planted-b / -v: with a brightness twin, RGB mean / HSV value,
# v3-planted-n / -l: with the noise twin / the locality twin)
# Each batch is resumable: rerunning skips finished runs (OUT/runs/*.json). Runs live under runs/controls/
# (gitignored, and lost with the checkout); the numbers the report needs (run records, each result set's metrics.csv
# and run.json) are kept under reports/controls/runs, from which `tables` and `report` read.
set -euo pipefail
cd "$(dirname "$0")/../.."
VARIANTS="baseline embedded_gaussian dot_product concatenation gc snl se pooled_fc danet_pam"
MAPPED="embedded_gaussian dot_product concatenation gc snl danet_pam"  # the variants with a map over positions
# the order runs are trained in (each run is independent of the others): the gate's four variants, every seed, first
ORDER="baseline embedded_gaussian gc snl dot_product concatenation se pooled_fc danet_pam"
GRID_VARIANTS=$VARIANTS  # a grid's variants (an extension of some variants sets ORDER and this to them)
train() {  # design epochs [name extra-args...]: OUT is runs/controls/NAME_eEPOCHS (NAME: the design)
    local design=$1 epochs=$2 name=${3:-$1}
    nlanalysis train --design "$design" --epochs "$epochs" --snapshots 0.25 0.5 0.75 1 --seeds 0 1 2 \
        --variants $VARIANTS --out "runs/controls/${name}_e$epochs" --quiet "${@:4}"
}
mapped() { case " $MAPPED " in *" $1 "*) return 0 ;; esac; return 1; }
extract_run() {  # design variant seed: the attention statistics of one run's 12-epoch final, the lifts with their locality control (PLAN 02:50: sets extracted from session 16 on), and att of its snapshots
    local d=$1 v=$2 s=$3 folder ann img ckpt maps run
    folder=nlanalysis/data/demo/scenes_val; [ "$d" = shared ] || folder=${folder}_${d/-/_}  # the shipped 300
    case "$d" in query-specific-v*) folder=nlanalysis/data/demo/scenes_val_query_specific_items4_10 ;; esac  # v2 and v3: v2's 300
    ann=$folder/instances.json; img=$folder/images
    ckpt=runs/controls/${d}_e12/checkpoints/${v}_s${s}.pth
    [ -f "$ckpt" ] || return 0
    maps=(); [ "$s" = 0 ] && maps=(--save-maps --queries objects:4)  # 4 of the scene's items: both groups
    nlanalysis extract --ckpt "$ckpt" --coco-ann "$ann" --coco-images "$img" --controls \
        --jsd-pairs 256 --query-dependence all --locality-control "${maps[@]}" --quiet --out "runs/controls/extract/$d/${v}_s$s"
    for step in 282 564 846; do  # over training: the headline statistics only
        nlanalysis extract --ckpt "runs/controls/${d}_e12/checkpoints/${v}_s${s}_step$step.pth" --coco-ann "$ann" \
            --coco-images "$img" --quiet --out "runs/controls/snapshots/$d/${v}_s${s}_step$step"
    done
    for run in "runs/controls/extract/$d/${v}_s$s" runs/controls/snapshots/$d/${v}_s${s}_step*; do keep_set "$d" "$run"; done
}
keep_set() {  # design result-set: keep its numbers (metrics.csv, run.json, images.csv), not its maps, in the repository
    mkdir -p "reports/controls/runs/$1/$(basename "$2")"
    cp "$2/metrics.csv" "$2/run.json" "$2/images.csv" "reports/controls/runs/$1/$(basename "$2")/"
}
kept() {  # name epochs variant seed: the run's record is kept (a kept run is never trained again: its record is evidence)
    [ -f "reports/controls/runs/${1}_e$2/${3}_s$4.json" ]
}
sets_kept() {  # name variant seed: a mapped 12-epoch final's result sets (the final and its snapshots) are kept
    local step
    for step in "" _step282 _step564 _step846; do
        [ -f "reports/controls/runs/$1/${2}_s$3$step/metrics.csv" ] || return 1
    done
}
grid() {  # design epochs name [extra-args...]: one (variant, seed) at a time, the gate's variants first, each kept under
          # reports/controls/runs as soon as it finishes (runs/ does not outlive a checkout; the repository does)
    local design=$1 epochs=$2 name=$3 out keep s v
    out=runs/controls/${name}_e$epochs; keep=reports/controls/runs/${name}_e$epochs
    for v in $ORDER; do for s in 0 1 2; do
        if kept "$name" "$epochs" "$v" "$s"; then
            mkdir -p "$out/runs"; cp "$keep/${v}_s$s.json" "$out/runs/"
        else
            train "$design" "$epochs" "$name" "${@:4}" --variants "$v" --seeds "$s"
            mkdir -p "$keep"; cp "$out/runs/${v}_s$s.json" "$keep/"
        fi
        if [ "$epochs" = 12 ] && mapped "$v" && ! sets_kept "$name" "$v" "$s"; then
            # its checkpoint where this checkout trained it (batch 1's v1 finals were never extracted: PLAN.md, the gate failed)
            if [ -f "runs/controls/${name}_e12/checkpoints/${v}_s$s.pth" ]; then extract_run "$name" "$v" "$s"
            else echo "$name $v s$s: run kept, result sets not kept and no checkpoint here to extract them from" >&2; fi
        fi
    done; done
    train "$design" "$epochs" "$name" "${@:4}" --variants $GRID_VARIANTS  # every run recorded: training.csv and summary over all of them
    cp "$out/training.csv" "$keep/"
}
[ $# -gt 0 ] || set -- 1 2 3 4 5
for batch in "$@"; do
    case "$batch" in
        1) grid query-specific 12 query-specific ;;
        2) grid query-specific 24 query-specific ;;
        3) grid independent 12 independent ;;
        4) grid shared 12 shared ;;
        5) grid independent 24 independent; grid shared 24 shared ;;
        v2) grid query-specific 12 query-specific-v2 --num-items 4 10 ;;  # PLAN.md, session 11: the revised design's gate
        v2-24) grid query-specific 24 query-specific-v2 --num-items 4 10 ;;  # v2's plateau rule (as batch 2 is v1's)
        v2-48) grid query-specific 48 query-specific-v2 --num-items 4 10 ;;  # PLAN.md session 16, 05:50: v2 at 48 epochs, whole grid
        independent-48)  # PLAN.md session 23, 07:50: concatenation (off its plateau at 12) and its margins' references at 48 epochs
            ORDER="baseline gc snl concatenation"; GRID_VARIANTS="baseline concatenation gc snl"
            grid independent 48 independent
            ORDER="baseline embedded_gaussian gc snl dot_product concatenation se pooled_fc danet_pam"; GRID_VARIANTS=$VARIANTS ;;
        v3)  # PLAN.md, session 13: the marker check on v3's baseline seed 0 (val R^2 >= 0.5), then the batch
            out=runs/controls/query-specific-v3_e12
            if ! kept query-specific-v3 12 baseline 0; then  # kept: the check ran (marker_probe_v3.json); not run on a retrain
                [ -f "$out/checkpoints/baseline_s0.pth" ] ||
                    train query-specific 12 query-specific-v3 --num-items 4 10 --image-shortcut --variants baseline --seeds 0
                python reports/controls/marker_probe.py "$out/checkpoints/baseline_s0.pth" --require 0.5 \
                    --train-scenes "$out/data/train_query-specific_items4-10_3000_seed0" \
                    --val-scenes nlanalysis/data/demo/scenes_val_query_specific_items4_10 --out reports/controls/marker_probe_v3.json
            fi
            grid query-specific 12 query-specific-v3 --num-items 4 10 --image-shortcut ;;
        v3-planted|v3-planted-b|v3-planted-v|v3-planted-n|v3-planted-l)  # PLAN.md, session 13: the planted own-group block on v3's
            # embedded-Gaussian finals (seeds 0-2) with its negative: the random twin (v3-planted), the brightness twin
            # (v3-planted-b: RGB mean, -v: HSV value), the noise twin (v3-planted-n) or the locality twin (-l; PLAN.md session 15)
            out=runs/controls/query-specific-v3_e12; val=nlanalysis/data/demo/scenes_val_query_specific_items4_10
            case "$batch" in
                v3-planted) neg=random twin=twin name=planted-v3 ;;
                v3-planted-b) neg=brightness twin=brightness name=planted-v3b ;;
                v3-planted-n) neg=noise twin=noise name=planted-v3n ;;
                v3-planted-l) neg=locality twin=locality name=planted-v3l ;;
                *) neg=value twin=value name=planted-v3v ;;
            esac
            pl=runs/controls/$name
            python reports/controls/planted.py --ckpt-dir "$out/checkpoints" --val-scenes "$val" --out "$pl" --negative $neg \
                --train-scenes "$out/data/train_query-specific_items4-10_3000_seed0"
            cp "$pl/planted.json" "reports/controls/${name/-/_}.json"
            if python -c "import json, sys; sys.exit(any(min(r['r2_val'], r.get('brightness_r2_val', 1), r.get('noise_r2_val', 1)) < 0.5
                          for r in json.load(open('$pl/planted.json'))))"; then
                for s in 0 1 2; do for kind in planted $twin; do
                    [ -f "reports/controls/runs/$name/${kind}_s$s/metrics.csv" ] && continue
                    nlanalysis extract --ckpt "$pl/${kind}_embedded_gaussian_s$s.pth" --coco-ann "$val/instances.json" \
                        --coco-images "$val/images" --controls --jsd-pairs 256 --query-dependence all --quiet \
                        --out "$pl/extract/${kind}_s$s"
                    keep_set "$name" "$pl/extract/${kind}_s$s"
                done; done
                python reports/controls/planted.py --read "reports/controls/runs/$name" --negative $neg | tee "reports/controls/${name/-/_}.md"
            else
                echo "planted check not run: a seed's probe val R^2 is below 0.5 (reports/controls/${name/-/_}.json)"
            fi ;;
        tables)  # keep every grid's run records (and history) in the repository, then the seed-paired margins and the
                 # plateau rule of every design trained so far, from the kept records
            for d in query-specific query-specific-v2 query-specific-v3 independent shared; do
                for e in 12 24; do
                    [ -d "runs/controls/${d}_e$e/runs" ] || continue
                    mkdir -p "reports/controls/runs/${d}_e$e"
                    cp "runs/controls/${d}_e$e"/runs/*.json "runs/controls/${d}_e$e/training.csv" "reports/controls/runs/${d}_e$e/" 2>/dev/null || true
                done
                for run in runs/controls/extract/$d/* runs/controls/snapshots/$d/*; do  # result sets not kept in full yet
                    [ -f "$run/metrics.csv" ] && keep_set "$d" "$run"
                done
                [ -d "reports/controls/runs/${d}_e12" ] || continue
                long=(); [ -d "reports/controls/runs/${d}_e24" ] && long=(--long "reports/controls/runs/${d}_e24")
                refs=(); for r in baseline gc snl; do  # the references trained so far (a grid still training has not all)
                    compgen -G "reports/controls/runs/${d}_e12/${r}_s*.json" >/dev/null && refs+=("$r"); done
                [ ${#refs[@]} -gt 0 ] || continue
                nlanalysis compare-runs "reports/controls/runs/${d}_e12" "${long[@]}" --against "${refs[@]}" --csv "reports/controls/$d"
            done ;;
        extract)  # every design's runs not extracted yet (v2 extracts each run as it finishes), one report per design
            for d in query-specific query-specific-v2 query-specific-v3 independent shared; do
                [ -d "runs/controls/${d}_e12/checkpoints" ] || continue
                for s in 0 1 2; do for v in $MAPPED; do
                    [ -f "reports/controls/runs/$d/${v}_s$s/metrics.csv" ] || extract_run "$d" "$v" "$s"
                done; done
                sets=()  # each run's own folder (seed 0 has its maps for Figure 2), else its committed numbers
                for run in reports/controls/runs/$d/*; do
                    b=$(basename "$run"); full=runs/controls/extract/$d/$b; [ -d "$full" ] || full=runs/controls/snapshots/$d/$b
                    if [ -f "$full/metrics.csv" ]; then sets+=("$full"); else sets+=("$run"); fi
                done
                nlanalysis report "${sets[@]}" --out "reports/controls/$d"
            done ;;
        locality)  # PLAN.md session 15, 02:55: the locality control of the lifts, its check (planted-v3l) first, then v2's and v3's finals
            ann=nlanalysis/data/demo/scenes_val_query_specific_items4_10/instances.json
            python reports/controls/locality.py --ann $ann reports/controls/runs/planted-v3l/{planted,locality}_s{0,1,2} \
                --out reports/controls/locality_check.csv | tee reports/controls/locality_check.md
            for d in v2 v3; do
                python reports/controls/locality.py --ann $ann reports/controls/runs/query-specific-$d/{embedded_gaussian,concatenation,danet_pam}_s{0,1,2} \
                    --out reports/controls/locality_$d.csv | tee reports/controls/locality_$d.md
            done
            # the shipped reference models on the shared demo scenes (reports/trained; own-object lift only: one class a scene)
            python reports/controls/locality.py --ann nlanalysis/data/demo/scenes_val/instances.json \
                reports/trained/runs/{gaussian,embedded_gaussian,concatenation}_s{0,1,2} \
                --out reports/controls/locality_trained.csv | tee reports/controls/locality_trained.md ;;
        report)  # margins over baseline, GC and SNL, the gate, the attention readings and the answer (PLAN.md's rules)
            nlanalysis controls-report reports/controls/runs --out reports/controls ;;
        *) echo "unknown batch $batch (1-5, v2, v2-24, v2-48, independent-48, v3, v3-planted[-b|-v|-n|-l], tables, extract, locality, report)" >&2; exit 2 ;;
    esac
done
