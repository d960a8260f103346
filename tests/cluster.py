"""RabbitMQ nodes of the test suite's own: a 3-node cluster on ports of its own.

The RabbitMQ on 5672 that the rest of the suite uses is never stopped or reconfigured;
faults that need a broker to go down or raise an alarm happen on these nodes instead.
Each node has its own name (``kanin-test-<n>@localhost``), AMQP port (5701...),
distribution port, Erlang cookie, configuration and data directory under one
temporary directory, and is stopped and deleted with it.

    python -m tests.cluster start    # by hand, for a look: then `stop`
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SBIN = Path("/usr/lib/rabbitmq/bin")
COOKIE = "kanin-test-cluster-cookie"


@dataclass(frozen=True)
class Node:
    index: int
    base: Path

    @property
    def name(self) -> str:
        return f"kanin-test-{self.index}@localhost"

    @property
    def port(self) -> int:
        return 5700 + self.index

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dir(self) -> Path:
        return self.base / f"node{self.index}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.dir / "home"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_DIST_PORT": str(25700 + self.index),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_CRASH_DUMP": str(self.base / f"erl_crash_{self.index}.dump"),
        }

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SBIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def must(self, *args: str) -> str:
        done = self.ctl(*args)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {done.stderr}")
        return done.stdout

    def prepare(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.dir / "home" / ".erlang.cookie"
        cookie.write_text(COOKIE)
        cookie.chmod(0o400)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")

    def launch(self) -> None:
        """Start the node in the background; ``wait()`` for it."""
        subprocess.run(
            [str(SBIN / "rabbitmq-server"), "-detached"],
            env=self.env(),
            cwd=self.base,
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )

    def wait(self, within: float = 120) -> None:
        deadline = time.monotonic() + within
        while self.ctl("await_startup", timeout=within).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start within {within:g}s")
            time.sleep(0.5)

    def stop_app(self) -> None:
        self.must("stop_app")

    def start_app(self) -> None:
        self.must("start_app")
        self.wait()

    def kill(self) -> None:
        """Stop the node's Erlang VM for good (what is left of an earlier run, too)."""
        if (self.dir / "home").exists():
            self.ctl("stop", timeout=60)
        mark = f"RABBITMQ_NODENAME={self.name}".encode()
        for pid in Path("/proc").iterdir():  # a VM whose directory is gone: by its name
            with contextlib.suppress(OSError, ValueError):
                if mark in (pid / "environ").read_bytes().split(b"\0"):
                    os.kill(int(pid.name), signal.SIGKILL)


class Cluster:
    """Three nodes joined into one cluster; ``url`` lists all of them."""

    def __init__(self, size: int = 3, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.gettempdir()) / "kanin-test-cluster"
        self.nodes = [Node(i, self.base) for i in range(1, size + 1)]

    @staticmethod
    def available() -> str | None:
        """Why no node can be started here, or None."""
        if not (SBIN / "rabbitmq-server").exists():
            return f"{SBIN / 'rabbitmq-server'} is not installed"
        return None

    def url(self, user: str = "guest", password: str = "guest") -> str:
        hosts = ",".join(node.host for node in self.nodes)
        return f"amqp://{user}:{password}@{hosts}/"

    def node_of(self, host: str) -> Node:
        return next(node for node in self.nodes if node.host == host)

    def start(self) -> None:
        self.stop()  # nodes left by an interrupted run
        for node in self.nodes:
            node.prepare()
            node.launch()
        for node in self.nodes:
            node.wait()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.must("stop_app")
            node.must("join_cluster", first.name)
            node.start_app()
        for node in self.nodes:
            _wait_port(node.port)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.base, ignore_errors=True)


def require_nodes(what: str) -> None:
    """Skip the calling test when no node of the suite's own can start here (on CI, where
    they must run, fail instead)."""
    missing = Cluster.available()
    if missing is None:
        return
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"CI must run the {what} tests: {missing}")
    pytest.skip(f"no RabbitMQ nodes of the suite's own can start here: {missing}")


def _wait_port(port: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port} after {within:g}s") from None
            time.sleep(0.2)


if __name__ == "__main__":
    cluster = Cluster()
    if sys.argv[1:] == ["start"]:
        cluster.start()
        print(cluster.url())
    else:
        cluster.stop()
