"""``publish_each`` on both transports: every message written, each one's outcome."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from framework import Settings
from framework.errors import Unroutable
from framework.topology.expand import QueueDecl
from framework.transport import Properties, Transport, open_transport
from tests.conftest import AMQP_URL


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    url = f"memory://{uuid.uuid4().hex[:8]}" if request.param == "memory" else AMQP_URL
    opened = open_transport(Settings(_env_file=None, broker_url=url), "kt-each")  # type: ignore[call-arg]
    await opened.connect(5)
    try:
        yield opened
    finally:
        await opened.close()


async def test_each_message_gets_its_own_outcome(transport: Transport, prefix: str) -> None:
    queue = QueueDecl(f"{prefix}.a", durable=False, auto_delete=False)
    await transport.declare(queue)
    try:
        channel = await transport.publish_channel(5)
        errors = await channel.publish_each(
            [
                ("", queue.name, b"1", Properties(message_id="m-1")),
                ("", f"{prefix}.nowhere", b"2", Properties(message_id="m-2")),
                ("", queue.name, b"3", Properties(message_id="m-3")),
            ],
            within=5,
        )
        assert [type(e) if e else None for e in errors] == [None, Unroutable, None]
        reader = await transport.reader(queue.name)
        bodies = []
        while (got := await reader.get()) is not None:
            bodies.append(got.body)
            await reader.remove(got.delivery_tag)
        await reader.close()
        assert bodies == [b"1", b"3"]
    finally:
        await transport.delete(queue, if_empty=False)
