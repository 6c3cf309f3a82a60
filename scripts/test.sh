#!/usr/bin/env bash
# README command 2: install, then run the whole test suite (it starts its own loopback servers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/python -m pytest "$@"
