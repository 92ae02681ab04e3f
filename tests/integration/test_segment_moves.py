"""A segment's recent moves, written by the real dataflow's sink: who entered and left it,
newest first, and how many in the last hour and day, exact; the same output written again
changes nothing; the sets stay within their bounds; an erased customer leaves none behind."""

from __future__ import annotations

import time
from typing import Any, cast

import httpx
import pytest
import redis

from app.clustering.model import membership
from app.clustering.store import MOVES_KEY
from app.profiles import moves
from app.profiles.keys import MOVES_INDEX_KEY, moves_key, transitions_key
from app.settings import Settings
from pipelines.records import ProfileUpdate, Transition
from pipelines.sinks import ProfileSink
from tests.factories import track_at as track
from tests.helpers import ServerThread, run_dataflow

MINUTE = 60_000
HOUR = 60 * MINUTE


def get(api: ServerThread, token: str, path: str) -> dict[str, Any]:
    answer = httpx.get(f"{api.url}{path}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return cast(dict[str, Any], answer.json())


def shop(now: int) -> list[dict[str, Any]]:
    """Customers who enter and leave cart-abandoners and browsing-enthusiasts at instants
    before ``now``: some in the last hour, some in the last day, some before."""
    return [
        # ada: in at -70 min, out at -50 (another add), in again at -20
        track("ada", "Product Added", now - 100 * MINUTE, product_id="p1", price=20.0),
        track("ada", "Product Added", now - 50 * MINUTE, product_id="p2", price=15.0),
        # eve, fay and gus add at the same instant: in at -170 min, together
        *(
            track(who, "Product Added", now - 200 * MINUTE, product_id="p1", price=20.0)
            for who in ("eve", "fay", "gus")
        ),
        # cy: five views, in browsing-enthusiasts at -26 min, out at -20
        *(
            track("cy", "Product Viewed", now - (30 - n) * MINUTE, product_id=f"p{n}")
            for n in range(5)
        ),
        # dan did the same 26 hours ago: listed, in neither count
        *(
            track("dan", "Product Viewed", now - 26 * HOUR + n * MINUTE, product_id=f"p{n}")
            for n in range(5)
        ),
    ]


def send(api: ServerThread, credentials: dict[str, str], batch: list[dict[str, Any]]) -> None:
    answer = httpx.post(
        f"{api.url}/v1/batch", json={"batch": batch}, auth=(credentials["write_key"], "")
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == len(batch)


def walk(api: ServerThread, token: str, segment: str, limit: int) -> list[dict[str, Any]]:
    """Every move of the segment, following the cursor ``limit`` at a time."""
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = get(api, token, f"/api/segments/{segment}/transitions?limit={limit}{cursor}")
        assert len(page["items"]) <= limit
        found += page["items"]
        assert len(found) < 100, "the pages go round"
        if page["next_cursor"] is None:
            return found
        cursor = f"&cursor={page['next_cursor']}"


def test_moves_are_listed_newest_first_and_counted_exactly_and_written_once(
    settings: Settings,
    redis_client: redis.Redis,
    api: ServerThread,
    credentials: dict[str, str],
):
    now = time.time_ns() // 1_000_000
    send(api, credentials, shop(now))
    run_dataflow(settings)
    token = credentials["admin_token"]

    def listed(segment: str) -> list[tuple[str, str, int]]:
        items = get(api, token, f"/api/segments/{segment}/transitions")["items"]
        assert {item["rule_version"] for item in items} == {1}
        return [(item["customer_id"], item["kind"], item["at"] - now) for item in items]

    carts = [
        ("ada", "enter", -20 * MINUTE),
        ("ada", "exit", -50 * MINUTE),
        ("ada", "enter", -70 * MINUTE),
        ("gus", "enter", -170 * MINUTE),  # a tie: in a fixed order
        ("fay", "enter", -170 * MINUTE),
        ("eve", "enter", -170 * MINUTE),
    ]
    browsing = [
        ("cy", "exit", -20 * MINUTE),
        ("cy", "enter", -26 * MINUTE),
        ("dan", "exit", -26 * HOUR + 10 * MINUTE),
        ("dan", "enter", -26 * HOUR + 4 * MINUTE),
    ]
    assert listed("cart-abandoners") == carts
    assert listed("browsing-enthusiasts") == browsing
    for limit in (1, 2, 3):  # pages split the tie too, and lose or repeat nothing
        assert walk(api, token, "cart-abandoners", limit) == walk(api, token, "cart-abandoners", 50)

    def counts() -> dict[str, dict[str, int]]:
        fields = ("size", "entered_1h", "exited_1h", "entered_24h", "exited_24h")
        return {
            item["id"]: {name: item[name] for name in fields}
            for item in get(api, token, "/api/segments")["items"]
        }

    expected = {
        "cart-abandoners": {
            "size": 4,
            "entered_1h": 1,
            "exited_1h": 1,
            "entered_24h": 5,
            "exited_24h": 1,
        },
        "browsing-enthusiasts": {
            "size": 0,
            "entered_1h": 1,
            "exited_1h": 1,
            "entered_24h": 1,
            "exited_24h": 1,
        },
    }
    assert {k: v for k, v in counts().items() if k in expected} == expected
    assert all(v == dict.fromkeys(v, 0) for k, v in counts().items() if k not in expected), (
        "no other segment moved"
    )

    # The dataflow again over the same streams (as recovery replays its output): nothing doubles.
    sets = [moves_key(s, k) for s in expected for k in moves.KINDS]
    before = {key: redis_client.zrange(key, 0, -1, withscores=True) for key in sets}
    run_dataflow(settings)
    assert {key: redis_client.zrange(key, 0, -1, withscores=True) for key in sets} == before
    assert listed("cart-abandoners") == carts
    assert {k: v for k, v in counts().items() if k in expected} == expected

    # An erased customer's moves go at once; everyone else's stay.
    admin = {"Authorization": f"Bearer {token}"}
    assert httpx.delete(f"{api.url}/api/customers/ada", headers=admin).status_code == 200
    assert listed("cart-abandoners") == carts[3:]


def test_a_page_and_its_cursor_are_checked(api: ServerThread, credentials: dict[str, str]):
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    unknown = httpx.get(f"{api.url}/api/segments/no-such/transitions", headers=admin)
    assert unknown.status_code == 404
    for cursor in ("abc", "9" * 25, "12-", "-3"):
        answer = httpx.get(
            f"{api.url}/api/segments/cart-abandoners/transitions?cursor={cursor}", headers=admin
        )
        assert answer.status_code == 422, (cursor, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["query", "cursor"]
    empty = httpx.get(f"{api.url}/api/segments/cart-abandoners/transitions", headers=admin)
    assert empty.json() == {"items": [], "next_cursor": None}


def update(customer: str, *transitions: Transition) -> ProfileUpdate:
    return ProfileUpdate(
        customer_id=customer, at=0, features={}, traits={}, transitions=transitions
    )


def enter(at: int, segment: str = "loyal") -> Transition:
    return Transition(segment=segment, kind="enter", at=at, rule_version=2)


def write(settings: Settings, *batches: list[Any]) -> None:
    partition = ProfileSink(settings.redis_url or "").build("profiles", 1, 2)  # no finisher
    try:
        for items in batches:
            partition.write_batch(items)
    finally:
        partition.close()


def test_the_sets_are_trimmed_as_written_to_two_days_and_a_count(
    settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
):
    day = 24 * HOUR
    t = 10 * day
    old = [update(f"old{n}", enter(t - 3 * day + n)) for n in range(3)]
    write(settings, old)
    assert redis_client.zcard(moves_key("loyal", "enter")) == 3
    assert redis_client.smembers(MOVES_INDEX_KEY) == {b"loyal"}
    # two days of event time before the newest written are kept: the old ones go
    write(settings, [update("new", enter(t))])
    assert redis_client.zrange(moves_key("loyal", "enter"), 0, -1) == [f"{t}:2:new".encode()]
    # and at most KEPT of them, the newest
    monkeypatch.setattr(moves, "KEPT", 3)
    recent = [update(f"c{n}", enter(t + n)) for n in range(1, 6)]
    write(settings, recent, recent)  # the same updates twice: the same members
    kept = redis_client.zrange(moves_key("loyal", "enter"), 0, -1)
    assert kept == [f"{t + n}:2:c{n}".encode() for n in (3, 4, 5)]


def test_a_clusters_moves_are_not_kept_with_the_segments(
    settings: Settings, redis_client: redis.Redis
):
    """A customer entering a segment and moving between clusters in one record: the segment's
    move is kept; the cluster pseudo-segments' are not (turnover counts the move), though the
    customer's own list holds all three transitions."""
    c1, c2 = membership("c1"), membership("c2")
    record = ProfileUpdate(
        customer_id="ada",
        at=5_000,
        features={},
        traits={},
        segments=frozenset({"loyal", c2}),
        transitions=(
            enter(4_000),
            Transition(segment=c1, kind="exit", at=5_000, rule_version=1),
            Transition(segment=c2, kind="enter", at=5_000, rule_version=1),
        ),
    )
    write(settings, [record])
    assert redis_client.zrange(moves_key("loyal", "enter"), 0, -1) == [b"4000:2:ada"]
    assert redis_client.smembers(MOVES_INDEX_KEY) == {b"loyal"}
    for cluster in (c1, c2):
        for kind in moves.KINDS:
            assert not redis_client.exists(moves_key(cluster, kind))
    assert redis_client.zrange(MOVES_KEY, 0, -1, withscores=True) == [(b"ada", 5_000)]
    assert redis_client.zcard(transitions_key("ada")) == 3
    listed = cast(list[bytes], redis_client.zrange(transitions_key("ada"), 0, -1))
    assert moves.moves_of("ada", listed) == {moves_key("loyal", "enter"): ["4000:2:ada"]}


def test_a_retraction_and_an_erasure_remove_exactly_their_moves(
    settings: Settings, redis_client: redis.Redis
):
    """Through the sink's own records: a retracted transition leaves its segment's moves, and
    an erased customer's go (what their transitions list names), not a namesake's."""
    from pipelines.records import Correction, Erased

    first, second = enter(1_000), enter(2_000)
    write(
        settings,
        [update("ada", first), update("ada:x", first), update("x:ada", first)],
        [update("ada", second)],
    )
    key = moves_key("loyal", "enter")
    assert redis_client.zcard(key) == 4
    late = ProfileUpdate(
        customer_id="ada",
        at=1_500,
        features={},
        traits={},
        corrections=(Correction(message_id="m", at=1_500, retracted=(second,), added=()),),
    )
    write(settings, [late])
    assert redis_client.zrange(key, 0, -1) == [b"1000:2:ada", b"1000:2:ada:x", b"1000:2:x:ada"]
    write(settings, [Erased(customer_id="ada", segments=frozenset({"loyal"}))])
    assert redis_client.zrange(key, 0, -1) == [b"1000:2:ada:x", b"1000:2:x:ada"]


def test_the_sweep_after_an_erasure_finds_moves_the_list_no_longer_names(
    settings: Settings, redis_client: redis.Redis
):
    """A customer with more transitions than their list keeps: the erasure's sweep (when the
    dataflow has passed it) removes every move naming them, and only theirs."""
    import asyncio

    from app.redis_client import async_redis

    for segment in ("loyal", "odd*[seg]"):
        redis_client.sadd(MOVES_INDEX_KEY, segment)
        for kind in moves.KINDS:
            redis_client.zadd(
                moves_key(segment, kind),
                {f"{n}:1:{who}": n for n in range(3) for who in ("a*b", "xa*b", "q:a*b", "b")},
            )

    async def sweep(ids: set[str]) -> int:
        client = async_redis(settings.redis_url or "")
        try:
            return await moves.sweep(client, ids)
        finally:
            await client.aclose()

    assert asyncio.run(sweep({"a*b"})) == 2 * 2 * 3
    left = cast(list[bytes], redis_client.zrange(moves_key("odd*[seg]", "exit"), 0, -1))
    assert sorted({moves.parse(m)[2] for m in left}) == ["b", "q:a*b", "xa*b"]
    assert asyncio.run(sweep({"b", "xa*b"})) == 2 * 2 * 3 * 2
    assert redis_client.zcard(moves_key("loyal", "enter")) == 3  # q:a*b's
