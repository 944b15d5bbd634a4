#!/usr/bin/env bash
# Ray 2.60 and its dependencies for a GPU machine without them (Python 3.12, linux x86_64), in under
# 64 MiB: the cp312 wheels unpacked, parts a one-node Train run does not use removed (Java jars,
# dashboard client, RLlib, Serve, LLM, tests, pyarrow's Flight/ORC/cloud filesystems), binaries
# stripped, everything in one .tar.xz (about 50 MB). How target 6 of benchmarks/gpu_targets.py ran:
#
#   bash benchmarks/make_ray_bundle.sh                 # here: writes .whl/pydeps.tar.xz (ignored by git)
#   # there (carry .whl/pydeps.tar.xz):
#   mkdir -p /tmp/pydeps && tar -xJf .whl/pydeps.tar.xz -C /tmp/pydeps
#   echo /tmp/pydeps > "$(python -c 'import site; print(site.getsitepackages()[0])')/nsde_pydeps.pth"
#   PYTHONPATH=. python benchmarks/gpu_targets.py --targets ray
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pip="${PIP:-$root/.venv/bin/pip}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$pip" download --no-deps -d "$work/wheels" --python-version 3.12 --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  ray==2.60.0 pyarrow==25.0.1 pandas==3.1.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 click==8.5.1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
  referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 msgpack==1.2.4 protobuf==7.36.2 PyYAML==6.0.4 \
  requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 charset-normalizer==3.5.2 \
  python-dateutil==2.9.0.post0 six==1.17.0 pytz==2026.6
mkdir -p "$work/site"
cd "$work/site"
for wheel in "$work"/wheels/*.whl; do unzip -q -o "$wheel"; done
rm -rf ray/jars ray/dashboard/client ray/rllib ray/llm ray/serve ray/cpp pyarrow/include pyarrow/src \
  pyarrow/libarrow_flight.so.* pyarrow/_flight* pyarrow/libarrow_python_flight* pyarrow/_pyarrow_cpp_tests* \
  pyarrow/_azurefs* pyarrow/_gcsfs* pyarrow/_hdfs* pyarrow/_orc* pyarrow/_dataset_orc* \
  pyarrow/libarrow_python.so pyarrow/libarrow_python.so.*.*.* pyarrow/libarrow_python_parquet_encryption.so \
  pyarrow/libarrow_python_parquet_encryption.so.*.*.*
find . -name tests -type d -prune -exec rm -rf {} +
find . -name __pycache__ -type d -prune -exec rm -rf {} +
find . -name "*.so*" -type f -exec strip --strip-unneeded {} \; 2>/dev/null || true
find ray/core -type f -perm -u+x -exec strip --strip-unneeded {} \; 2>/dev/null || true
mkdir -p "$root/.whl"
tar -cf - . | xz -T0 -9e > "$root/.whl/pydeps.tar.xz"
ls -l "$root/.whl/pydeps.tar.xz"
