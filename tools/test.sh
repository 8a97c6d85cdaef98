#!/usr/bin/env bash
# Set up a virtual environment and run every check: lint, format, the whole test suite
# (including the end-to-end federations and the podman compose run).
# Usage: bash tools/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins torch to the CPU build served from local disk.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
