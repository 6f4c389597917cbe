#!/usr/bin/env bash
# Packs Ray 2.60 (cp312) small enough for the device tool, which carries 64 MiB in all and
# whose machine has no package index. The wheel is 79 MB; without its Java jars, RLlib,
# Serve and LLM packages and the dashboard's source maps, and xz-compressed, it is 25 MB.
# The device image already has Ray's other dependencies except the five wheels below.
#
#   bash benchmarks/ray_device_bundle.sh            # → .raypkg/ (git-ignored)
#   # then, on the device (carry .whl .escache .raypkg):
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl .raypkg/*.whl
#   tar xJf .raypkg/ray_slim.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#   python3 benchmarks/cluster.py --mode ray --workers 1,2,4,8 --trials-per-worker 4 --json
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.raypkg/' .git/info/exclude 2>/dev/null || echo /.raypkg/ >> .git/info/exclude
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$work" ray==2.60.0 jsonschema referencing jsonschema-specifications rpds-py tensorboardX
mkdir -p .raypkg "$work/tree"
(cd "$work/tree" && unzip -q "$work"/ray-2.60.0-*.whl \
  && rm -rf ray/jars ray/rllib ray/llm ray/serve ray/dashboard/client/build/static/js/*.map \
  && tar cf - . | xz -T2 -9 > "$OLDPWD/.raypkg/ray_slim.tar.xz")
cp "$work"/*.whl .raypkg/ && rm .raypkg/ray-2.60.0-*.whl
du -sh .raypkg
