"""kanin topology permissions: which names each user's regexes cover, and why."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from framework.topology import expand, load_topology
from framework.topology.permissions import deploy_grant, regex, runtime_grant

KANIN = str(Path(sys.executable).parent / "kanin")
TOPOLOGY = """
exchanges:
  - {name: orders, type: topic, alternate_exchange: orders.lost}
  - {name: orders.lost, type: fanout}
  - {name: audit, type: fanout}
queues:
  - {name: orders.bill, retry: {attempts: 2, initial: 1s}}
  - {name: orders.lost}
bindings:
  - {exchange: orders, queue: orders.bill, routing_key: order.placed}
  - {exchange: orders.lost, queue: orders.lost}
  - {exchange: orders, to_exchange: audit, routing_key: "#"}
"""


def test_the_deploy_user_gets_exactly_what_apply_touches(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    grant = deploy_grant(expand(load_topology(path)))
    assert grant.configure == {
        "orders", "orders.lost", "audit", "orders.bill", "orders.bill.retry.1",
        "orders.bill.dlq", "orders.lost.dlq",  # every queue has its DLQ unless it says not
    }  # fmt: skip
    # binding destinations, the DLX of the work and wait queues, the alternate exchange
    assert grant.write == {"orders.bill", "orders.lost", "audit", "amq.default"}
    # binding sources, queues that name a DLX, the exchange naming an alternate
    assert grant.read == {"orders", "orders.lost", "orders.bill", "orders.bill.retry.1"}


def test_regexes_match_the_names_and_nothing_else() -> None:
    pattern = regex(["orders.bill", "amq.default"])
    assert pattern == r"^(amq\.default|orders\.bill)$"
    assert re.match(pattern, "orders.bill") and not re.match(pattern, "ordersXbill")
    assert not re.match(pattern, "orders.bill.dlq")
    assert regex([]) == "^$"


def test_the_runtime_user_configures_nothing() -> None:
    grant = runtime_grant(["orders.bill"], ["", "orders"], moves_messages=False)
    assert grant.configure == frozenset() and grant.regexes()[0] == "^$"
    assert grant.write == {"amq.default", "orders"}
    assert runtime_grant(["q"], [], moves_messages=True).write == {"amq.default"}


def test_a_consumer_of_a_queue_the_file_lacks_is_named(tmp_path: Path) -> None:
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    (tmp_path / "billing.py").write_text(
        "from framework import Consumer, Context, Event\n"
        "class Placed(Event, type='order.placed', version=1, exchange='orders'):\n"
        "    n: int\n"
        "class Bill(Consumer):\n    queue = 'orders.bill'\n"
        "    async def handle(self, event: Placed, ctx: Context) -> None: ...\n"
        "class Refund(Consumer):\n    queue = 'orders.refund'\n"
        "    async def handle(self, event: Placed, ctx: Context) -> None: ...\n"
    )
    done = subprocess.run(
        [KANIN, "topology", "permissions", "topology.yaml", "billing"], cwd=tmp_path,
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (
        "note: billing.Refund consumes 'orders.refund', which the topology file does not "
        "declare: the deploy user does not create it"
    )
    runtime = done.stdout.splitlines()[-1]
    assert runtime == (
        r"rabbitmqctl set_permissions -p / kanin-runtime '^$' '^(amq\.default)$' "
        r"'^(orders\.bill|orders\.refund)$'"
    )
