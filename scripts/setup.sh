#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: .venv with exactly the versions in uv.lock, and a
# running Redis. Run by scripts/check, scripts/demo and scripts/bench; safe to run on its own.
#
#   bash scripts/setup.sh            # the project and its dev tools (tests, ruff, mypy)
#   bash scripts/setup.sh bench      # the same, plus the benchmark's extras (matplotlib)
#
# The lock is never re-resolved here (uv sync --locked fails if pyproject.toml and uv.lock
# disagree): a fresh clone installs the same versions on any day. scripts/upgrade is the one
# deliberate way to move them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
TOOLS=.tools
UV=$TOOLS/bin/uv
UV_WANTED=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' scripts/uv-requirements.txt)

# uv itself, at the exact version and hashes of scripts/uv-requirements.txt, in a venv of its
# own so that syncing .venv never removes the uv that is running.
if [ ! -x "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_WANTED" ]; then
  echo "setup: installing uv $UV_WANTED into $TOOLS"
  rm -rf "$TOOLS"
  "$PYTHON" -m venv "$TOOLS"
  if ! "$TOOLS/bin/python" -m pip install --quiet --require-hashes \
      -r scripts/uv-requirements.txt >"$TOOLS/pip.log" 2>&1; then
    cat "$TOOLS/pip.log" >&2
    exit 1
  fi
fi

extras=(--extra dev)
for extra in "$@"; do extras+=(--extra "$extra"); done
# The machine's own Python (never a download), exactly the lock, the project editable.
UV_PYTHON_DOWNLOADS=never "$UV" sync --locked --quiet --python "$PYTHON" "${extras[@]}"

redis_port=${REDIS_PORT:-6379}
redis_up() {
  .venv/bin/python - "$redis_port" <<'PY'
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
