"""The topology loader: every key, every kind of bad file, environment expansion."""

from __future__ import annotations

import pytest

from framework.errors import TopologyError
from framework.topology import expand, load_topology, parse_topology

EVERY_KEY = """
exchanges:
  - name: ex.events
    type: topic
    durable: false
    auto_delete: true
    internal: false
    alternate_exchange: ex.unrouted
    arguments: {x-custom: 7}
  - name: ex.unrouted
    type: fanout
    internal: true
  - name: ex.headers
    type: headers
  - name: ex.direct
    type: direct
queues:
  - name: q.all
    type: classic
    durable: true
    auto_delete: false
    message_ttl: 1500ms
    expires: 1h
    max_length: 10
    max_length_bytes: 4096
    overflow: reject-publish-dlx
    single_active_consumer: true
    max_priority: 9
    arguments: {x-queue-mode: lazy}
    retry:
      attempts: 4
      backoff: exponential
      initial: 0.5
      multiplier: 3
      max: 2s
    dead_letter: true
  - name: q.quorum
    type: quorum
    delivery_limit: 7
    overflow: drop-head
    retry: {attempts: 3, backoff: fixed, initial: 5s}
  - name: q.plain
    dead_letter: false
bindings:
  - exchange: ex.events
    queue: q.all
    routing_key: a.*
  - exchange: ex.events
    queue: q.quorum
    routing_keys: [b.#, c.created]
  - exchange: ex.headers
    queue: q.plain
    headers: {region: eu, tier: 1}
    match: any
    arguments: {x-extra: yes}
  - exchange: ex.events
    to_exchange: ex.direct
    routing_key: "#"
  - exchange: ex.unrouted
    queue: q.plain
  - exchange: amq.topic
    queue: elsewhere.queue
    routing_key: x
    external: true
"""


def test_every_key_is_accepted_and_maps_to_broker_arguments() -> None:
    topology = parse_topology(EVERY_KEY, "t.yaml", {})
    events = topology.exchanges[0]
    assert (events.durable, events.auto_delete, events.internal) == (False, True, False)
    assert events.broker_arguments() == {"x-custom": 7, "alternate-exchange": "ex.unrouted"}

    q = topology.queues[0]
    assert q.broker_arguments() == {
        "x-queue-type": "classic",
        "x-message-ttl": 1500,
        "x-expires": 3_600_000,
        "x-max-length": 10,
        "x-max-length-bytes": 4096,
        "x-overflow": "reject-publish-dlx",
        "x-max-priority": 9,
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q.all.dlq",
        "x-queue-mode": "lazy",
    }
    assert q.retry is not None
    assert q.retry.delays_ms() == [500, 1500, 2000]  # 0.5, 1.5, 4.5 capped at 2
    quorum = topology.queues[1]
    assert quorum.broker_arguments()["x-delivery-limit"] == 7
    assert quorum.retry is not None and quorum.retry.delays_ms() == [5000, 5000]
    assert "x-dead-letter-exchange" not in topology.queues[2].broker_arguments()

    headers = topology.bindings[2]
    assert headers.broker_arguments() == {
        "x-match": "any",
        "region": "eu",
        "tier": 1,
        "x-extra": True,
    }
    assert topology.bindings[1].routing_key_list() == ["b.#", "c.created"]
    assert topology.bindings[3].destination_type == "exchange"


def test_expand_generates_recoverability_queues_in_dependency_order() -> None:
    decls = expand(parse_topology(EVERY_KEY, "t.yaml", {}))
    # the alternate exchange comes before the exchange that names it
    names = [x.name for x in decls.exchanges]
    assert names.index("ex.unrouted") < names.index("ex.events")
    queues = {q.name: q for q in decls.queues}
    order = [q.name for q in decls.queues]
    assert order[:5] == ["q.all.dlq", "q.all.retry.1", "q.all.retry.2", "q.all.retry.3", "q.all"]
    assert queues["q.all.retry.2"].arguments == {
        "x-queue-type": "classic",
        "x-message-ttl": 1500,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q.all",
    }
    assert queues["q.quorum.retry.1"].arguments["x-queue-type"] == "quorum"
    assert queues["q.quorum.dlq"].arguments == {"x-queue-type": "quorum"}
    assert "q.plain.dlq" not in queues
    assert (decls.count("work"), decls.count("retry"), decls.count("dlq")) == (3, 5, 2)
    assert len(decls.bindings) == 7  # routing_keys: [b.#, c.created] is two bindings


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "shop.yaml", env or {})
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "queues:\n  - name: a\n   type: quorum\n",
            "shop.yaml:3:4: YAML syntax error: expected <block end>, "
            "but found '<block mapping start>'",
            id="yaml-syntax",
        ),
        pytest.param(
            "queues:\n  - name: a\n    retry:\n      attempts: 3\n      intial: 1\n",
            "shop.yaml:5:7: queues[0].retry.intial: unknown key 'intial'",
            id="unknown-key",
        ),
        pytest.param(
            "queues:\n  - name: a\n  - name: b\n  - name: c\n    retry:\n      initial: -1\n",
            "shop.yaml:6:7: queues[2].retry.initial: Input should be greater than 0",
            id="out-of-range",
        ),
        pytest.param(
            "queues:\n  - name: a\n    retry: {initial: soon}\n",
            "shop.yaml:3:13: queues[0].retry.initial: 'soon' is not a duration",
            id="bad-duration",
        ),
        pytest.param(
            "exchanges:\n  - name: e\n    type: topics\n",
            "shop.yaml:3:5: exchanges[0].type: Input should be 'direct', 'topic', 'fanout' or "
            "'headers' (got 'topics')",
            id="bad-enum",
        ),
        pytest.param(
            "queues:\n  - type: quorum\n",
            "shop.yaml:2:5: queues[0]: missing required key 'name'",
            id="missing-key",
        ),
        pytest.param(
            "queues:\n  - name: a\n    max_length: many\n",
            "shop.yaml:3:5: queues[0].max_length: Input should be a valid integer",
            id="wrong-type",
        ),
        pytest.param(
            "queues:\n  - name: a\n    delivery_limit: 3\n",
            "shop.yaml:2:5: queues[0]: delivery_limit needs a quorum queue",
            id="classic-delivery-limit",
        ),
        pytest.param(
            "queues:\n  - name: a\n    arguments: {x-message-ttl: 5}\n",
            "queues[0]: argument 'x-message-ttl' has its own key: use 'message_ttl:' instead",
            id="typed-key-in-arguments",
        ),
        pytest.param(
            "queues:\n  - name: amq.mine\n",
            "shop.yaml:2:5: queues[0].name: 'amq.mine': names starting with 'amq.' are reserved",
            id="reserved-name",
        ),
        pytest.param(
            "queues:\n  - name: a\n  - name: b\n  - name: a\n",
            "shop.yaml:4:5: queues[2].name: queue 'a' is also queues[0]",
            id="duplicate-queue",
        ),
        pytest.param(
            "queues:\n  - name: a\n  - name: a.dlq\n",
            "shop.yaml:3:5: queues[1].name: queue 'a.dlq' is also queues[0] "
            "(generated for queue 'a')",
            id="collides-with-generated",
        ),
        pytest.param(
            "queues:\n  - name: a\nbindings:\n  - exchange: nowhere\n    queue: a\n",
            "shop.yaml:4:5: bindings[0].exchange: exchange 'nowhere' is not declared in this file "
            "(mark the binding 'external: true'",
            id="undeclared-exchange",
        ),
        pytest.param(
            "exchanges:\n  - {name: e, type: topic}\n"
            "bindings:\n  - exchange: e\n    queue: ghost\n",
            "shop.yaml:5:5: bindings[0].queue: queue 'ghost' is not declared in this file",
            id="undeclared-queue",
        ),
        pytest.param(
            "exchanges:\n  - {name: e, type: topic, alternate_exchange: lost}\n",
            "shop.yaml:2:28: exchanges[0].alternate_exchange: exchange 'lost' is not declared",
            id="undeclared-alternate-exchange",
        ),
        pytest.param(
            "exchanges:\n  - {name: e, type: topic}\nqueues:\n  - name: q\nbindings:\n"
            "  - {exchange: e, queue: q, headers: {a: 1}}\n",
            "shop.yaml:6:29: bindings[0].headers: exchange 'e' is topic: header matches need a "
            "headers exchange",
            id="headers-on-topic",
        ),
        pytest.param(
            "queues:\n  - name: a\n    name: b\n",
            "shop.yaml:3:5: queues[0].name: key 'name' appears twice",
            id="duplicate-key",
        ),
        pytest.param(
            "queues:\n  - name: ${QUEUE}\n",
            "shop.yaml:2:11: queues[0].name: environment variable QUEUE is not set",
            id="unset-variable",
        ),
        pytest.param(
            "- just\n- a list\n", "shop.yaml:1:1: the top level must be a mapping", id="list"
        ),
        pytest.param("# nothing\n", "shop.yaml: the file is empty", id="empty"),
    ],
)
def test_invalid_file_names_file_line_path_and_reason(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    text = "queues:\n  - name: a\n    type: lifo\n  - name: b\n    max_length: -1\n"
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("shop.yaml:3:5: queues[0].type:")
    assert found[1].startswith("shop.yaml:5:5: queues[1].max_length:")


def test_environment_expansion() -> None:
    text = (
        "queues:\n"
        "  - name: ${PREFIX}.orders\n"  # plain substitution
        "    max_length: ${MAXLEN:-12}\n"  # default, typed as an int
        "    arguments:\n"
        '      x-note: "${MAXLEN:-12}"\n'  # quoted: stays a string
        "      x-price: $$5\n"  # $$ is a literal $
        "      x-empty: ${EMPTY:-fallback}\n"  # :- also replaces an empty value
        "      x-kept: ${EMPTY-fallback}\n"  # - replaces only an unset one
        "    retry:\n"
        "      attempts: ${ATTEMPTS}\n"
    )
    env = {"PREFIX": "shop", "EMPTY": "", "ATTEMPTS": "4"}
    q = parse_topology(text, "t.yaml", env).queues[0]
    assert q.name == "shop.orders"
    assert q.max_length == 12
    assert q.arguments == {"x-note": "12", "x-price": "$5", "x-empty": "fallback", "x-kept": ""}
    assert q.retry is not None and q.retry.attempts == 4
    assert parse_topology(text, "t.yaml", {**env, "MAXLEN": "99"}).queues[0].max_length == 99


def test_load_topology_reads_the_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "t.yaml"
    path.write_text("queues:\n  - name: ${KANIN_TEST_QUEUE}\n", encoding="utf-8")
    monkeypatch.setenv("KANIN_TEST_QUEUE", "from.env")
    assert load_topology(path).queues[0].name == "from.env"


def test_missing_file_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TopologyError, match=r"nope\.yaml: cannot read file"):
        load_topology(tmp_path / "nope.yaml")


def test_yaml_anchors_and_merge_keys_work() -> None:
    text = (
        "queues:\n"
        "  - name: a\n    retry: &r {attempts: 3, initial: 1s}\n"
        "  - name: b\n    retry:\n      <<: *r\n      attempts: 5\n"
    )
    a, b = parse_topology(text, "t.yaml", {}).queues
    assert a.retry is not None and b.retry is not None
    assert (a.retry.attempts, b.retry.attempts, b.retry.initial) == (3, 5, 1.0)


def test_the_example_shop_topology_is_valid() -> None:
    decls = expand(load_topology("config/topology.yaml"))
    assert {"inventory.reserve", "payments.charge", "shipping.schedule", "notifications.email"} <= {
        q.name for q in decls.queues
    }
