#!/usr/bin/env bash
# Prepare this machine for VoiceGate: Python environment, verified models, database.
# Usage: scripts/setup.sh [run|test]. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
export FLASK_APP=app

# Install the Debian packages given that are not installed yet.
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python=${PYTHON:-}
if [ -z "$python" ]; then
  if command -v python3.11 >/dev/null; then python=python3.11; else python=python3; fi
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  apt_install python3.11 python3.11-venv
  python=python3.11
fi

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv 2>/dev/null || { apt_install python3.11-venv; rm -rf .venv; "$python" -m venv .venv; }
fi

# Reinstall only when the pinned requirements changed since the last successful install.
requirements=requirements.txt
[ "$mode" = test ] && requirements=requirements-test.txt
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$mode"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The tests switch to Whisper base once (the admin settings), so they fetch every model.
if [ "$mode" = test ]; then .venv/bin/flask models fetch --all; else .venv/bin/flask models fetch; fi
.venv/bin/flask db upgrade
