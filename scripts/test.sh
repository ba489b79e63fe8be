#!/usr/bin/env bash
# Set up (if needed) with the test dependencies and system tools, then run the whole suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
apt_install ffmpeg espeak-ng sox chromium chromium-driver nginx
exec .venv/bin/python -m pytest "$@"
