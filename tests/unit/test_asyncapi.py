"""``kanin asyncapi``: the shop's document is valid AsyncAPI 3.0 (the official JSON
Schema, npm @asyncapi/specs, fetched by `make specs`), keeps its shape, and names no
password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).parent / "kanin")
SPEC = ROOT / ".venv" / "asyncapi-specs" / "package" / "schemas" / "3.0.0-without-$id.json"
GOLDEN = Path(__file__).parent / "golden" / "shop.asyncapi.yaml"


def asyncapi(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KANIN_", "OTEL_"))}
    return subprocess.run(
        [KANIN, "asyncapi", "workers", *args], capture_output=True, text=True, timeout=60,
        cwd=ROOT, env={**clean, **env}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def shop(*args: str, **env: str) -> dict[str, Any]:
    result = asyncapi("--format", "json", *args, **env)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_the_shop_document_is_valid_asyncapi_3() -> None:
    assert SPEC.exists(), f"{SPEC} is missing: run 'make specs' (make test does)"
    validator = jsonschema.Draft7Validator(json.loads(SPEC.read_text()))
    document = shop()
    assert [e.message for e in validator.iter_errors(document)] == []
    document["operations"]["ChargePayment_receive_inventory_reserved"]["action"] = "publish"
    assert len(list(validator.iter_errors(document))) == 1  # the validator does look


def test_the_shop_document_keeps_its_shape() -> None:
    result = asyncapi()
    assert result.returncode == 0, result.stderr
    assert result.stdout == GOLDEN.read_text(), "regenerate: kanin asyncapi workers > " + str(
        GOLDEN.relative_to(ROOT)
    )


def test_what_the_document_says_of_the_shop() -> None:
    document = shop()
    operations = document["operations"]
    charge = operations["ChargePayment_receive_inventory_reserved"]
    assert charge["channel"] == {"$ref": "#/channels/payments_charge"}
    assert operations["send_payment_captured"]["channel"] == {"$ref": "#/channels/shop_events"}
    channels = document["channels"]
    assert channels["payments_charge_retry_5"]["address"] == "payments.charge.retry.5"
    assert channels["payments_charge_dlq"]["bindings"]["amqp"]["is"] == "queue"
    assert channels["shop_events"]["bindings"]["amqp"]["exchange"]["type"] == "topic"
    message = document["components"]["messages"]["order_placed_v1"]
    assert message["headers"]["properties"]["x-event-version"] == {"type": "integer", "const": 1}
    assert message["payload"] == {"$ref": "#/components/schemas/OrderPlaced"}
    item = document["components"]["schemas"]["OrderPlaced"]["properties"]["items"]
    assert item["items"] == {"$ref": "#/components/schemas/Item"}


def test_the_server_comes_from_the_broker_url_without_its_password() -> None:
    result = asyncapi(KANIN_BROKER_URL="amqps://shop:s3cret@mq.example.com:5671/prod")
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    server = yaml.safe_load(result.stdout)["servers"]["rabbitmq"]
    assert server == {"host": "mq.example.com:5671", "protocol": "amqps",
                      "protocolVersion": "0-9-1", "pathname": "/prod"}  # fmt: skip


def test_an_unknown_target_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [KANIN, "asyncapi", "nowhere"], capture_output=True, text=True, timeout=60, cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (
        2, "error: cannot import 'nowhere': no module named 'nowhere'\n"
    )  # fmt: skip
