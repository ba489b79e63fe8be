#!/usr/bin/env bash
# Serve VoiceGate with gunicorn: one process (the models are loaded once) with threaded workers,
# which flask-sock's WebSockets need. The worker (app/serving/worker.py) limits connections per
# client address and puts deadlines on every request's headers and body; idle WebSocket sessions
# time out in the app. Why threads and not gevent, and the measured costs: docs/deployment.md.
# Logs redact dictation keys and invite tokens (app/serving/logs.py). Expects scripts/setup.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
export VOICEGATE_PRELOAD_MODELS=${VOICEGATE_PRELOAD_MODELS:-true}
# glibc gives every thread that allocates its own heap arena (up to 8 per core); with hundreds
# of threads that is memory held for nothing (docs/deployment.md, "Memory").
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
# numpy's BLAS (identification's matrix products) on one thread per call, as the models are: on
# a busy machine a call that waits for its own second thread takes several times as long
# (docs/benchmarks.md, "Identification against many voices").
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
log_config=()
if [ "${VOICEGATE_LOG_FORMAT:-text}" = json ]; then
  # gunicorn's own lines as JSON too, from its first one (app/observe/logs.py does the app's).
  log_config=(--log-config-json scripts/logging-json.json)
fi
exec .venv/bin/gunicorn "${log_config[@]}" \
  --worker-class app.serving.worker.GuardedWorker --workers 1 --threads "${VOICEGATE_THREADS:-256}" \
  --worker-connections "${VOICEGATE_WORKER_CONNECTIONS:-1024}" \
  --bind "${VOICEGATE_HOST:-127.0.0.1}:${VOICEGATE_PORT:-8000}" \
  --logger-class app.serving.logs.RedactingLogger --no-control-socket \
  --access-logfile - --graceful-timeout 10 \
  'app:create_app()'
