"""The ``segflow`` command as a user runs it: real processes, real Redis and SQL."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import httpx
import pytest

from app.redis_server import pid_is_redis
from app.rules.active import SHIPPED_RULES_DIR
from app.streams import CONTROL_TYPES
from tests.cluster_personas import population
from tests.conftest import Services
from tests.factories import StreamEntries, stored_events
from tests.helpers import (
    SEGFLOW,
    children,
    embedded_redis,
    free_port,
    segflow_up,
    start_segflow,
    wait_for,
    wait_for_line,
    write_profiles,
)


def run(services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SEGFLOW_DATA_DIR": str(services.data_dir),
        "REDIS_URL": services.redis_url,
    }
    env.pop("DATABASE_URL", None)
    if services.database_url:
        env["DATABASE_URL"] = services.database_url
    return subprocess.run(
        [*SEGFLOW, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_writekey_create_prints_a_working_key_on_its_last_line(services, api, redis_client):
    name = f"cli-{time.monotonic_ns()}"
    done = run(services, "writekey", "create", name)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"sk_[A-Za-z0-9_-]{20,}", key)

    def accepted() -> bool:  # the collector reloads on an unknown key at most once a second
        response = httpx.post(
            f"{api.url}/v1/track", auth=(key, ""), json={"userId": "u", "event": "Signed Up"}
        )
        return response.status_code == 200 and response.json()["accepted"] == 1

    wait_for(accepted, what="the new key accepted")
    assert stored_events(redis_client)[0].source == name

    again = run(services, "writekey", "create", name)
    assert again.returncode != 0
    assert "exists already" in again.stderr


def write_jsonl(path: Path, messages: list[dict[str, object]], junk: str = "") -> Path:
    lines = [json.dumps(m) for m in messages]
    if junk:
        lines.insert(1, junk)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.backend_independent
def test_replay_segment_jsonl_in_event_time_order_and_idempotent(services, redis_client, tmp_path):
    messages: list[dict[str, object]] = [
        {
            "type": "track",
            "userId": f"u{i % 7}",
            "event": "Product Viewed",
            "timestamp": f"2024-05-01T10:{59 - i:02d}:00Z",
            "properties": {"n": i},
        }
        for i in range(60)
    ]
    messages.append({"type": "track", "event": "Product Viewed"})  # no user: fails
    path = write_jsonl(tmp_path / "history.jsonl", messages, junk="{broken")

    done = run(services, "replay", str(path))
    assert done.returncode == 0, done.stderr
    assert "accepted=60 duplicates=0 failed=2" in done.stdout
    assert "userId or anonymousId is required" in done.stdout

    events = stored_events(redis_client)
    assert len(events) == 60
    by_partition: dict[int, list[int]] = {}
    client_streams = [k.decode() for k in redis_client.keys("events:*")]
    for key in client_streams:
        times = [json.loads(f[b"e"])["timestamp"] for _, f in redis_client.xrange(key)]
        by_partition[len(by_partition)] = times
    assert all(times == sorted(times) for times in by_partition.values())
    assert {e.source for e in events} == {"replay:segment"}
    failed = redis_client.xrange("failed-events")
    assert len(failed) == 2
    assert b"not JSON" in failed[0][1][b"reason"]
    assert failed[0][1][b"source"] == b"replay:history.jsonl"  # the file they came from

    again = run(services, "replay", str(path))
    assert "accepted=0 duplicates=60 failed=2" in again.stdout
    renamed = tmp_path / "history-copy.jsonl"  # the same rows under another name
    renamed.write_bytes(path.read_bytes())
    copied = run(services, "replay", str(renamed))
    assert "accepted=0 duplicates=60 failed=2" in copied.stdout
    assert len(stored_events(redis_client)) == 60


def test_replay_retailrocket_csv(services, redis_client, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,addtocart,248676,\n"
        "1433221999827,111016,transaction,7943,1001\n"
        "1433221999827,111016,transaction,7944,1001\n"
        "1433221999900,111016,purchase,1,\n"
    )
    done = run(services, "replay", str(path))
    assert done.returncode == 0, done.stderr
    assert "accepted=3 duplicates=1 failed=1" in done.stdout
    events = {e.event: e for e in stored_events(redis_client)}
    assert events["Product Viewed"].customer_id == "257597"
    assert events["Product Viewed"].timestamp == 1433221332117
    assert events["Product Added"].properties == {"product_id": "248676"}
    assert events["Order Completed"].properties["order_id"] == "1001"


def test_replay_rees46_gzipped_csv(services, redis_client, tmp_path):
    path = tmp_path / "2019-Oct.csv.gz"
    rows = (
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
        "user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,"
        "72d76fde-8bb3-4e00-8c23-a032dfed738c\n"
        "2019-10-01 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.environment."
        "water_heater,aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc\n"
        "2019-10-01 00:00:02 UTC,remove_from_cart,3900821,2053013552326770905,,aqua,33.20,"
        "554748717,9333dfbd-b87a-4708-9857-6336556b0fcc\n"
        "2019-10-01 00:00:03 UTC,purchase,3900821,2053013552326770905,,aqua,33.20,554748717,"
        "9333dfbd-b87a-4708-9857-6336556b0fcc\n"
    )
    path.write_bytes(gzip.compress(rows.encode()))
    done = run(services, "replay", str(path))
    assert done.returncode == 0, done.stderr
    assert "accepted=4 duplicates=0 failed=0" in done.stdout
    events = {e.event: e for e in stored_events(redis_client)}
    assert set(events) == {"Product Viewed", "Product Added", "Product Removed", "Order Completed"}
    added = events["Product Added"]
    assert added.timestamp == 1569888001000
    assert added.properties["price"] == 33.2
    assert added.properties["category"] == "appliances.environment.water_heater"
    assert events["Order Completed"].properties["revenue"] == 33.2
    assert events["Product Viewed"].context["session_id"].startswith("72d76fde")

    plain = tmp_path / "2019-Oct.csv"  # decompressed: the same rows, stored once
    plain.write_text(rows)
    again = run(services, "replay", str(plain))
    assert again.returncode == 0, again.stderr
    assert "accepted=0 duplicates=4 failed=0" in again.stdout


def test_a_replay_whose_every_row_fails_exits_non_zero(services, redis_client, tmp_path):
    messages: list[dict[str, object]] = [  # event time as epoch ms: the spec's is ISO-8601
        {"type": "track", "userId": "u1", "event": "Product Viewed", "timestamp": 1714557600000}
    ]
    done = run(services, "replay", str(write_jsonl(tmp_path / "ms.jsonl", messages)))
    assert done.returncode != 0
    assert "accepted=0 duplicates=0 failed=1" in done.stdout
    assert "timestamp must be an ISO-8601 date-time string" in done.stdout
    assert "no row could be replayed" in done.stderr
    assert stored_events(redis_client) == []


def test_replay_rate_spreads_a_small_file_over_its_seconds(services, redis_client, tmp_path):
    messages: list[dict[str, object]] = [
        {
            "type": "track",
            "userId": f"u{i}",
            "event": "Product Viewed",
            "timestamp": f"2024-05-01T10:00:{i:02d}Z",
        }
        for i in range(30)
    ]
    path = write_jsonl(tmp_path / "paced.jsonl", messages)
    started = time.monotonic()
    done = run(services, "replay", str(path), "--rate", "10")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "accepted=30" in done.stdout
    assert took >= 2.9  # 30 events at 10 a second: the last one sent 2.9 s after the first


def test_replay_of_a_missing_file_fails_with_a_message(services, redis_client, tmp_path):
    done = run(services, "replay", str(tmp_path / "nope.jsonl"))
    assert done.returncode != 0
    assert "no such file" in done.stderr


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    """``segflow rules check PATH``: reads files only, so it needs no Redis or SQL."""
    return subprocess.run(
        [*SEGFLOW, "rules", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rules_check_passes_the_shipped_rules_and_counts_their_examples():
    done = check_rules(SHIPPED_RULES_DIR)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ok  browsing-enthusiasts  4 examples",
        "ok  cart-abandoners  4 examples",
        "ok  high-intent-buyers  3 examples",
        "ok  lapsed-customers  3 examples",
        "ok  loyal-customers  3 examples",
    ]
    assert done.stderr == ""


CONTRADICTED = """\
id: quick-abandoners
name: Quick Abandoners
when:
  all:
    - feature: cart_value
      gt: 0
    - since: {event: Product Added}
      gte: 30m
examples:
  - name: holds
    given: [{at: 0m, event: Product Added, properties: {product_id: p1, price: 20}}]
    expect: [{at: 30m, kind: enter}]
  - name: too soon
    given: [{at: 0m, event: Product Added, properties: {product_id: p1, price: 20}}]
    expect: [{at: 10m, kind: enter}]
"""


def test_rules_check_refuses_a_rule_that_contradicts_its_example(tmp_path):
    path = tmp_path / "quick.yaml"
    path.write_text(CONTRADICTED)

    done = check_rules(path)

    assert done.returncode == 1
    assert done.stdout == ""
    assert (
        f"{path}: rule 'quick-abandoners', field 'examples[1]' (line 13): example 'too soon' "
        "expects enter at 10m, but the rule gives enter at 30m" in done.stderr
    )
    assert done.stderr.rstrip().endswith("Error: 1 problem")


def test_rules_check_of_a_directory_reports_the_bad_rule_and_passes_the_others(tmp_path):
    for shipped in SHIPPED_RULES_DIR.glob("*.yaml"):
        (tmp_path / shipped.name).write_text(shipped.read_text(encoding="utf-8"))
    (tmp_path / "quick.yaml").write_text(CONTRADICTED)

    done = check_rules(tmp_path)

    assert done.returncode == 1
    assert "ok  cart-abandoners  4 examples" in done.stdout
    assert "quick-abandoners" not in done.stdout
    assert "field 'examples[1]' (line 13)" in done.stderr


def test_rules_check_refuses_invalid_yaml_with_its_line_and_runs_no_example(tmp_path):
    (tmp_path / "good.yaml").write_text(CONTRADICTED.replace("10m, kind", "30m, kind"))
    (tmp_path / "bad.yaml").write_text("id: bad\nname: Bad\nwhen: {count: [\n")

    done = check_rules(tmp_path)

    assert done.returncode == 1
    assert done.stdout == ""
    assert f"{tmp_path / 'bad.yaml'}: rule 'bad' (line 4): not valid YAML" in done.stderr
    assert "Error: 1 problem; no example was run" in done.stderr


def test_rules_check_of_a_missing_path_fails_with_a_message(tmp_path):
    done = check_rules(tmp_path / "nope.yaml")

    assert done.returncode != 0
    assert "does not exist" in done.stderr


def test_bench_rules_passes_its_options_to_bench_rules_py():
    done = subprocess.run(
        [*SEGFLOW, "bench", "rules", "--snapshots", "100", "--seconds", "0.01", "--rules", "1,2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "the floor agreed on every snapshot" in done.stdout
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2"]


def _sources(data_dir: Path) -> dict[str, int]:
    """How many stored events came from each source, in the embedded Redis of ``data_dir``."""
    client = embedded_redis(data_dir)
    counts: dict[str, int] = {}
    for partition in range(4):
        for _, fields in cast(StreamEntries, client.xrange(f"events:{{{partition}}}")):
            entry = json.loads(fields[b"e"])
            if entry["type"] not in CONTROL_TYPES:  # identity merges add entries of their own
                counts[entry["source"]] = counts.get(entry["source"], 0) + 1
    client.close()
    return counts


@pytest.mark.parametrize("services", ["embedded"], indirect=True)
def test_up_on_a_fresh_machine_serves_supervises_and_stops(services, tmp_path):
    process, port, env = start_segflow(tmp_path / "data", api_workers=2)
    seen: list[str] = []
    try:
        token = wait_for_line(process, r"^\s+admin token", seen).split()[-1]
        ui = next(line for line in seen if "admin UI:" in line).split()[2]
        assert httpx.get(ui, follow_redirects=True).url.path == "/admin/login"  # behind login
        key = wait_for_line(process, r"^\s+demo write key", seen).split()[-1]
        wait_for_line(process, r"Ctrl-C", seen)
        base = f"http://127.0.0.1:{port}"
        sent = httpx.post(
            f"{base}/v1/track", auth=(key, ""), json={"userId": "u", "event": "Product Viewed"}
        )
        assert sent.json()["accepted"] == 1
        admin = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/api/failed-events", headers=admin).status_code == 200

        def events_total() -> int | None:
            answer = httpx.get(f"{base}/api/customers/u", headers=admin)
            return answer.json()["features"]["events_total"] if answer.status_code == 200 else None

        wait_for(lambda: events_total() == 1)  # collector -> streams -> dataflow -> profile

        # A second `segflow up` on the same data dir is refused, and the first runs on.
        other = subprocess.run(
            [*SEGFLOW, "up", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert other.returncode != 0
        assert "is in use by `segflow up`" in other.stderr, other.stderr
        assert httpx.get(f"{base}/healthz").status_code == 200

        # The dataflow killed at any moment resumes from its recovery state: nothing is
        # counted twice, nothing is lost.
        (pipeline_pid,) = [
            p
            for p in children(process.pid)
            if b"app.cli\x00pipeline" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        os.killpg(pipeline_pid, signal.SIGKILL)
        wait_for_line(process, r"pipeline exited with code -9 .*restarting", seen)

        (api_pid,) = [
            p
            for p in children(process.pid)
            if b"uvicorn" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        os.kill(api_pid, signal.SIGKILL)
        wait_for_line(process, r"api exited with code -9 .*restarting", seen)
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API was not restarted"
            time.sleep(0.1)
        again = httpx.post(
            f"{base}/v1/track", auth=(key, ""), json={"userId": "u", "event": "Product Added"}
        )
        assert again.json()["accepted"] == 1
        wait_for(lambda: events_total() == 2)
        profile = httpx.get(f"{base}/api/customers/u", headers=admin).json()
        assert [e["event"] for e in profile["events"]] == ["Product Added", "Product Viewed"]
        assert httpx.get(f"{base}/api/customers/nobody", headers=admin).status_code == 404
        stored = embedded_redis(tmp_path / "data").xlen  # the server the API writes to
        assert sum(stored(f"events:{{{p}}}") for p in range(4)) == 2
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
        seen.append(out)
    assert process.returncode == 0, "".join(seen)
    assert not (tmp_path / "data" / "redis" / "server.json").exists()
    assert (tmp_path / "data" / "segflow.db").exists()

    # A second start finds the data, prints no secret again; killed with SIGKILL, it leaves its
    # processes behind, and a third start ends them and serves on the same port.
    second = segflow_up(env, port, "--demo")
    seen = []
    line = wait_for_line(second, r"^\s+admin token", seen)
    assert "sfa_" not in line
    wait_for_line(second, r"Ctrl-C", seen)
    assert not any("demo write key" in s for s in seen)
    state = json.loads((tmp_path / "data" / "redis" / "server.json").read_text())
    wait_for(lambda: _sources(tmp_path / "data").get("demo-shop", 0) > 0)  # the simulated shop
    second.kill()
    second.wait(timeout=30)  # its children still hold the pipe: do not wait for its end
    assert second.stdout is not None
    second.stdout.close()

    third = segflow_up(env, port)
    seen = []
    try:
        wait_for_line(third, r"ending api .* left by an earlier run", seen)
        wait_for_line(third, r"Ctrl-C", seen)
        sent = httpx.post(
            f"http://127.0.0.1:{port}/v1/track",
            auth=(key, ""),
            json={"userId": "u", "event": "Order Completed"},
        )
        assert sent.json()["accepted"] == 1
        state = json.loads((tmp_path / "data" / "redis" / "server.json").read_text())
        assert _sources(tmp_path / "data")["demo"] == 3
    finally:
        third.send_signal(signal.SIGINT)
        out, _ = third.communicate(timeout=30)
    assert third.returncode == 0, out
    assert not pid_is_redis(state["pid"])  # the adopted server was stopped with the rest


@pytest.mark.backend_independent
def test_demo_shop_sends_valid_shop_events(services, api, credentials, redis_client):
    shop = subprocess.Popen(
        [
            *SEGFLOW,
            "demo",
            "--url",
            api.url,
            "--write-key",
            credentials["write_key"],
            "--rate",
            "400",
            "--seed",
            "7",
            "--shoppers",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(stored_events(redis_client)) < 150:
        assert shop.poll() is None, shop.communicate()
        assert time.monotonic() < deadline, "the demo shop sent too little"
        time.sleep(0.2)
    shop.terminate()
    said, _ = shop.communicate(timeout=10)

    assert f"to {api.url}/v1/batch" in said.splitlines()[0]  # it says where it sends
    events = stored_events(redis_client)
    assert redis_client.xlen("failed-events") == 0
    names = {e.event for e in events if e.type == "track"}
    assert names <= {"Product Viewed", "Product Added", "Checkout Started", "Order Completed"}
    assert {"Product Viewed", "Product Added"} <= names
    merges = [e for e in events if e.type == "identify" and e.anonymous_id]
    assert merges, "the demo shop signs someone up (identify with both ids)"
    assert all(e.user_id and e.user_id != e.anonymous_id for e in merges)


def test_demo_shop_at_a_wrong_address_stops_at_once_saying_why(tmp_path: Path) -> None:
    """It printed nothing and retried a refused connection for ever."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    shop = subprocess.run(
        [*SEGFLOW, "demo", "--url", nowhere, "--write-key", "k" * 32],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert shop.returncode != 0
    assert f"cannot reach {nowhere}/v1/batch" in shop.stderr
    assert "--url" in shop.stderr


@pytest.mark.backend_independent
def test_demo_shop_says_what_it_sends(services, api, credentials, redis_client):
    shop = subprocess.Popen(
        [*SEGFLOW, "demo", "--url", api.url, "--write-key", credentials["write_key"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        line = wait_for_line(shop, r"events sent in", seen, timeout_s=90)
    finally:
        shop.terminate()
        shop.communicate(timeout=10)
    assert re.search(r"demo shop: [\d,]+ events sent in [\d,]+ visits, [\d,]+ accepted", line)
    assert re.search(r"last visit [\w-]+ \(\w+\): ", line), line


def test_up_on_a_port_in_use_says_so_and_prepares_nothing(tmp_path: Path) -> None:
    """It printed "Segflow is up" and a fresh admin token (shown once, so lost), then retried
    `Address already in use` for ever."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env["SEGFLOW_DATA_DIR"] = str(tmp_path / "data")
        done = subprocess.run(
            [*SEGFLOW, "up", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "admin token" not in done.stdout + done.stderr
    assert not (tmp_path / "data" / "segflow.db").exists()  # the token is made on a later start


@pytest.mark.backend_independent
def test_rebuild_sets_the_recovery_state_aside_unless_segflow_up_runs(
    services: Services, tmp_path: Path
) -> None:
    recovery = services.data_dir / "recovery"
    recovery.mkdir(parents=True)
    (recovery / "part-0.sqlite3").write_bytes(b"a snapshot")
    with (services.data_dir / "segflow.lock").open("a+") as held:  # as `segflow up` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = run(services, "rebuild")
        fcntl.flock(held, fcntl.LOCK_UN)
    assert refused.returncode != 0
    assert "is in use by `segflow up`" in refused.stderr
    assert recovery.exists()
    done = run(services, "rebuild")
    assert done.returncode == 0, done.stderr
    assert not recovery.exists()
    (aside,) = services.data_dir.glob("recovery.old-*")
    assert (aside / "part-0.sqlite3").read_bytes() == b"a snapshot"
    assert str(aside) in done.stdout
    again = run(services, "rebuild")
    assert "no recovery state" in again.stdout


def test_bench_help_is_the_benchmarks_own(tmp_path: Path) -> None:
    """`segflow bench NAME --help` showed the generic help, not the benchmark's options."""
    own = subprocess.run(
        [*SEGFLOW, "bench", "dispatch", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert own.returncode == 0, own.stderr
    assert "--deliveries" in own.stdout  # an option only bench/dispatch.py has
    general = subprocess.run(
        [*SEGFLOW, "bench", "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert "|".join(("ingest", "pipeline", "latency", "crash")) in general.stdout
    assert "NAME --help" in general.stdout
    wrong = subprocess.run(
        [*SEGFLOW, "bench", "nope"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert wrong.returncode != 0
    assert "'nope' is not one of ingest" in wrong.stderr


@pytest.mark.backend_independent
def test_cluster_fit_refuses_too_few_profiles_then_fits_and_shows_the_model(
    services, settings, redis_client
):
    none = run(services, "cluster", "show")
    assert none.returncode != 0
    assert "no cluster model yet: run `segflow cluster fit`" in none.stderr
    write_profiles(services.redis_url, population(120, seed=21))
    few = run(services, "cluster", "fit")
    assert few.returncode != 0
    assert "120 profiles: a cluster fit needs at least 200" in few.stderr
    bad = run(services, "cluster", "fit", "--algorithms", "kmeans,kmeanz")
    assert bad.returncode == 2
    assert "kmeanz: choose among kmeans, gaussian_mixture" in bad.stderr
    write_profiles(services.redis_url, population(800, seed=22))
    fitted = run(services, "cluster", "fit", "--algorithms", "kmeans,gaussian_mixture,dbscan")
    assert fitted.returncode == 0, fitted.stderr
    assert "cluster fit published" in fitted.stderr  # the progress display's last state
    rows = [line for line in fitted.stdout.splitlines() if line.startswith("│")]
    candidates = [
        row for row in rows if row.split("│")[1].strip() in ("kmeans", "gaussian_mixture", "dbscan")
    ]
    assert len(candidates) == 3
    assert sum("✓" in row for row in candidates) == 1  # the chosen one
    for header in ("silhouette", "Davies-Bouldin", "Calinski-Harabasz", "noise share", "fit s"):
        assert header in fitted.stdout
    last = fitted.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"model version \d+ published: \w+, 4 clusters \(new c1, c2, c3, c4\)", last
    )
    shown = run(services, "cluster", "show")
    assert shown.returncode == 0, shown.stderr
    assert "members now" in shown.stdout
    assert re.search(r"silhouette 0\.\d{3}, Davies-Bouldin \d+\.\d{3}", shown.stdout)
    assert all(f"c{n}" in shown.stdout for n in range(1, 5))


def test_the_command_line_and_the_dataflow_load_no_model_fitting(tmp_path: Path) -> None:
    """Every `segflow` command, and each restart of the dataflow by `segflow up`, loaded
    scikit-learn and SciPy (a second) though only `segflow cluster fit` fits a model."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, app.cli, pipelines.segmentation; "
            "print(*sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == []


def test_segflow_bench_runs_every_benchmark_under_bench():
    shipped = sorted(path.stem for path in (Path(__file__).parents[2] / "bench").glob("*.py"))
    done = subprocess.run(
        [*SEGFLOW, "bench", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    listed = re.search(r"\[([a-z_|\s]+)\]", done.stdout)  # (the usage line wraps)
    assert listed is not None, done.stdout
    assert sorted(re.sub(r"\s", "", listed.group(1)).split("|")) == shipped
