"""Topology: the exchanges, queues and bindings a service needs, declared from YAML."""

from framework.topology.expand import Declarations, expand
from framework.topology.loader import load_topology, parse_topology
from framework.topology.model import BindingSpec, ExchangeSpec, QueueSpec, Topology

__all__ = [
    "BindingSpec",
    "Declarations",
    "ExchangeSpec",
    "QueueSpec",
    "Topology",
    "expand",
    "load_topology",
    "parse_topology",
]
