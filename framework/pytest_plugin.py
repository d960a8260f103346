"""pytest plugin of ``kanin[testing]``: ``async def`` tests run as written.

pytest runs no coroutine by itself, and pytest-asyncio's default (strict) mode only runs
the tests marked for it. With kanin installed, an ``async def`` test that no other plugin
runs is run here, in an event loop of its own, so a test with the test kit works in a
project without any asyncio configuration:

    async def test_declined_card_is_parked() -> None:
        async with TestKit(ChargePayment) as kit:
            ...

Fixtures must be plain (``def``) ones; for ``async def`` fixtures use pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest


@pytest.hookimpl
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None  # a plain test, or one another plugin has wrapped already
    arguments = {name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters}
    asyncio.run(test(**arguments))
    return True
