#!/usr/bin/env bash
# Set up a virtual environment and run every check: lint, format, the documentation site
# (mkdocs build --strict into site/), the whole test suite
# (unit and end-to-end federations), then the compose federation under podman, which
# prepares the host itself (root needed; tools/podman-host-setup.sh).
# Usage: bash tools/test.sh [extra pytest args]   (FEDLOOM_SKIP_COMPOSE=1 skips the compose run)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins torch to the CPU build served from local disk.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,docs]"
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
# The documentation site: any warning (broken link, missing page, bad docstring) fails.
# Not --quiet: it hides the warnings that --strict counts, and the build would always pass.
NO_MKDOCS_2_WARNING=1 mkdocs build --strict
python -m pytest -q -m "not compose" "$@"
if [ "${FEDLOOM_SKIP_COMPOSE:-0}" != 1 ]; then
    python -m pytest -q -m compose tests/test_compose.py
fi
