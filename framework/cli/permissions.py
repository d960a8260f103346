"""``kanin topology permissions``: the least permissions of a deploy and a runtime user,
as ``rabbitmqctl`` commands or JSON (framework.topology.permissions computes them)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from framework.cli.run import split
from framework.contracts import snapshot
from framework.loading import load_consumers
from framework.settings import Settings
from framework.topology import Topology, expand
from framework.topology.permissions import Grant, deploy_grant, runtime_grant
from framework.worker import queue_specs

# what each user does, said above its commands
ROLES = {
    "deploy": "kanin topology apply {file} (the management tag: it reads the live broker)",
    "runtime": "kanin run --no-declare {targets}, and publishing",
}
TAGS = {"deploy": ["management"], "runtime": []}


def least_permissions(
    settings: Settings, topology: Topology, targets: list[str]
) -> tuple[dict[str, Grant], list[str]]:
    """The grants of both users, and notes about what the file leaves out."""
    decls = expand(topology)
    notes: list[str] = []
    if not targets:
        consumed = {q.name for q in decls.queues if q.role == "work"}
        publishes = {x.name for x in decls.exchanges} | {""}
        moves = any(q.role != "work" for q in decls.queues)
    else:
        consumers = load_consumers(targets)
        projections, plain = split(consumers)
        specs = {q.name: q for q in queue_specs(plain, topology).queues}
        declared = {q.name for q in decls.queues}
        consumed = {c.queue for c in consumers}
        for consumer in consumers:
            if consumer.queue not in declared:
                notes.append(
                    f"{consumer.consumer_name()} consumes {consumer.queue!r}, which the "
                    "topology file does not declare: the deploy user does not create it"
                )
        moves = any(specs[c.queue].retry or specs[c.queue].dead_letter for c in plain) or any(
            p.on_error == "park"
            for p in projections  # a copy into <stream>.dlq
        )
        publishes = set()
        for contract in snapshot.collect(targets, consumers).values():
            if contract.published_by and contract.source is not None:
                exchange = contract.source.event_exchange
                publishes.add(settings.exchange if exchange is None else exchange)
    grants = {
        "deploy": deploy_grant(decls),
        "runtime": runtime_grant(consumed, publishes, moves),
    }
    return grants, notes


def render(
    grants: dict[str, Grant],
    users: dict[str, str],
    vhost: str,
    file: Path,
    targets: list[str],
    as_json: bool,
) -> str:
    if as_json:
        document = {
            role: {
                "user": users[role],
                "vhost": vhost,
                "tags": TAGS[role],
                **dict(zip(("configure", "write", "read"), grant.regexes(), strict=True)),
            }
            for role, grant in grants.items()
        }
        return json.dumps(document, indent=2) + "\n"
    lines = []
    for role, grant in grants.items():
        doing = ROLES[role].format(file=file, targets=" ".join(targets) or "TARGET...")
        lines.append(f"# {role} user: {doing}")
        user = shlex.quote(users[role])
        lines.append(f"rabbitmqctl set_user_tags {user} {' '.join(TAGS[role])}".rstrip())
        regexes = " ".join(shlex.quote(r) for r in grant.regexes())
        lines.append(f"rabbitmqctl set_permissions -p {shlex.quote(vhost)} {user} {regexes}")
    return "\n".join(lines) + "\n"
