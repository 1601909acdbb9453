#!/usr/bin/env bash
# Regenerates the Python API (package muster.v1) from proto/. The output is
# committed; CI runs this and fails if it produces a diff.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -f muster/v1/*_pb2*.py muster/v1/*_pb2*.pyi
mkdir -p muster/v1
"$PY" -m grpc_tools.protoc -I proto \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  proto/muster/v1/*.proto
