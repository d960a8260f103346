"""The transactional outbox and inbox on PostgreSQL: a service's database and its events
never disagree."""

from framework.outbox.inbox import Inbox
from framework.outbox.outbox import Outbox, OutboxTransaction

__all__ = ["Inbox", "Outbox", "OutboxTransaction"]
