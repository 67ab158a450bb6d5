"""`settle_heap`, which `tidings serve` and `tidings worker` call when they start: what start-up
allocated leaves the collector's scans, and cycles made afterwards are still collected."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import gc, json
from tidings.main import create_app  # what a server imports
from tidings.worker.runner import settle_heap

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a

cycle()  # garbage from start-up, collected before the freeze
before = gc.get_freeze_count()
settle_heap()
frozen = gc.get_freeze_count()
cycle()  # garbage made while serving
collected = gc.collect()
leaked = sum(isinstance(o, Node) for o in gc.get_objects())
threshold = gc.get_threshold()
print(json.dumps({"before": before, "frozen": frozen, "threshold": threshold,
                  "collected": collected, "leaked": leaked}))
"""


def test_settle_heap_freezes_start_up_and_still_collects_later_cycles() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert seen["before"] == 0
    assert seen["frozen"] > 10_000  # modules, metadata, templates
    assert seen["threshold"][0] > 700  # young objects are collected less often than by default
    assert seen["collected"] >= 2  # the later cycle
    assert seen["leaked"] == 0  # neither cycle survived
