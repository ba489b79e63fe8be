#!/usr/bin/env bash
# Run nginx (Debian's package) in front of VoiceGate as the current user, in the foreground.
# Usage: deploy/nginx.sh [RUNTIME_DIR]   (default: instance/nginx)
#   VOICEGATE_NGINX_LISTEN (default 127.0.0.1:8080): where nginx listens;
#   VOICEGATE_HOST, VOICEGATE_PORT (default 127.0.0.1:8000): the app, as scripts/serve.sh starts it;
#   VOICEGATE_UPSTREAMS ("127.0.0.1:8001 127.0.0.1:8002"): several instances instead, taken in turn
#   (they must share one database: docs/deployment.md, "Several instances").
# Start the app with VOICEGATE_TRUSTED_PROXIES='["127.0.0.1"]', so that the app's own limit on
# connections per address does not count nginx as one client (nginx limits per client itself).
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=$(realpath -m "${1:-instance/nginx}")
listen=${VOICEGATE_NGINX_LISTEN:-127.0.0.1:8080}
servers=""
for upstream in ${VOICEGATE_UPSTREAMS:-${VOICEGATE_HOST:-127.0.0.1}:${VOICEGATE_PORT:-8000}}; do
  servers+="server $upstream; "
done
mkdir -p "$runtime/logs" "$runtime/tmp"
chmod 700 "$runtime" "$runtime/tmp"
sed -e "s|@PREFIX@|$runtime|g" -e "s|@LISTEN@|$listen|g" -e "s|server @UPSTREAM@;|$servers|" \
  deploy/nginx.conf > "$runtime/nginx.conf"
# -e: errors before the configuration is read also go under the runtime folder (not /var/log).
exec nginx -p "$runtime/" -e "$runtime/logs/error.log" -c "$runtime/nginx.conf" -g 'daemon off;'
