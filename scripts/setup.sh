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
# Bytecode is compiled here, once: with PYTHONDONTWRITEBYTECODE set (as in the image and on
# CI machines) every process would otherwise compile each module it imports from source,
# which is half of a worker's start (docs/testing.md). uv skips what is already compiled.
UV_PYTHON_DOWNLOADS=never "$UV" sync --locked --quiet --compile-bytecode --python "$PYTHON" "${extras[@]}"
# The project's own modules too (up-to-date files are skipped); dot-directories are not ours.
.venv/bin/python -m compileall -q -j0 -x '/\.' . >/dev/null

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

# promtool, Prometheus's rule checker, for ./scripts/check's alert rule tests
# (deploy/prometheus/alerts_test.yml). Optional: without it the check skips them. Only the
# one binary is taken from Debian's prometheus package, into .tools/bin: installing the
# package would also set up a Prometheus server as a system service. A failed attempt leaves
# a mark so that every later run does not repeat apt-get update.
PROMTOOL=$TOOLS/bin/promtool
PROMTOOL_MARK=$TOOLS/promtool-unavailable
apt_candidate() { apt-cache policy prometheus 2>/dev/null | sed -n 's/^ *Candidate: //p'; }
install_promtool() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 \
    || return 1
  case "$(apt_candidate)" in
    "" | "(none)") apt-get update -qq >/dev/null 2>&1 || return 1 ;;
  esac
  case "$(apt_candidate)" in "" | "(none)") return 1 ;; esac
  local tmp ok=1
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt's download sandbox user must be able to write there
  if (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1) \
      && dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -xO ./usr/bin/promtool >"$tmp/promtool" \
      && chmod 755 "$tmp/promtool" && "$tmp/promtool" --version >/dev/null 2>&1; then
    mkdir -p "$TOOLS/bin" && mv "$tmp/promtool" "$PROMTOOL" && ok=0
  fi
  rm -rf "$tmp"
  return "$ok"
}
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$PROMTOOL" ]; then
  if [ -e "$PROMTOOL_MARK" ]; then
    echo "setup: promtool unavailable (an earlier install failed; delete $PROMTOOL_MARK to" \
      "try again); ./scripts/check skips the alert rule tests"
  elif install_promtool; then
    echo "setup: promtool installed into $TOOLS/bin (from Debian's prometheus package)"
  else
    if [ "$(id -u)" = 0 ]; then touch "$PROMTOOL_MARK" 2>/dev/null || true; fi
    echo "setup: promtool unavailable (needs root, apt-get and Debian's prometheus package);" \
      "./scripts/check skips the alert rule tests"
  fi
fi
