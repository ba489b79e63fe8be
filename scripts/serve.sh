#!/usr/bin/env bash
# Serve VoiceGate with gunicorn: one process (the models are loaded once) with threaded
# workers, which flask-sock's WebSockets need. Expects scripts/setup.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
export VOICEGATE_PRELOAD_MODELS=${VOICEGATE_PRELOAD_MODELS:-true}
log_config=()
if [ "${VOICEGATE_LOG_FORMAT:-text}" = json ]; then
  # gunicorn's own lines as JSON too, from its first one (app/logs.py does the app's).
  log_config=(--log-config-json scripts/logging-json.json)
fi
exec .venv/bin/gunicorn "${log_config[@]}" \
  --worker-class gthread --workers 1 --threads "${VOICEGATE_THREADS:-32}" \
  --bind "${VOICEGATE_HOST:-127.0.0.1}:${VOICEGATE_PORT:-8000}" \
  --access-logfile - --graceful-timeout 10 \
  'app:create_app()'
