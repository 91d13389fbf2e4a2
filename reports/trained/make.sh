# Regenerates reports/trained from the checkpoints of `nlanalysis train --out runs/train`
# (the committed default command; the shipped seed-0 finals come from the same run).
# Finals of every seed (with query maps for Figure 2) and every saved snapshot (steps 0, 141, 282),
# 120 held-out scenes each; then one report: Table 1 over images and seeds, the over-training figure.
set -e
cd "$(git rev-parse --show-toplevel)"
ANN=nlanalysis/data/demo/scenes_val/instances.json
IMG=nlanalysis/data/demo/scenes_val/images
COMMON="--coco-ann $ANN --coco-images $IMG --limit 120 --controls --jsd-pairs 256 --quiet"
VARIANTS="gaussian embedded_gaussian dot_product concatenation snl gc embedded_gaussian_x2"
for s in 0 1 2; do for v in $VARIANTS; do
  python -m nlanalysis extract --ckpt runs/train/checkpoints/${v}_s${s}.pth $COMMON --save-maps --out runs/seeds/${v}_s${s}
  for step in 0 141 282; do
    python -m nlanalysis extract --ckpt runs/train/checkpoints/${v}_s${s}_step${step}.pth $COMMON --out runs/snapshots/${v}_s${s}_step${step}
  done
done; done
python -m nlanalysis report runs/seeds/* runs/snapshots/* --out reports/trained
