#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtualenv with the project, and a running Redis.
# Sourced by scripts/check and scripts/demo; safe to run on its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "setup: installing the project and its dev dependencies"
  if ! "$VENV/bin/python" -m pip install --quiet -e ".[dev]" >"$VENV/pip.log" 2>&1; then
    cat "$VENV/pip.log" >&2
    exit 1
  fi
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi

redis_port=${REDIS_PORT:-6379}
redis_up() {
  "$VENV/bin/python" - "$redis_port" <<'PY'
import sys, redis
try:
    redis.Redis(port=int(sys.argv[1]), socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

if ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing redis-server"
      apt-get update -qq >/dev/null && apt-get install -y -qq redis-server >/dev/null
    else
      echo "setup: Redis is not running on port $redis_port and redis-server is not installed;" >&2
      echo "       install it (apt-get install redis-server / brew install redis) or set REDIS_URL" >&2
      exit 1
    fi
  fi
  echo "setup: starting redis-server on port $redis_port"
  redis-server --daemonize yes --port "$redis_port" --save "" --appendonly no >/dev/null
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "setup: redis-server did not come up" >&2; exit 1; }
fi
