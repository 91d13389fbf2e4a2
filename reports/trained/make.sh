set -e
cd "$(git rev-parse --show-toplevel)"
ANN=nlanalysis/data/demo/scenes_val/instances.json
IMG=nlanalysis/data/demo/scenes_val/images
for s in 0 1 2; do for v in gaussian embedded_gaussian dot_product concatenation snl gc embedded_gaussian_x2; do
  python -m nlanalysis extract --ckpt runs/train/checkpoints/${v}_s${s}.pth --coco-ann $ANN --coco-images $IMG --limit 120 --controls --jsd-pairs 256 --out runs/seeds/${v}_s${s} --quiet
done; done
python -m nlanalysis report runs/seeds/* --out reports/trained
