"""Identity merges live, through the collector, the streams and the running dataflow: an
anonymous visitor who identifies (or is aliased) becomes one customer with the known id, whose
profile equals a twin's that carried the user id all along."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis

from app.features import grows_with_clock
from app.profiles.erasure import ID_FIELDS
from app.settings import Settings
from app.streams import ABSORB, ERASE, EVENT_FIELD, partition_of, stream_key
from tests.factories import StreamEntries, iso
from tests.helpers import ServerThread, pipeline_env, wait_for


def message(kind: str, at: int, n: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": n, "timestamp": iso(at), **fields}


def shop(who: dict[str, str], start: int, tag: str) -> list[dict[str, Any]]:
    return [
        message(
            "track",
            start + n * 1000,
            f"{tag}-v{n}",
            event="Product Viewed",
            properties={"product_id": f"p{n}"},
            **who,
        )
        for n in range(5)  # the fifth enters browsing-enthusiasts
    ] + [
        message(
            "track",
            start + 5000,
            f"{tag}-add",
            event="Product Added",
            properties={"product_id": "p1", "price": 25.0},
            **who,
        )
    ]


def timeless(features: dict[str, Any]) -> dict[str, Any]:
    """The features but those that grow with the clock of the read (times since)."""
    return {name: value for name, value in features.items() if not grows_with_clock(name)}


def profile_of(api: ServerThread, admin: dict[str, str], customer: str) -> dict[str, Any] | None:
    """The customer's profile through the admin API, None while there is none."""
    found = httpx.get(f"{api.url}/api/customers/{customer}", headers=admin)
    return cast(dict[str, Any], found.json()) if found.status_code == 200 else None


@contextlib.contextmanager
def running_pipeline(settings: Settings) -> Iterator[None]:
    """``segflow pipeline`` running live (no recovery) on the test's Redis and SQL."""
    env = pipeline_env(settings.redis_url or "", settings.data_dir, settings.partitions)
    env.pop("DATABASE_URL", None)
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "pipeline", "--no-recovery"],
        env=env,
        start_new_session=True,
    )
    try:
        yield
    finally:
        os.killpg(pipeline.pid, 9)
        pipeline.wait()


@pytest.mark.backend_independent
def test_identify_and_alias_merge_the_anonymous_visitor_into_the_known_customer(
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    api: ServerThread,
    credentials: dict[str, str],
):
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    with running_pipeline(settings):
        start = time.time_ns() // 1_000_000 - 60_000
        batch = [
            # ann browses anonymously, identifies, then views once more as herself
            *shop({"anonymousId": "anon-ann"}, start, "ann"),
            message(
                "identify",
                start + 6000,
                "ann-id",
                userId="ann",
                anonymousId="anon-ann",
                traits={"plan": "gold"},
            ),
            message(
                "track",
                start + 7000,
                "ann-v9",
                event="Product Viewed",
                userId="ann",
                anonymousId="anon-ann",
                properties={"product_id": "p9"},
            ),
            # bob does the same, linked by an alias
            *shop({"anonymousId": "anon-bob"}, start, "bob"),
            message("alias", start + 6000, "bob-alias", userId="bob", previousId="anon-bob"),
            message(
                "track",
                start + 7000,
                "bob-v9",
                event="Product Viewed",
                userId="bob",
                properties={"product_id": "p9"},
            ),
            # the twin carries its user id all along
            *shop({"userId": "twin"}, start, "twin"),
            message("identify", start + 6000, "twin-id", userId="twin", traits={"plan": "gold"}),
            message(
                "track",
                start + 7000,
                "twin-v9",
                event="Product Viewed",
                userId="twin",
                properties={"product_id": "p9"},
            ),
        ]
        answer = httpx.post(
            f"{api.url}/v1/batch",
            json={"batch": batch},
            auth=(credentials["write_key"], ""),
        )
        assert answer.json()["accepted"] == len(batch), answer.text

        profile = functools.partial(profile_of, api, admin)

        def merged(customer: str) -> bool:
            found = profile(customer)
            return bool(found and found["features"]["events_total"] == 7)

        for customer in ("ann", "bob", "twin"):
            wait_for(functools.partial(merged, customer), timeout_s=20, what=f"{customer} merged")
        read_from = time.time_ns() // 1_000_000
        twin = profile("twin")
        assert twin is not None
        for customer in ("ann", "bob"):
            found = profile(customer)
            apart = time.time_ns() // 1_000_000 - read_from  # times since grow as they are read
            assert found is not None
            assert timeless(found["features"]) == timeless(twin["features"])
            for name, value in found["features"].items():
                if grows_with_clock(name) and value is not None:
                    assert 0 <= value - twin["features"][name] <= apart, name
            assert found["segments"] == twin["segments"] == ["browsing-enthusiasts"]
        assert profile("ann")["traits"] == {"plan": "gold"}  # type: ignore[index]
        # The anonymous history joined the known customer's lists: her events are the twin's,
        # and so are her transitions (the enter happened to anon-ann, and says so).
        assert profile("ann")["events"] == twin["events"]  # type: ignore[index]
        bob_events = [e["timestamp"] - start for e in profile("bob")["events"]]  # type: ignore[index]
        assert bob_events == [7000, 5000, 4000, 3000, 2000, 1000, 0]  # an alias is no event

        def transitions(customer: str) -> list[dict[str, Any]]:
            page = httpx.get(f"{api.url}/api/customers/{customer}/transitions", headers=admin)
            return cast(list[dict[str, Any]], page.json()["items"])

        assert [{**t, "merged_from": None} for t in transitions("ann")] == transitions("twin")
        assert [(t["at"] - start, t["merged_from"]) for t in transitions("ann")] == [
            (4000, "anon-ann")
        ]
        assert [(t["at"] - start, t["merged_from"]) for t in transitions("bob")] == [
            (4000, "anon-bob")
        ]
        members = httpx.get(f"{api.url}/api/segments/browsing-enthusiasts/members", headers=admin)
        assert sorted(members.json()["items"]) == ["ann", "bob", "twin"]
        # the segment's moves name the known customers, not the anonymous ids they entered as
        moved = httpx.get(f"{api.url}/api/segments/browsing-enthusiasts/transitions", headers=admin)
        assert sorted(
            (m["customer_id"], m["kind"], m["at"] - start) for m in moved.json()["items"]
        ) == [
            ("ann", "enter", 4000),
            ("bob", "enter", 4000),
            ("twin", "enter", 4000),
        ]
        wait_for(lambda: profile("anon-ann") is None, what="the anonymous profile gone")
        assert profile("anon-bob") is None
        status = httpx.get(f"{api.url}/api/status", headers=admin).json()
        wait_for(
            lambda: httpx.get(f"{api.url}/api/status", headers=admin).json()["lag"] == 0,
            what="every entry, relayed ones too, processed",
        )
        assert status["events_accepted"] > len(batch)  # the merges' own entries count too

        # Erasing ann erases her anonymous past too: its events, and the dataflow's note that
        # anon-ann is ann (what comes for anon-ann now is a stranger's, not forwarded to her).
        erased = httpx.delete(f"{api.url}/api/customers/ann", headers=admin)
        assert erased.status_code == 200, erased.text
        assert erased.json()["events_deleted"] >= 8  # her 2 own, and anon-ann's 6 with the merge
        # only the erasure record stays, until the dataflow's snapshots are past it
        assert set(naming(redis_client, "anon-ann")) <= {ERASE}
        stranger = message(
            "track",
            start + 9000,
            "after-erasure",
            event="Product Viewed",
            anonymousId="anon-ann",
            properties={"product_id": "p1"},
        )
        httpx.post(
            f"{api.url}/v1/batch", json={"batch": [stranger]}, auth=(credentials["write_key"], "")
        )
        wait_for(lambda: profile("anon-ann") is not None, what="anon-ann on its own again")
        assert profile("anon-ann")["features"]["events_total"] == 1  # type: ignore[index]
        assert profile("ann") is None


def naming(client: redis.Redis, customer_id: str, partitions: int = 4) -> list[str]:
    """The types of the stream entries that name the customer in any id field."""
    found = []
    for partition in range(partitions):
        for _, fields in cast(StreamEntries, client.xrange(stream_key(partition))):
            entry = json.loads(fields[EVENT_FIELD.encode()])
            if customer_id in (entry.get(name) for name in ID_FIELDS):
                found.append(entry["type"])
    return found


def test_two_ids_aliased_to_each_other_in_one_batch_become_one_customer(
    settings: Settings,
    redis_client: redis.Redis,
    api: ServerThread,
    credentials: dict[str, str],
):
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    with running_pipeline(settings):
        start = time.time_ns() // 1_000_000 - 60_000
        batch = [
            *shop({"userId": "cy-x"}, start, "x"),
            message(
                "track",
                start + 500,
                "y-v",
                event="Product Viewed",
                userId="cy-y",
                properties={"product_id": "q"},
            ),
            message("alias", start + 6000, "xy", userId="cy-y", previousId="cy-x"),
            message("alias", start + 6000, "yx", userId="cy-x", previousId="cy-y"),
        ]
        answer = httpx.post(
            f"{api.url}/v1/batch", json={"batch": batch}, auth=(credentials["write_key"], "")
        )
        assert answer.json()["accepted"] == len(batch), answer.text

        profile = functools.partial(profile_of, api, admin)

        def status() -> dict[str, Any]:
            return cast(dict[str, Any], httpx.get(f"{api.url}/api/status", headers=admin).json())

        wait_for(lambda: status()["lag"] == 0, what="every entry, relayed ones too, processed")
        found = {c: profile(c) for c in ("cy-x", "cy-y")}
        kept = [c for c, p in found.items() if p is not None]
        assert kept == ["cy-x"]  # the cycle's least id holds both histories, none is lost
        owner = found["cy-x"]
        assert owner is not None
        assert owner["features"]["events_total"] == 7
        assert len(owner["events"]) == 7  # both ids' recent events, in one list
        members = httpx.get(f"{api.url}/api/segments/browsing-enthusiasts/members", headers=admin)
        assert members.json()["items"] == ["cy-x"]
        later = message("track", start + 9000, "y-later", event="Product Viewed", userId="cy-y",
                        properties={"product_id": "r"})  # fmt: skip
        httpx.post(
            f"{api.url}/v1/batch", json={"batch": [later]}, auth=(credentials["write_key"], "")
        )

        def counted() -> bool:
            found = profile("cy-x")
            return bool(found and found["features"]["events_total"] == 8)

        wait_for(counted, what="a later event for cy-y counted at cy-x")
        wait_for(lambda: status()["lag"] == 0, what="the forwarded event processed")


@pytest.mark.backend_independent
def test_an_entry_the_flow_cannot_apply_is_set_aside_and_the_flow_goes_on(
    settings: Settings,
    redis_client: redis.Redis,
    api: ServerThread,
    credentials: dict[str, str],
    pipeline: subprocess.Popen[bytes],
):
    """Whoever can write the streams cannot run code in the dataflow (an absorb entry's state
    is unpickled only as a customer's state), nor stop it: the entry that raised goes to failed
    events as ``unprocessable`` and the flow goes on with the entries after it (before, it
    stopped, and stopped again on the same entry when restarted)."""

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    partition = partition_of("victim", settings.partitions)
    bystander = next(  # after it in the same partition, so read after it
        f"bystander-{n}"
        for n in range(1000)
        if partition_of(f"bystander-{n}", settings.partitions) == partition
    )
    now = time.time_ns() // 1_000_000
    evil = {
        "type": ABSORB,
        "customer_id": "victim",
        "from": "anon-victim",
        "timestamp": now,
        "message_id": "evil",
        "state": base64.b64encode(pickle.dumps(Evil())).decode(),
    }
    redis_client.xadd(stream_key(partition), {EVENT_FIELD: json.dumps(evil)})
    view = message("track", now, "b-v", event="Product Viewed", userId=bystander,
                   properties={"product_id": "p1"})  # fmt: skip
    answer = httpx.post(
        f"{api.url}/v1/batch", json={"batch": [view]}, auth=(credentials["write_key"], "")
    )
    assert answer.json()["accepted"] == 1, answer.text
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    wait_for(
        lambda: profile_of(api, admin, bystander) is not None,
        timeout_s=120,
        what="the event after the bad entry applied",
    )
    assert pipeline.poll() is None  # the flow did not stop
    failed = httpx.get(f"{api.url}/api/failed-events", headers=admin).json()["items"]
    refused = [item for item in failed if item["reason"] == "unprocessable"]
    assert [json.loads(item["raw"])["message_id"] for item in refused] == ["evil"]
    assert "UnpicklingError" in refused[0]["detail"]
    assert "builtins.print" in refused[0]["detail"]
