#!/usr/bin/env bash
# README command 1: install, then materialize the shipped demo channel end to end on local storage.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
exec .venv/bin/neutts-assets demo
