#!/usr/bin/env bash
# Set up a virtual environment and run every check: lint, format, mypy --strict, the
# documentation site (mkdocs build --strict into site/), the whole test suite (unit,
# end-to-end federations, the node console in headless Chromium), then the compose
# federation under podman, which prepares the host itself (root needed;
# tools/podman-host-setup.sh).
# Usage: bash tools/test.sh [extra pytest args]   (FEDLOOM_SKIP_COMPOSE=1 skips the compose run)
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
step "virtual environment"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins torch to the CPU build served from local disk. The console extra is
# tested too (its browser tests drive Debian's Chromium; Playwright never downloads one), and
# so are the optional extras: DP-SGD (Opacus), medical images, simulation on Ray.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,docs,console,dp,medical,simulation]"
if ! [ -x /usr/bin/chromium ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "tools/test.sh: the console's browser tests need Debian's chromium;" \
            "run as root or install it: apt-get install chromium" >&2
        exit 1
    fi
    step "installing Debian's chromium"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
export PATH="$PWD/.venv/bin:$PATH"
step "ruff"
ruff check .
ruff format --check .
step "mypy --strict"
mypy
step "documentation site"
# Any warning (broken link, missing page, bad docstring) fails. Not --quiet: it hides the
# warnings that --strict counts, and the build would always pass.
NO_MKDOCS_2_WARNING=1 mkdocs build --strict
step "pytest"
# Three workers, each test file on one worker: the end-to-end tests mostly wait on real node
# processes (heartbeats, deadlines, task processes), so on 2 cores three files at a time
# finish in about a third of the time without competing much for CPU.
python -m pytest -q -n 3 --dist loadfile -m "not compose" "$@"
if [ "${FEDLOOM_SKIP_COMPOSE:-0}" != 1 ]; then
    step "compose federation under podman"
    # Live log lines say which stage (host setup, image build, federation) is under way.
    python -m pytest -q -m compose -o log_cli=true --log-cli-level=INFO tests/test_compose.py
fi
