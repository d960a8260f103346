"""docker/ cannot be run here (no Docker engine), so check what it wires together:
the files it copies exist, and the compose services' kanin commands work against a real
broker with the compose environment pointed at this machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import BrokerAdmin

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).parent / "kanin")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def test_dockerfile_copies_files_that_exist() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    sources = [
        part
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for part in line.split()[1:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
    assert re.search(r'^ENTRYPOINT \["kanin"\]', dockerfile, re.M)


def test_every_built_service_uses_our_dockerfile() -> None:
    for name, service in compose()["services"].items():
        if "build" in service:
            build = service["build"]
            path = (ROOT / "docker" / build["context"] / build["dockerfile"]).resolve()
            assert path == ROOT / "docker" / "Dockerfile", name


def test_topology_service_command_applies_against_a_real_broker(
    vhost: str, admin: BrokerAdmin
) -> None:
    service = compose()["services"]["topology"]
    env = dict(service["environment"])
    # compose reaches RabbitMQ as kanin@rabbitmq; here it is guest@127.0.0.1, in a fresh vhost
    env["KANIN_BROKER_URL"] = env["KANIN_BROKER_URL"].replace(
        "kanin:kanin@rabbitmq:5672/", f"guest:guest@127.0.0.1:5672/{vhost}"
    )
    env["KANIN_MANAGEMENT_URL"] = env["KANIN_MANAGEMENT_URL"].replace("rabbitmq", "127.0.0.1")
    result = subprocess.run(
        [KANIN, *service["command"]],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "0 already there" in result.stdout
    queues = {q["name"] for q in admin.request("GET", f"queues/{vhost}")}
    assert {"inventory.reserve", "inventory.reserve.dlq", "payments.charge.retry.5"} <= queues
