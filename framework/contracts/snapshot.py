"""A service's event contract: every event type it consumes and publishes, with the
version and JSON Schema the code has now, written to and read from a lock file.

What a service consumes comes from its consumer (and projection) classes. What it
publishes: each consumer's ``publishes``, and the events with an ``exchange=`` that a
module of the service imports and does not consume (``workers.payments`` imports
``PaymentCaptured``), so the shop needs no declarations.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import json
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from framework.consumer import Consumer
from framework.errors import ConfigError
from framework.events import Event
from framework.loading import load_consumers

FORMAT = 1  # of the lock file


@dataclass
class Contract:
    """One event type as a service has it."""

    type: str
    version: int
    schema: dict[str, Any]
    upcasts_from: list[int] = field(default_factory=list)
    consumed_by: list[str] = field(default_factory=list)
    published_by: list[str] = field(default_factory=list)
    source: builtins.type[Event] | None = None  # the class, when it comes from the code

    def record(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "upcasts_from": self.upcasts_from,
            "consumed_by": self.consumed_by,
            "published_by": self.published_by,
            "schema": self.schema,
        }


def contract_of(cls: type[Event]) -> Contract:
    return Contract(cls.event_type, cls.event_version, cls.model_json_schema(),
                    sorted(cls.upcasters), source=cls)  # fmt: skip


def _modules(targets: list[str]) -> list[ModuleType]:
    found: dict[str, ModuleType] = {}
    for target in targets:
        name = target.partition(":")[0]
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"cannot import {name!r}: no module named {exc.name!r}") from None
        found[module.__name__] = module
        if hasattr(module, "__path__") and ":" not in target:
            for info in pkgutil.iter_modules(module.__path__, module.__name__ + "."):
                found[info.name] = importlib.import_module(info.name)
    return list(found.values())


def collect(
    targets: list[str], consumers: list[type[Consumer]] | None = None
) -> dict[str, Contract]:
    """The contracts of the service made of ``targets`` (as for ``kanin run``), by type;
    ``consumers``: its consumer classes, when already loaded from ``targets``."""
    if consumers is None:
        consumers = load_consumers(targets)
    contracts: dict[str, Contract] = {}

    def add(cls: type[Event]) -> Contract:
        have = contracts.get(cls.event_type)
        if have is None:
            have = contracts[cls.event_type] = contract_of(cls)
        elif have.version != cls.event_version:
            raise ConfigError(
                f"two classes of event type {cls.event_type!r} with versions {have.version} "
                f"and {cls.event_version}: a service has one version of each type"
            )
        return have

    consumed_in: dict[str, set[type[Event]]] = {}
    for consumer in consumers:
        for cls in consumer.event_classes().values():
            add(cls).consumed_by.append(consumer.consumer_name())
            consumed_in.setdefault(consumer.__module__, set()).add(cls)
        for cls in consumer.publishes:
            add(cls).published_by.append(consumer.consumer_name())
    for module in _modules(targets):
        taken = consumed_in.get(module.__name__, set())
        for value in vars(module).values():
            if (
                inspect.isclass(value) and issubclass(value, Event) and value.event_type
                and value.event_exchange is not None and value.__module__ != module.__name__
                and value not in taken
            ):  # fmt: skip
                add(value).published_by.append(module.__name__)
    for contract in contracts.values():
        contract.consumed_by = sorted(set(contract.consumed_by))
        contract.published_by = sorted(set(contract.published_by))
    return dict(sorted(contracts.items()))


def write(contracts: dict[str, Contract], targets: list[str], out: Path) -> None:
    document = {
        "kanin_events_lock": FORMAT,
        "targets": targets,
        "events": {name: c.record() for name, c in contracts.items()},
    }
    out.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read(path: Path) -> dict[str, Contract]:
    """The contracts of a lock file; ``ConfigError`` naming the file and what is wrong."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such lock file (make one: kanin events snapshot)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a lock file of kanin events snapshot ({exc})") from None
    if not isinstance(document, dict) or document.get("kanin_events_lock") != FORMAT:
        raise ConfigError(f"{path}: not a lock file of kanin events snapshot (format {FORMAT})")
    contracts: dict[str, Contract] = {}
    try:
        for name, entry in document["events"].items():
            contracts[name] = Contract(
                name, int(entry["version"]), dict(entry["schema"]),
                [int(v) for v in entry.get("upcasts_from", [])],
                list(entry.get("consumed_by", [])), list(entry.get("published_by", [])),
            )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: an event entry is malformed ({exc!r})") from None
    return contracts
