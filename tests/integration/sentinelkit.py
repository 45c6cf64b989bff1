"""A private Redis Sentinel set-up on loopback: a master, a replica and three Sentinels.

Started and stopped by the test that uses it; never touches the shared Redis. The Sentinels
decide quickly (``down-after-milliseconds`` 2000, ``failover-timeout`` 3000), so a killed
master is replaced within a few seconds. At 1000 a loaded 2-core machine sometimes kept a
Sentinel from hearing a just-promoted master for a second, and the Sentinels failed over
again mid-test (a real Sentinel hazard, docs/reliability.md; not what these tests test).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import redis

from devstack import free_port, wait_for
from tests.integration.harness import worker_env

__all__ = ["MASTER_NAME", "SentinelCluster"]

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 3000


class _Server:
    def __init__(self, workdir: Path, name: str, argv: list[str]) -> None:
        self.workdir = workdir
        self.name = name
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{name}.log"

    def start(self, extra: list[str] = []) -> None:  # noqa: B006 - never mutated
        self.proc = subprocess.Popen(
            [*self.argv, *extra, "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class SentinelCluster:
    """Two Redis servers (one master, one replica) and three Sentinels watching them."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.ports = [free_port(), free_port()]
        self.master_port = self.ports[0]
        self.servers = {port: self._redis(port) for port in self.ports}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels = [self._sentinel(port) for port in self.sentinel_ports]

    @property
    def url(self) -> str:
        """The ``sentinel://…;…`` URL of the three Sentinels, database 0."""
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def worker_env(
        self, api_base_url: str, visibility_timeout_s: int, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """A worker's environment on this cluster: its master through the Sentinels, unacked
        texts back in the queue ``visibility_timeout_s`` after a worker lost its connection."""
        return worker_env(
            api_base_url,
            {
                "REDIS_URL": self.url,
                "REDIS_SENTINEL_MASTER": MASTER_NAME,
                "BROKER_VISIBILITY_TIMEOUT": str(visibility_timeout_s),
                "BROKER_UNACKED_RESTORE_INTERVAL": "1",
                **(extra or {}),
            },
        )

    @property
    def replica_port(self) -> int:
        return next(port for port in self.ports if port != self.master_port)

    def _redis(self, port: int) -> _Server:
        # No diskless-sync delay (Redis waits 5 s by default for more replicas to join a full
        # sync): a server restarted after a kill would stay that long an empty, unsynced
        # replica, and a Sentinel that misses the new master's pings on a loaded machine
        # (down-after 2 s) can promote it, discarding the queue.
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir),
                "--repl-diskless-sync-delay", "0"]  # fmt: skip
        return _Server(self.workdir, f"redis-{port}", argv)

    def _sentinel(self, port: int) -> _Server:
        config = self.workdir / f"sentinel-{port}.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            "sentinel resolve-hostnames no\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        argv = ["redis-server", str(config), "--sentinel"]
        return _Server(self.workdir, f"sentinel-{port}", argv)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2)

    def start(self) -> SentinelCluster:
        self.servers[self.master_port].start()
        self.servers[self.replica_port].start(["--replicaof", "127.0.0.1", str(self.master_port)])
        self._wait_replica_synced(self.replica_port)
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(self._sentinels_agree, 30, "the Sentinels to know the master and its replica")
        return self

    def _answers(self, port: int, command: str, *args: str) -> object:
        try:
            with self.client(port) as client:
                return client.execute_command(command, *args)
        except redis.RedisError:
            return None

    def _wait_replica_synced(self, port: int) -> None:
        def synced() -> bool:
            info = self._answers(port, "INFO", "replication")
            return isinstance(info, dict) and info.get("master_link_status") == "up"

        wait_for(synced, 30, f"the replica on {port} to sync")

    def reported_master(self) -> set[int]:
        """The master port each answering Sentinel reports."""
        ports = set()
        for port in self.sentinel_ports:
            addr = self._answers(port, "SENTINEL", "get-master-addr-by-name", MASTER_NAME)
            if isinstance(addr, list) and len(addr) == 2:
                ports.add(int(addr[1]))
        return ports

    def _sentinels_agree(self) -> bool:
        replicas = self._answers(self.sentinel_ports[0], "SENTINEL", "replicas", MASTER_NAME)
        return self.reported_master() == {self.master_port} and bool(replicas)

    def kill_master(self, on_killed: Callable[[], object] = lambda: None) -> float:
        """SIGKILL the master; return seconds until every Sentinel names the replica instead.

        ``on_killed`` runs right after the kill. Then restarts the killed server as the new
        master's replica and waits until the cluster settles (``_settled``), so another kill
        has somewhere to go.
        """
        # The roles may have swapped since the last kill settled (a second failover): kill
        # whichever server is master now.
        wait_for(self._settled, 60, "the Sentinels to agree on a master with a synced replica")
        old, new = self.master_port, self.replica_port
        started = time.monotonic()
        self.servers[old].kill()
        on_killed()
        wait_for(lambda: self.reported_master() == {new}, 60, "the Sentinels to promote")
        switched_s = time.monotonic() - started
        self.master_port = new
        self.servers[old].start(["--replicaof", "127.0.0.1", str(new)])
        wait_for(self._settled, 60, "the Sentinels to settle on a master with a synced replica")
        return switched_s

    def _settled(self) -> bool:
        """Every Sentinel names one master, the other server is its synced replica, and the
        Sentinels count that replica.

        Either server may end up master: on a loaded machine a Sentinel can miss the new
        master's pings for ``down-after-milliseconds`` right after a switch and fail over
        again, to the server just restarted. The cluster is as usable with the roles swapped,
        so ``master_port`` follows what the Sentinels report.
        """
        masters = self.reported_master()
        if len(masters) != 1 or not masters <= set(self.ports):
            return False
        (master,) = masters
        replica = next(port for port in self.ports if port != master)
        info = self._answers(replica, "INFO", "replication")
        if not (
            isinstance(info, dict)
            and info.get("master_link_status") == "up"
            and str(info.get("master_port")) == str(master)  # redis-py may parse it to int
        ):
            return False
        self.master_port = master
        return self._sentinels_agree()

    def kill_every_redis(self) -> None:
        """SIGKILL master and replica: the Sentinels are left with nothing to promote."""
        for server in self.servers.values():
            server.kill()

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers.values()]:
            server.kill()

    def __enter__(self) -> SentinelCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
