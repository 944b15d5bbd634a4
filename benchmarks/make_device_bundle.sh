#!/usr/bin/env bash
# The Python packages the sweep needs beyond a GPU machine's PyTorch image (Ray, Captum, Optuna, MLflow's
# client, Plotly and their dependencies), as cp312 wheels (Python 3.12, linux x86_64) at this checkout's
# virtualenv's versions, unpacked, stripped of what a one-node run does not use (Java jars, the dashboard
# client, RLlib, Serve, LLM, tests), in one .tar.xz. Left out, as the image has them: NumPy, pandas, PyArrow,
# SciPy, scikit-learn, Matplotlib, Pillow, psutil and PyTorch with its CUDA libraries.
#
#   bash benchmarks/make_device_bundle.sh                 # here: writes .whl/pydeps.tar.xz (ignored by git)
#   # there (carry .whl/pydeps.tar.xz), before python:
#   mkdir -p /tmp/pydeps && tar -xJf .whl/pydeps.tar.xz -C /tmp/pydeps && export PYTHONPATH=/tmp/pydeps:$PWD
#
# benchmarks/device_check.sh does the second part. PYTHON_VERSION (e.g. 3.11) builds it for another Python,
# to try it on a machine that has that one; BUNDLE names another output file.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$root/.venv}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
platform=(--python-version "${PYTHON_VERSION:-3.12}" --implementation cp --only-binary=:all: --platform manylinux2014_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64)
"$venv/bin/pip" freeze --exclude-editable | sed 's/+.*$//' > "$work/constraints.txt"
"$venv/bin/pip" download -q -d "$work/wheels" "${platform[@]}" -c "$work/constraints.txt" \
  "ray[tune,train]" optuna mlflow-skinny plotly sqlalchemy alembic tqdm
"$venv/bin/pip" download -q -d "$work/wheels" "${platform[@]}" -c "$work/constraints.txt" --no-deps captum
skip='^(numpy|pandas|pyarrow|scipy|scikit_learn|matplotlib|pillow|psutil|torch|torchvision|triton|nvidia_.*|cuda_.*|sympy|networkx|mpmath|setuptools|contourpy|fonttools|kiwisolver|cycler|pyparsing|joblib|threadpoolctl|fsspec|jinja2|markupsafe)-'
for wheel in "$work"/wheels/*.whl; do
  if basename "$wheel" | tr 'A-Z' 'a-z' | grep -qE "$skip"; then rm "$wheel"; fi
done
ls "$work/wheels"
mkdir -p "$work/site"
cd "$work/site"
for wheel in "$work"/wheels/*.whl; do unzip -q -o "$wheel"; done
rm -rf ray/jars ray/dashboard/client ray/rllib ray/llm ray/serve ray/cpp
find . -name tests -type d -prune -exec rm -rf {} +
find . -name __pycache__ -type d -prune -exec rm -rf {} +
find . -name "*.so*" -type f -exec strip --strip-unneeded {} \; 2>/dev/null || true
find ray/core -type f -perm -u+x -exec strip --strip-unneeded {} \; 2>/dev/null || true
out="${BUNDLE:-$root/.whl/pydeps.tar.xz}"
mkdir -p "$(dirname "$out")"
tar -cf - . | xz -T0 -9e > "$out"
ls -l "$out"
