#!/usr/bin/env bash
# Regenerates reports/trained from the checkpoints of `nlanalysis train --out runs/train`
# (the committed default command; the shipped seed-0 finals come from the same run).
# Finals of every seed (with query maps for Figure 2, every query's map for seed 0, and the whole
# query-dependence suite) and every saved snapshot (steps 0, 141, 282), 120 held-out scenes each; then one report: Table 1 over images
# and seeds, the query-dependence table, the over-training figure. Each run's metrics.csv, run.json,
# images.csv and failures.csv are copied to reports/trained/runs/RUN/ so every table can be
# recomputed from the repository (`nlanalysis report reports/trained/runs/* --out DIR`; the figures of
# the maps need the saved maps, which stay under $RUNS).
#   CKPTS: folder of the checkpoints (default runs/train/checkpoints)
#   RUNS:  where the result sets are written (default runs)
set -e
cd "$(git rev-parse --show-toplevel)"
CKPTS=${CKPTS:-runs/train/checkpoints}
RUNS=${RUNS:-runs}
ANN=nlanalysis/data/demo/scenes_val/instances.json
IMG=nlanalysis/data/demo/scenes_val/images
COMMON="--coco-ann $ANN --coco-images $IMG --limit 120 --controls --jsd-pairs 256 --quiet"
VARIANTS="gaussian embedded_gaussian dot_product concatenation snl gc embedded_gaussian_x2"
for s in 0 1 2; do for v in $VARIANTS; do  # the finals first (the report's Table 1), then the snapshots
  maps=--save-maps; [ $s = 0 ] && maps="--save-maps all"  # seed 0: every query's map (figures: all query pairs)
  python -m nlanalysis extract --ckpt $CKPTS/${v}_s${s}.pth $COMMON --query-dependence all $maps --out $RUNS/seeds/${v}_s${s}
done; done
for s in 0 1 2; do for v in $VARIANTS; do for step in 0 141 282; do
  python -m nlanalysis extract --ckpt $CKPTS/${v}_s${s}_step${step}.pth $COMMON --query-dependence off --out $RUNS/snapshots/${v}_s${s}_step${step}
done; done; done
python reports/trained/copy_runs.py $RUNS/seeds/* $RUNS/snapshots/*  # metrics + run.json (with checkpoint meta) into the repo
# the training's own summary (held-out mIoU per variant, the baseline without a block) beside the runs; the baseline's
# mean final mIoU is the dashed line over training
mkdir -p reports/trained/training && cp $CKPTS/../summary.csv $CKPTS/../summary.json $CKPTS/../training.csv reports/trained/training/
BASE=$(python -c "import pandas as p; t=p.read_csv('reports/trained/training/summary.csv'); print(t.loc[t.variant=='baseline','miou'].iloc[0])")
python -m nlanalysis report $RUNS/seeds/* $RUNS/snapshots/* --baseline-metric $BASE --no-explore --out reports/trained
