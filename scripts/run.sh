#!/usr/bin/env bash
# Set up (if needed) and start VoiceGate on http://127.0.0.1:8000 (VOICEGATE_HOST, VOICEGATE_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
FLASK_APP=app .venv/bin/flask admin ensure
exec scripts/serve.sh
