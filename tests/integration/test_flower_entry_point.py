"""``embeddings-flower`` started outside the repo: the login and loopback do not depend on cwd.

``celery -A worker flower`` started in an empty directory serves every task with no login on
every interface (issue #26); these start the project's command from such a directory, one
that even holds a ``flowerconfig.py`` and a ``worker`` package of its own, which must not be
read.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import httpx
import pytest
import redis

from devstack.flower import FLOWER_COMMAND, FlowerProcess
from tests.integration.harness import TEST_REDIS_URL, worker_env

pytestmark = pytest.mark.integration

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}


def _flower_env() -> dict[str, str]:
    env = worker_env("http://127.0.0.1:9/v1")
    env = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}
    # Flower needs no upstream key, and the directory it starts in is not on its path.
    env.pop("EMBEDDINGS_API_KEY", None)
    env.pop("PYTHONPATH", None)
    return env | {"REDIS_URL": TEST_REDIS_URL}


def _hostile_directory(path: Path) -> Path:
    """A working directory whose own Flower settings and ``worker`` would stop any start."""
    path.mkdir(exist_ok=True)
    (path / "flowerconfig.py").write_text('raise SystemExit("read the cwd flowerconfig.py")\n')
    (path / "worker").mkdir()
    (path / "worker" / "__init__.py").write_text('raise SystemExit("imported the cwd worker")\n')
    return path


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port``, from ``/proc/net``."""
    found = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) == port and fields[3] == _LISTEN:
                assert len(address) == size
                if size == 8:
                    found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add("ipv6:" + address)
    return found


def test_started_elsewhere_it_demands_the_login_and_listens_on_loopback_only(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    cwd = _hostile_directory(tmp_path / "elsewhere")
    login = f"ops:{secrets.token_urlsafe(12)}"
    flower = FlowerProcess(_flower_env(), tmp_path / "flower.log", login, cwd=cwd)
    try:
        flower.wait_ready()
        for path in ("/api/workers", "/tasks", "/"):
            assert httpx.get(flower.url + path, timeout=10).status_code == 401, path
        wrong = httpx.get(flower.url + "/api/workers", auth=("ops", "wrong"), timeout=10)
        assert wrong.status_code == 401
        answered = httpx.get(flower.url + "/api/workers", auth=flower.auth, timeout=10)
        assert answered.status_code == 200
        assert isinstance(answered.json(), dict)
        # One socket, on IPv4 loopback: nothing on 0.0.0.0 or [::].
        assert _listening_addresses(flower.port) == {"127.0.0.1"}
        # The package's settings file was read, not the working directory's.
        page = httpx.get(flower.url + "/tasks", auth=flower.auth, timeout=10)
        assert 'data-column="retries"' in page.text and 'data-column="exception"' in page.text
    finally:
        flower.stop()
    log = flower.log_path.read_text()
    assert "read the cwd" not in log and "imported the cwd" not in log


@pytest.mark.parametrize(
    ("basic_auth", "says"),
    [
        (None, "FLOWER_BASIC_AUTH is not set"),
        ("", "FLOWER_BASIC_AUTH is not set"),
        ("ops", "FLOWER_BASIC_AUTH entry 1 of 1 is not user:password"),
    ],
)
def test_without_a_usable_flower_basic_auth_it_exits_2_saying_so(
    redis_client: redis.Redis, tmp_path: Path, basic_auth: str | None, says: str
) -> None:
    env = _flower_env()
    if basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = basic_auth
    done = subprocess.run(
        [str(FLOWER_COMMAND), "--port=0"],
        cwd=_hostile_directory(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"embeddings-flower: {says}" in done.stderr
    assert "Visit me at" not in done.stdout + done.stderr
