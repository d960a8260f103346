"""`kanin topology graph`: the shop drawn, against a golden file and the docs' picture."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from framework.loading import load_consumers
from framework.ops.graph import build, render
from framework.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "shop.mmd"
SERVICES = ["workers.inventory", "workers.payments", "workers.shipping", "workers.notifications"]


def shop(form: str) -> str:
    consumers = [(c.__name__, c.queue) for c in load_consumers(SERVICES)]
    return render(build(load_topology(ROOT / "config" / "topology.yaml"), consumers), form)  # type: ignore[arg-type]


def test_the_shop_as_mermaid_matches_the_golden_file() -> None:
    assert shop("mermaid") == GOLDEN.read_text(encoding="utf-8")


def test_the_picture_in_the_docs_is_the_current_file() -> None:
    page = (ROOT / "docs" / "topology.md").read_text(encoding="utf-8")
    drawn = re.findall(r"^```mermaid\n(.*?)^```", page, re.M | re.S)
    assert drawn == [GOLDEN.read_text(encoding="utf-8")]


def test_the_shop_as_dot_renders_with_graphviz(tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.skip("graphviz is not installed (make test installs it)")
    source = tmp_path / "shop.dot"
    source.write_text(shop("dot"), encoding="utf-8")
    result = subprocess.run(
        ["dot", "-Tsvg", str(source)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.count('class="node"') == 21 and "payments.charge.dlq" in result.stdout


def test_names_that_are_not_identifiers_get_safe_ids() -> None:
    from framework.topology import Topology

    topology = Topology.model_validate(
        {
            "exchanges": [{"name": "a-b.c", "type": "direct"}],
            "queues": [
                {"name": "a_b.c", "dead_letter": False},
                {"name": 'q"x', "dead_letter": False},
            ],
            "bindings": [{"exchange": "a-b.c", "queue": "a_b.c", "routing_key": 'say "hi"'}],
        }
    )
    text = render(build(topology))
    assert 'x_a_b_c{{"a-b.c (direct)"}}' in text and 'q_a_b_c[["a_b.c"]]' in text
    assert 'q_q_x[["q#quot;x"]]' in text and '|"say #quot;hi#quot;"|' in text
    dot = render(build(topology), "dot")
    assert 'label="q\\"x"' in dot
