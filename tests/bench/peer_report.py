"""The peer benchmark's results: a table on stdout, a JSON file and a PNG chart per scenario
under tests/bench/results/ (git-ignored), or under ``$KANIN_BENCH_RESULTS``."""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

FOLDER = Path(os.environ.get("KANIN_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))
STAMP = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
PACKAGES = ("aio-pika", "aiormq", "faststream", "dramatiq", "celery", "kombu", "kanin")


def broker_version() -> str:
    try:
        import urllib.request

        request = urllib.request.Request("http://127.0.0.1:15672/api/overview")
        request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
        with urllib.request.urlopen(request, timeout=5) as answer:
            return str(json.load(answer)["rabbitmq_version"])
    except Exception:  # the management plugin is not needed for the benchmark itself
        return "unknown"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "system": platform.platform(),
        "rabbitmq": broker_version(),
        "versions": {name: version(name) for name in PACKAGES},
    }


def write(
    scenario: str,
    settings: dict[str, Any],
    results: dict[str, list[dict[str, float]]],
    chart: tuple[str, list[str], str] | None,
) -> None:
    """This run's rounds as JSON; ``chart`` = (title, keys to plot side by side, y label)."""
    FOLDER.mkdir(parents=True, exist_ok=True)
    document = {
        "scenario": scenario,
        "at": STAMP,
        "machine": machine(),
        "settings": settings,
        "results": results,
    }
    (FOLDER / f"{scenario}-{STAMP}.json").write_text(json.dumps(document, indent=2) + "\n")
    if chart is None:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra brings it; without it, the JSON alone
        return
    title, keys, label = chart
    names = list(results)
    width = 0.8 / len(keys)
    figure, axis = plt.subplots(figsize=(8, 3.8))
    for k, key in enumerate(keys):
        medians = [statistics.median(r[key] for r in results[n]) for n in names]
        low = [m - min(r[key] for r in results[n]) for m, n in zip(medians, names, strict=True)]
        high = [max(r[key] for r in results[n]) - m for m, n in zip(medians, names, strict=True)]
        axis.bar(
            [i + (k - (len(keys) - 1) / 2) * width for i in range(len(names))],
            medians,
            width,
            yerr=[low, high],
            capsize=3,
            label=key if len(keys) > 1 else None,
        )
    axis.set_xticks(range(len(names)), names)
    axis.set_ylabel(label)
    axis.set_title(title)
    if len(keys) > 1:
        axis.legend()
    figure.tight_layout()
    figure.savefig(FOLDER / f"{scenario}-{STAMP}.png", dpi=110)
    plt.close(figure)


def table(
    title: str,
    results: dict[str, list[dict[str, float]]],
    columns: list[tuple[str, str, str]],
    baseline: str | None = None,
    ratio_of: str | None = None,
) -> None:
    """Median of each column (and its spread over the rounds) per contender; with
    ``baseline``, the median of ``ratio_of`` as a ratio to that contender's."""
    print(f"\n{title}")
    base = statistics.median(r[ratio_of] for r in results[baseline]) if baseline and ratio_of else 0
    for name, rounds in results.items():
        cells = []
        for key, label, form in columns:
            values = [r[key] for r in rounds]
            cells.append(
                f"{label} {format(statistics.median(values), form)} "
                f"[{format(min(values), form)}..{format(max(values), form)}]"
            )
        if base and ratio_of:
            cells.append(f"{statistics.median(r[ratio_of] for r in rounds) / base:.2f}x {baseline}")
        print(f"  {name:<16} " + "  ".join(cells))


Column = tuple[str, str, str]  # key, label, format


def report(
    scenario: str,
    title: str,
    results: dict[str, list[dict[str, float]]],
    columns: list[Column],
    settings: dict[str, Any],
    plot: list[str],
    unit: str,
    ratio: str | None = None,
) -> None:
    """The table on stdout, then this run as JSON with a chart of the ``plot`` keys;
    ``ratio``: a key whose median is also shown against raw aio-pika's."""
    table(title, results, columns, "raw aio-pika" if ratio else None, ratio)
    write(scenario, settings, results, (title, plot, unit))
