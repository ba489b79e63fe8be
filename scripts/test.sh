#!/usr/bin/env bash
# Set up (if needed) with the test dependencies and system tools, then run the whole suite.
# Extra arguments go to pytest. Test files run in parallel (VOICEGATE_TEST_WORKERS, default 4):
# most of the suite waits on real-time audio, servers and a browser rather than on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
apt_install ffmpeg espeak-ng sox chromium chromium-driver nginx postgresql
started=$(date +%s)
status=0
.venv/bin/python -m pytest -n "${VOICEGATE_TEST_WORKERS:-4}" --dist loadfile "$@" || status=$?
echo "test suite: $(( $(date +%s) - started )) s (exit $status)"
exit $status
