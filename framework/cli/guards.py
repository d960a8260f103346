"""What ``kanin run`` refuses or warns about before a worker starts: nothing that weakens
a guarantee (retries, handled-once) happens quietly, and each message names where the
value came from (a flag, an environment variable, ``.env``, a class attribute, the
default)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from framework.cli.app import load_settings
from framework.consumer import Consumer
from framework.errors import ConfigError
from framework.loading import load_consumers
from framework.settings import Settings
from framework.topology import Topology, load_topology

if TYPE_CHECKING:
    from framework.contracts.snapshot import Contract

log = logging.getLogger("kanin.run")


def source(settings: Settings, field: str, flag: str | None = None) -> str:
    """Where a setting's value came from: ``flag`` (given), the variable, ``.env``, or
    the default."""
    if flag is not None:
        return flag
    name = f"KANIN_{field.upper()}"
    if name in os.environ:
        return name
    if field in settings.model_fields_set:
        return f"{name} in .env"
    return f"the default (set {name} to change it)"


def topology_for(
    settings: Settings, consumers: list[type[Consumer]], flag: Path | None
) -> Topology | None:
    """The topology file named by ``--topology`` or ``KANIN_TOPOLOGY`` (missing: exit 2),
    else ``config/topology.yaml`` when it exists, else None with a warning naming the
    consumers that run without the file's retries."""
    path = settings.topology
    named = flag is not None or "topology" in settings.model_fields_set
    if named:
        if not path.exists():
            where = source(settings, "topology", "--topology" if flag is not None else None)
            raise ConfigError(f"topology file {path} does not exist (named by {where})")
        return load_topology(path)
    if path.exists():
        return load_topology(path)
    bare = [f"{c.consumer_name()} ({c.queue})" for c in consumers if c.retry is None]
    if bare:
        log.warning(
            "no topology file at %s (the default; name one with --topology or "
            "KANIN_TOPOLOGY): %s run with 1 attempt each, no delayed retries",
            Path(path).resolve(), ", ".join(bare),
        )  # fmt: skip
    return None


def check_idempotency(settings: Settings, consumers: list[type[Consumer]], processes: int) -> None:
    """Refuse a per-process idempotency store with several processes; warn when the
    default one runs against a real broker."""
    warned = False
    for cls in consumers:
        url = cls.idempotency or settings.idempotency_url
        if not url.startswith("memory"):
            continue
        where = (
            f"{cls.consumer_name()}.idempotency"
            if cls.idempotency
            else f"KANIN_IDEMPOTENCY_URL: {source(settings, 'idempotency_url')}"
        )
        if processes > 1:
            raise ConfigError(
                f"--processes {processes} with the idempotency store {url} ({where}): its keys "
                "live in one process, so a duplicate that reaches another is handled again; "
                "set KANIN_IDEMPOTENCY_URL=redis://host:6379/0 to share them, or off to run "
                "without deduplication"
            )
        default = not cls.idempotency and "idempotency_url" not in settings.model_fields_set
        if default and not warned and not settings.broker_url.startswith("memory://"):
            warned = True
            log.warning(
                "idempotency store %s (%s) keeps its keys in this process only: with more "
                "worker processes or hosts, set KANIN_IDEMPOTENCY_URL=redis://host:6379/0",
                url, where,
            )  # fmt: skip


def describe(
    targets: list[str], flag: Path | None
) -> tuple[Settings, list[type[Consumer]], dict[str, Contract], Topology]:
    """The service made of ``targets`` (as for kanin run), for kanin asyncapi and kanin
    docs: its settings, consumer classes, event contracts and topology (empty without a
    file)."""
    from framework.contracts import snapshot

    settings = load_settings(topology=flag)
    consumers = load_consumers(targets)
    contracts = snapshot.collect(targets, consumers)
    return settings, consumers, contracts, topology_for(settings, consumers, flag) or Topology()
