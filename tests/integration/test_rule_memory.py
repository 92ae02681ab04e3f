"""Memory across rule saves: the process that holds the rule engine stays flat however often
rules are saved, enabled and disabled.

Each save checks the whole rule set in durable_rules (and runs the rule's examples), and each
new rule version is made again in the dataflow; the engine's ``delete_ruleset`` kept every
ruleset's state, so the API and the dataflow grew with every save (about 6 GB after 1,000 saves,
32 MB a toggle at 1,000 rules). Each test runs the engine in a process of its own and reads that
process's resident memory, so what other tests keep does not count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
UVICORN = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"]
UVICORN += ["--host", "127.0.0.1", "--log-level", "warning"]
BULK_RULES = 40  # with these, a save kept 0.4 MB in the API and 0.9 MB in the dataflow
WARMUP = 40  # saves before the first reading: caches and pools fill up
SAVES = 300
GROWTH_MB = 40  # what SAVES saves may add after the warm-up (they added 230-280 MB)

TOGGLED = """\
id: window-shoppers
name: Window Shoppers
when:
  count: {event: Product Viewed, within: 10m}
  gte: 3
examples:
  - given:
      - {at: 0m, event: Product Viewed, properties: {product_id: p1}}
      - {at: 1m, event: Product Viewed, properties: {product_id: p2}}
      - {at: 2m, event: Product Viewed, properties: {product_id: p3}}
    expect:
      - {at: 2m, kind: enter}
      - {at: 10m, kind: exit}
"""


def bulk_rule(n: int) -> str:
    """One of many plain rules: together they make the engine's rulesets large."""
    return textwrap.dedent(
        f"""\
        id: bulk-{n}
        name: Bulk {n}
        when:
          count: {{event: Product Viewed, within: 10m}}
          gte: {n + 1}
        """
    )


def resident_mb(pid: int) -> float:
    """The process's resident memory (``/proc/<pid>/statm``, second field, in pages)."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def process_env(settings: Settings) -> dict[str, str]:
    """The environment a Segflow process runs in for these settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {"SEGFLOW_DATA_DIR": str(settings.data_dir), "PYTHONPATH": str(ROOT)}
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    return env


@pytest.fixture
def api_process(settings: Settings, credentials: dict[str, str]) -> Iterator[tuple[str, int]]:
    """The API as `segflow up` runs it (uvicorn, one worker) in a process of its own: its URL
    and process id."""
    port = free_port()
    process = subprocess.Popen(
        [*UVICORN, "--port", str(port)],
        env=process_env(settings),
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None  # died: the assertion below says so

    try:
        wait_for(up, timeout_s=60, what="the API process answers /healthz")
        assert process.poll() is None, "the API process exited at start"
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_saving_rules_again_and_again_keeps_the_api_process_flat(
    api_process: tuple[str, int], credentials: dict[str, str]
) -> None:
    url, pid = api_process
    headers = {"Authorization": f"Bearer {credentials['admin_token']}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:

        def call(method: str, path: str, yaml: str | None = None, status: int = 200) -> Any:
            content = yaml.encode() if yaml is not None else None
            kind = {"Content-Type": "application/yaml"} if yaml is not None else {}
            answer = client.request(method, path, content=content, headers=kind)
            assert answer.status_code == status, answer.text
            return answer.json()

        for n in range(BULK_RULES):
            call("POST", "/api/rules", bulk_rule(n), status=201)
        call("POST", "/api/rules", TOGGLED, status=201)

        def save(times: int) -> None:
            """Disable and enable the rule with examples, and a large one: each is a save
            that checks the whole set and runs the examples."""
            for i in range(times):
                word = "disable" if i % 2 == 0 else "enable"
                call("POST", f"/api/rules/window-shoppers/{word}")
                call("POST", f"/api/rules/bulk-{i % BULK_RULES}/{word}")

        save(WARMUP)
        before = resident_mb(pid)
        save(SAVES)
        after = resident_mb(pid)
        versions = call("GET", "/api/rules/window-shoppers")["version"]

    assert versions == 1 + WARMUP + SAVES
    assert after - before < GROWTH_MB, (
        f"the API process grew {after - before:.0f} MB over {2 * SAVES} saves "
        f"({before:.0f} -> {after:.0f} MB)"
    )


RELOADS_SCRIPT = """
import json, os, sys
from sqlmodel import Session
from app.db import make_engine
from app.rules import store
from app.rules.active import RuleWatcher
from app.settings import Settings
from pipelines.segmentation import FeatureShard, catalogue_for
from pipelines.sources import StreamEvent
from tests.factories import stored_event
from tests.integration.test_rule_memory import resident_mb

warmup, reloads, bulk = (int(arg) for arg in sys.argv[1:4])
engine = make_engine(Settings())
with Session(engine) as session:
    for n in range(bulk):
        store.create_rule(session=session, text=sys.argv[4 + n], media_type="application/yaml",
                          author="tests", examples=lambda rule, *, others, text: [])
    session.commit()
watcher = RuleWatcher(engine, poll_s=0)  # the dataflow's: it reads the revision every batch
shard = FeatureShard(catalogue_for(watcher.current().compiled, 300_000), None, None, watcher)
at = 1_767_225_600_000

def reload(times, start):
    for i in range(start, start + times):
        with Session(engine) as session:  # a save, as the API makes it
            store.set_enabled(session=session, rule_id=f"bulk-{i % bulk}", enabled=i % 2 == 1,
                              author="tests", examples=lambda rule, *, others, text: [])
            session.commit()
        entry = stored_event(message_id=f"m{i}", customer=f"c{i % 7}", name="Product Viewed",
                             at=at + i * 1000, properties={"product_id": "p1"})
        shard.on_batch([StreamEvent(0, f"{i + 1}-0", entry)])  # follows the new version
        assert shard.state.revision == watcher.current().revision

reload(warmup, 0)
before = resident_mb(os.getpid())
reload(reloads, warmup)
print(json.dumps({"before": before, "after": resident_mb(os.getpid())}))
"""


def test_the_dataflows_reload_path_stays_flat_across_rule_versions(settings: Settings) -> None:
    """The dataflow's way to a new rule version: its watcher sees the revision move and
    compiles and checks the set, and the shard's next batch runs it (each worker thread makes
    the engine's rulesets for it and drops the previous version's)."""
    texts = [bulk_rule(n) for n in range(BULK_RULES)]
    done = subprocess.run(
        [sys.executable, "-c", RELOADS_SCRIPT, str(WARMUP), str(SAVES), str(BULK_RULES), *texts],
        env=process_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    growth = rss["after"] - rss["before"]
    assert growth < GROWTH_MB, (
        f"the dataflow's process grew {growth:.0f} MB over {SAVES} rule versions "
        f"({rss['before']:.0f} -> {rss['after']:.0f} MB)"
    )


THREADS_SCRIPT = """
import json, os, sys, threading
from app.rules.active import shipped_compiled
from app.rules.engine import Rulesets
from tests.integration.test_rule_memory import resident_mb

warmup, threads = (int(arg) for arg in sys.argv[1:3])
rules = shipped_compiled()

def evaluate():
    Rulesets.for_thread(rules).segments({}, {})

def run(times):
    for _ in range(times):
        thread = threading.Thread(target=evaluate)
        thread.start()
        thread.join()

run(warmup)
before = resident_mb(os.getpid())
run(threads)
print(json.dumps({"before": before, "after": resident_mb(os.getpid())}))
"""


def test_rulesets_of_threads_that_ended_are_freed() -> None:
    """The API checks a rule's examples in its thread pool, whose idle threads end: each kept
    the rulesets it had made (about 225 KB for the shipped rules, more for larger sets)."""
    threads = 600
    done = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT, str(WARMUP), str(threads)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    growth = rss["after"] - rss["before"]
    assert growth < 30, (
        f"{threads} threads that ended left {growth:.0f} MB behind "
        f"({rss['before']:.0f} -> {rss['after']:.0f} MB)"
    )
