"""What a topology file may declare: exchanges, queues and bindings.

The models check each object on its own (types, ranges, combinations that RabbitMQ
refuses). Checks across objects (references, duplicate names) live in ``check.py``.
Each queue's broker arguments are computed here, in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from framework.retry import RetryPolicy
from framework.units import Duration, Size, broker_age, to_millis

ArgumentValue = str | int | float | bool


def _check_arguments(value: dict[str, Any]) -> dict[str, Any]:
    for key, item in value.items():
        if not isinstance(item, str | int | float | bool):
            raise ValueError(f"argument {key!r} must be a string, number or boolean")
    return value


Arguments = Annotated[dict[str, Any], AfterValidator(_check_arguments)]


def _check_name(name: str) -> str:
    if not name:
        raise ValueError("a name cannot be empty")
    if len(name.encode()) > 255:
        raise ValueError("a name is at most 255 bytes")
    if name.startswith("amq."):
        raise ValueError(f"{name!r}: names starting with 'amq.' are reserved by RabbitMQ")
    return name


Name = Annotated[str, AfterValidator(_check_name)]

# Arguments that have their own key in the file; setting them under `arguments:` too
# would leave two answers for one question.
QUEUE_KEYS = {
    "x-queue-type": "type",
    "x-message-ttl": "message_ttl",
    "x-expires": "expires",
    "x-max-length": "max_length",
    "x-max-length-bytes": "max_length_bytes",
    "x-overflow": "overflow",
    "x-delivery-limit": "delivery_limit",
    "x-single-active-consumer": "single_active_consumer",
    "x-max-priority": "max_priority",
    "x-dead-letter-exchange": "dead_letter",
    "x-dead-letter-routing-key": "dead_letter",
    "x-max-age": "max_age",
    "x-stream-max-segment-size-bytes": "segment_bytes",
}
# what a stream (an append-only log) cannot have: it keeps every message until its
# retention (max_age, max_length_bytes) drops the oldest segment, and nothing is ever
# dead-lettered from it
_NOT_ON_STREAMS = (
    "message_ttl", "expires", "max_length", "overflow", "delivery_limit",
    "single_active_consumer", "max_priority", "retry",
)  # fmt: skip


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExchangeSpec(_Spec):
    name: Name
    type: Literal["direct", "topic", "fanout", "headers"]
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    alternate_exchange: str | None = None
    arguments: Arguments = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ExchangeSpec:
        if self.alternate_exchange is not None and "alternate-exchange" in self.arguments:
            raise ValueError("set the alternate exchange once: alternate_exchange or arguments")
        return self

    def broker_arguments(self) -> dict[str, Any]:
        args = dict(self.arguments)
        if self.alternate_exchange is not None:
            args["alternate-exchange"] = self.alternate_exchange
        return args


class QueueSpec(_Spec):
    name: Name
    type: Literal["classic", "quorum", "stream"] = "classic"
    durable: bool = True
    auto_delete: bool = False
    message_ttl: Duration | None = Field(None, ge=0)
    expires: Duration | None = Field(None, gt=0)
    max_length: int | None = Field(None, ge=0)
    max_length_bytes: Size | None = Field(None, ge=0)
    overflow: Literal["drop-head", "reject-publish", "reject-publish-dlx"] | None = None
    delivery_limit: int | None = Field(None, ge=0)
    single_active_consumer: bool = False
    max_priority: int | None = Field(None, ge=1, le=255)
    arguments: Arguments = Field(default_factory=dict)
    max_age: Duration | None = Field(None, gt=0)  # streams: retention by age
    segment_bytes: Size | None = Field(None, gt=0)  # streams: size of a segment file
    retry: RetryPolicy | None = None
    dead_letter: bool = True  # a stream's default is false: it has no dead letters

    @model_validator(mode="before")
    @classmethod
    def _stream_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") == "stream":
            data = {"dead_letter": False, **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> QueueSpec:
        if self.type == "stream":
            self._check_stream()
        elif self.max_age is not None or self.segment_bytes is not None:
            only = "max_age" if self.max_age is not None else "segment_bytes"
            raise ValueError(f"{only} needs a stream (type: stream)")
        for arg in self.arguments:
            key = QUEUE_KEYS.get(arg)
            if key is not None:
                raise ValueError(f"argument {arg!r} has its own key: use '{key}:' instead")
        if self.type == "quorum":
            if not self.durable or self.auto_delete:
                raise ValueError("a quorum queue must be durable and cannot be auto_delete")
            if self.max_priority is not None:
                raise ValueError("max_priority needs a classic queue")
            if self.overflow == "reject-publish-dlx":
                raise ValueError("quorum queues do not support overflow 'reject-publish-dlx'")
        elif self.delivery_limit is not None:
            raise ValueError("delivery_limit needs a quorum queue (type: quorum)")
        if self.retry is not None and self.retry.attempts > 1 and not self.durable:
            raise ValueError("retries wait in durable queues: a retried queue must be durable")
        return self

    def _check_stream(self) -> None:
        if not self.durable or self.auto_delete:
            raise ValueError("a stream must be durable and cannot be auto_delete")
        for key in _NOT_ON_STREAMS:
            if getattr(self, key) not in (None, False):
                why = "retries" if key == "retry" else f"'{key}'"
                raise ValueError(
                    f"a stream has no {why}: it keeps every message, in order, until "
                    "max_age or max_length_bytes drops the oldest"
                )
        if self.dead_letter:
            raise ValueError("a stream has no dead letters: set dead_letter: false or omit it")

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    def wait_queue(self, attempt: int) -> str:
        return f"{self.name}.retry.{attempt}"

    def broker_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": self.type}
        if self.message_ttl is not None:
            args["x-message-ttl"] = to_millis(self.message_ttl) if self.message_ttl else 0
        if self.expires is not None:
            args["x-expires"] = to_millis(self.expires)
        optional = {
            "x-max-length": self.max_length,
            "x-max-length-bytes": self.max_length_bytes,
            "x-overflow": self.overflow,
            "x-delivery-limit": self.delivery_limit,
            "x-max-priority": self.max_priority,
            "x-stream-max-segment-size-bytes": self.segment_bytes,
        }
        if self.max_age is not None:
            args["x-max-age"] = broker_age(self.max_age)
        args.update({k: v for k, v in optional.items() if v is not None})
        if self.single_active_consumer:
            args["x-single-active-consumer"] = True
        if self.dead_letter:
            args["x-dead-letter-exchange"] = ""
            args["x-dead-letter-routing-key"] = self.dlq
        args.update(self.arguments)
        return args


HeaderMatch = Literal["all", "any", "all-with-x", "any-with-x"]


class BindingSpec(_Spec):
    exchange: str = Field(min_length=1, description="source exchange")
    queue: str | None = Field(None, min_length=1)
    to_exchange: str | None = Field(None, min_length=1)
    routing_key: str | None = None
    routing_keys: list[str] | None = Field(None, min_length=1)
    headers: dict[str, ArgumentValue] | None = None
    match: HeaderMatch | None = None
    arguments: Arguments = Field(default_factory=dict)
    external: bool = False

    @model_validator(mode="after")
    def _check(self) -> BindingSpec:
        if (self.queue is None) == (self.to_exchange is None):
            raise ValueError("a binding needs exactly one destination: 'queue' or 'to_exchange'")
        if self.routing_key is not None and self.routing_keys is not None:
            raise ValueError("use either 'routing_key' or 'routing_keys', not both")
        if self.match is not None and not self.headers:
            raise ValueError("'match' goes with 'headers'")
        if "x-match" in self.arguments:
            raise ValueError("argument 'x-match' has its own key: use 'match:' instead")
        return self

    @property
    def destination(self) -> str:
        return self.queue if self.queue is not None else str(self.to_exchange)

    @property
    def destination_type(self) -> Literal["queue", "exchange"]:
        return "queue" if self.queue is not None else "exchange"

    def routing_key_list(self) -> list[str]:
        if self.routing_keys is not None:
            return list(self.routing_keys)
        return [self.routing_key if self.routing_key is not None else ""]

    def broker_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.headers:
            args["x-match"] = self.match or "all"
            args.update(self.headers)
        args.update(self.arguments)
        return args


def _check_prefix(prefix: str) -> str:
    if not prefix:
        raise ValueError("a prefix cannot be empty: it would own every object of the vhost")
    return prefix


class Topology(_Spec):
    # name prefixes whose every exchange and queue this file owns: plan reports those
    # it does not declare as stale, apply --prune removes them
    owns: list[Annotated[str, AfterValidator(_check_prefix)]] = Field(default_factory=list)
    exchanges: list[ExchangeSpec] = Field(default_factory=list)
    queues: list[QueueSpec] = Field(default_factory=list)
    bindings: list[BindingSpec] = Field(default_factory=list)
    # where each object was declared, by path ("queues[2]", "queues[2].retry"): file:line,
    # or the consumer class attribute it came from; "" is the fallback
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def source(self, origin: str) -> str:
        """Where the object at ``origin`` got its values, for error messages: the file and
        line, or a consumer class attribute."""
        path = origin
        while path:
            if path in self._sources:
                return self._sources[path]
            path = path.rpartition(".")[0]
        return self._sources.get("", "the consumer classes")

    def with_sources(self, sources: dict[str, str]) -> Topology:
        """A copy whose objects at the given paths are said to come from elsewhere."""
        copy = self.model_copy()
        copy._sources = {**self._sources, **sources}
        return copy
