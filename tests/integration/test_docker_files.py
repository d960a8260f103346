"""docker/ cannot be run here (no Docker engine), so check what it wires together:
the files it copies exist, and the compose services' kanin commands work against a real
broker with the compose environment pointed at this machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.conftest import BrokerAdmin, schema_url
from tests.integration.otlp import Receiver, receiving
from tests.integration.worker_kit import eventually, kill_tree

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


def test_the_build_context_leaves_out_virtualenvs_git_and_secrets() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for pattern in (".git", ".venv", ".venv-*", ".env", "**/.env", "**/__pycache__"):
        assert pattern in ignored, pattern
    copied = {
        part.rstrip("/")
        for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for part in line.split()[1:-1]
    }
    assert not copied & set(ignored), "the Dockerfile copies what the context leaves out"


def test_dependencies_install_in_a_layer_before_the_source() -> None:
    lines = (ROOT / "docker" / "Dockerfile").read_text().splitlines()
    install = next(i for i, line in enumerate(lines) if "pip install" in line)
    source = next(i for i, line in enumerate(lines) if line.startswith("COPY framework"))
    assert install < source
    assert "--no-deps" in next(line for line in lines[source:] if "pip install" in line)


def test_host_ports_stay_clear_of_local_servers_and_can_be_moved() -> None:
    taken = {5672, 15672, 6379, 5432}  # a RabbitMQ, Redis or PostgreSQL on the host
    published: list[int] = []
    for name, service in compose()["services"].items():
        for mapping in service.get("ports", []):
            host = mapping.rsplit(":", 1)[0]
            match = re.fullmatch(r"\$\{(SHOP_[A-Z_]+):-(\d+)\}", host)
            port = int(match.group(2)) if match else int(host)
            assert port not in taken, f"{name} publishes {port}"
            if name in ("rabbitmq", "redis", "postgres"):
                assert match, f"{name}: a host port that cannot be moved: {mapping}"
            published.append(port)
    assert len(published) == len(set(published))


def test_the_topology_job_waits_for_the_broker_only() -> None:
    services = compose()["services"]
    assert set(services["topology"]["depends_on"]) == {"rabbitmq"}
    assert "healthcheck" not in services["topology"]
    for name in WORKERS:
        assert "/healthz" in " ".join(services[name]["healthcheck"]["test"]), name


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


WORKERS = ("inventory", "payments", "shipping", "notifications")
SHOP_DB = "postgresql://kanin:kanin@postgres:5432/shop"


def local_env(
    service: dict, vhost: str, otlp: Receiver | None, database: str = "", **extra: str
) -> dict[str, str]:
    """A compose service's environment, with the compose hosts replaced by this machine's
    (the shop's database by ``database``)."""
    env = {k: str(v) for k, v in service["environment"].items()}
    for name, value in env.items():
        if value == SHOP_DB:
            env[name] = database
    if "KANIN_BROKER_URL" not in env:
        return {"PATH": os.environ["PATH"], **env, **extra}
    env["KANIN_BROKER_URL"] = env["KANIN_BROKER_URL"].replace(
        "kanin:kanin@rabbitmq:5672/", f"guest:guest@127.0.0.1:5672/{vhost}"
    )
    env["KANIN_MANAGEMENT_URL"] = env["KANIN_MANAGEMENT_URL"].replace("rabbitmq", "127.0.0.1")
    env["KANIN_IDEMPOTENCY_URL"] = env["KANIN_IDEMPOTENCY_URL"].replace("//redis:", "//127.0.0.1:")
    assert otlp is not None
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = env["OTEL_EXPORTER_OTLP_ENDPOINT"].replace(
        "http://jaeger:4318", otlp.endpoint
    )
    env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    env["KANIN_IDEMPOTENCY_RETENTION"] = "300"  # the test's keys leave Redis by themselves
    return {"PATH": os.environ["PATH"], **env, **extra}


async def test_compose_workers_trace_an_order_through_the_shop(
    vhost: str, tmp_path: Path, pg_schema: str
) -> None:
    """The worker services as compose starts them (commands, env), against this machine's
    RabbitMQ, Redis, PostgreSQL (a schema in place of the shop's database) and an OTLP
    receiver in Jaeger's place: one order, stored with its event, one trace."""
    services = compose()["services"]
    database = schema_url(pg_schema)
    processes: list[subprocess.Popen[str]] = []
    init = services["outbox"]
    made = subprocess.run(  # noqa: ASYNC221
        [KANIN, *init["command"]], env=local_env(init, vhost, None, database), cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with receiving() as otlp:
        try:
            relay = services["relay"]
            relay_log = tmp_path / "relay.log"
            with relay_log.open("w") as out:
                processes.append(
                    subprocess.Popen(  # noqa: ASYNC220
                        [KANIN, *relay["command"]],
                        env=local_env(relay, vhost, otlp, database, KANIN_HTTP_PORT="0"),
                        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out, text=True,
                        start_new_session=True,
                    )
                )  # fmt: skip
            for name in WORKERS:
                service = services[name]
                assert service["environment"]["OTEL_SERVICE_NAME"] == name
                err = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115, ASYNC230
                processes.append(
                    subprocess.Popen(  # noqa: ASYNC220
                        [KANIN, *service["command"]],
                        env=local_env(
                            service, vhost, otlp, database, KANIN_HTTP_PORT="0",
                            SHOP_PAYMENT_FAILURE_RATE="0",
                        ),
                        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=err, stderr=err, text=True,
                        start_new_session=True,
                    )
                )  # fmt: skip
            for name, process in zip(WORKERS, processes[1:], strict=True):
                log = tmp_path / f"{name}.log"
                await eventually(
                    lambda: "started on" in log.read_text() or process.poll() is not None,  # noqa: B023
                    within=60,
                    what=f"{name} started",
                )
                assert process.poll() is None, log.read_text()[-2000:]
                # the service's healthcheck, as Docker runs it, against this worker's port
                port = re.search(r"probes and metrics on http://[^:]+:(\d+)/", log.read_text())
                assert port, log.read_text()[-2000:]
                check = [
                    part.replace("127.0.0.1:9100", f"127.0.0.1:{port.group(1)}")
                    for part in services[name]["healthcheck"]["test"][1:]
                ]
                assert check[0] == "python"
                healthy = subprocess.run(  # noqa: ASYNC221
                    [sys.executable, *check[1:]], capture_output=True, text=True, timeout=30
                )
                assert healthy.returncode == 0, healthy.stderr
            orders = services["orders"]
            placed = subprocess.run(  # noqa: ASYNC221
                [sys.executable, *orders["entrypoint"][1:], "1"],
                env=local_env(orders, vhost, otlp, database),
                cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert placed.returncode == 0, placed.stderr

            def services_in_one_trace() -> set[str]:
                by_trace: dict[bytes, set[str]] = {}
                for service_name, span in otlp.spans():
                    by_trace.setdefault(span.trace_id, set()).add(service_name)
                return max(by_trace.values(), key=len, default=set())

            await eventually(
                lambda: services_in_one_trace() == {"orders", *WORKERS},
                within=60,
                what="orders, inventory, payments, shipping, notifications in one trace",
            )
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=30)
                finally:
                    kill_tree(process)
    for process, name in zip(processes, ("relay", *WORKERS), strict=True):
        assert process.returncode == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    with psycopg.connect(database) as conn:  # the order and its charge, each with its event
        assert conn.execute("select order_id from orders").fetchall() == [("order-0",)]
        assert conn.execute("select order_id from charges").fetchall() == [("order-0",)]
        assert conn.execute("select count(*) from kanin_inbox").fetchone() == (1,)
        assert conn.execute(
            "select count(*) from kanin_outbox where sent_at is not null"
        ).fetchone() == (2,)


async def test_the_history_service_projects_an_order_into_postgresql(
    vhost: str, tmp_path: Path, pg_schema: str
) -> None:
    """The history service as compose starts it, against this machine's RabbitMQ and
    PostgreSQL (a schema of the test's own in place of the compose database)."""
    services = compose()["services"]
    service = services["history"]
    assert {"postgres", "rabbitmq"} <= set(service["depends_on"])
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "shop"
    with receiving() as otlp:
        assert service["environment"]["KANIN_CHECKPOINT_URL"] == SHOP_DB
        env = local_env(service, vhost, otlp, schema_url(pg_schema), KANIN_HTTP_PORT="0")
        log = tmp_path / "history.log"
        with log.open("w") as out:
            process = subprocess.Popen(  # noqa: ASYNC220
                [KANIN, *service["command"]], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, text=True, start_new_session=True,
            )  # fmt: skip
        try:
            await eventually(
                lambda: (
                    "projection shop.order-history reading" in log.read_text()
                    or process.poll() is not None
                ),
                within=60,
                what="history started",
            )
            assert process.poll() is None, log.read_text()[-2000:]
            orders = services["orders"]
            placed = subprocess.run(  # noqa: ASYNC221
                [sys.executable, *orders["entrypoint"][1:], "1"],
                env=local_env(orders, vhost, otlp), cwd=ROOT, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert placed.returncode == 0, placed.stderr

            def status() -> list[tuple[str, str]]:
                with psycopg.connect(schema_url(pg_schema)) as conn:
                    return conn.execute("select order_id, status from order_history").fetchall()

            await eventually(lambda: status() == [("order-0", "placed")], within=30,
                             what="the order in order_history")  # fmt: skip
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            finally:
                kill_tree(process)
    assert process.returncode == 0, log.read_text()[-2000:]
