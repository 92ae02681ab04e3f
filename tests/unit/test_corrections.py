"""Late events on the live path: each is replayed in its place from the customer's saved
history, and the transitions already written are corrected (``pipelines.rewind``).

The shard is fed as the live path feeds it: events in the order they arrive (each up to the
allowed lateness after its instant), the live clock (the wall clock) moving with arrivals and
firing deadlines before late events come. The transitions written, with every correction
applied, must be the oracle's: what the contract's words give for the events in time order."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.rules.active import RuleSet, shipped_compiled
from pipelines.records import ProfileUpdate
from pipelines.rewind import EVENTS_CAP
from pipelines.segmentation import REWIND_MIN_MS, FeatureShard, catalogue_for
from pipelines.sources import StreamEvent, Tick
from tests.factories import stored_event
from tests.oracle import AmbiguousInstant, Change, oracle_transitions
from tests.personas import iso

LATENESS = 5 * 60_000
RULES = shipped_compiled()
CATALOGUE = catalogue_for(RULES, LATENESS)
T0 = 1_767_225_600_000
SECOND = 1_000
MINUTE = 60 * SECOND
DAY = 24 * 60 * MINUTE

Sent = tuple[str, str, int, dict[str, Any]]  # customer, event name, instant, properties


def message(n: int, sent: Sent) -> dict[str, Any]:
    customer, name, at, properties = sent
    return {"type": "track", "userId": customer, "event": name, "timestamp": iso(at),
            "properties": properties, "messageId": f"{customer}-{n}"}  # fmt: skip


def entry(n: int, sent: Sent) -> StreamEvent:
    customer, name, at, properties = sent
    stored = stored_event(message_id=f"{customer}-{n}", customer=customer, name=name, at=at,
                          properties=properties)  # fmt: skip
    return StreamEvent(0, f"{n}-0", stored)  # type: ignore[arg-type]


def written(out: Iterable[Any]) -> dict[str, list[Change]]:
    """The transitions as the sink leaves them: added, and removed when retracted."""
    kept: dict[str, list[Change]] = {}
    for update in out:
        if not isinstance(update, ProfileUpdate):
            continue
        history = kept.setdefault(update.customer_id, [])
        for correction in update.corrections:
            for t in correction.retracted:
                change = (update.customer_id, t.segment, t.kind, t.at)
                if change in history:  # else emitted and retracted in one batch: never written
                    history.remove(change)
        history += [(update.customer_id, t.segment, t.kind, t.at) for t in update.transitions]
    return {
        customer: sorted(changes, key=lambda c: (c[3], c[2] != "exit", c[1]))
        for customer, changes in kept.items()
        if changes
    }


def run_live(
    arrivals: list[tuple[int, int, Sent]], end: int, read_ms: int = 1, snapshots: bool = False
) -> list[Any]:
    """Feed ``(arrival, n, sent)`` in arrival order, what arrives within ``read_ms`` in one
    read, the live clock moving to the last arrival after each read (it fires deadlines up to
    there), then the clock far past everything. With ``snapshots``, the state is snapshotted
    after each read, as Bytewax does at each epoch (saved states then reuse the snapshot's)."""
    shard = FeatureShard(CATALOGUE, RULES, None)
    out: list[Any] = []
    ordered = sorted(arrivals, key=lambda a: (a[0], a[1]))
    for _, read in itertools.groupby(ordered, key=lambda a: a[0] // read_ms):
        items = list(read)
        batch, _ = shard.on_batch(
            [*(entry(n, sent) for _, n, sent in items), Tick(0, items[-1][0], inclusive=False)]
        )
        out += batch
        if snapshots:
            shard.state.freeze()
    batch, _ = shard.on_batch([Tick(0, end, inclusive=True)])
    return out + list(batch)


EVENTS = st.sampled_from(
    [
        ("Product Viewed", {"product_id": "p1"}),
        ("Product Viewed", {"product_id": "p2"}),
        ("Product Added", {"product_id": "p1", "price": 20}),
        ("Product Added", {"product_id": "p2", "price": 150}),
        ("Product Removed", {"product_id": "p1"}),
        ("Checkout Started", {}),
        ("Order Completed", {"revenue": 20}),
    ]
)


# (customer, (event, properties), instant after T0, how long after its instant it arrives)
Step = tuple[str, tuple[str, dict[str, Any]], int, int]
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["ada", "bob", "cy"]),
        EVENTS,
        st.integers(0, 90).map(lambda m: m * MINUTE // 2),  # on the half minute
        st.integers(0, LATENESS - 1),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS, st.sampled_from([1, 20 * SECOND, 2 * MINUTE]), st.booleans())
def test_late_events_within_the_lateness_give_the_oracles_transitions(
    steps: list[Step], read_ms: int, snapshots: bool
) -> None:
    sent = [(customer, name, T0 + at, props) for customer, (name, props), at, _ in steps]
    messages = [message(n, s) for n, s in enumerate(sent)]
    try:
        expected = oracle_transitions(messages)
    except AmbiguousInstant:
        assume(False)
    arrivals = [(T0 + at + delay, n, sent[n]) for n, (_, _, at, delay) in enumerate(steps)]
    out = run_live(arrivals, T0 + 400 * DAY, read_ms, snapshots)
    assert written(out) == expected


def test_two_late_events_after_a_fired_deadline_are_both_replayed_in_their_place() -> None:
    """Bob's history is let go while he is quiet (the live clock moves with Ada's view), and
    his cart deadline fires at 30:00. Two views dated 29:00 and 27:30 then arrive in one read,
    the later one first: the first starts his history again, so the second is replayed with
    it from there instead of counting as of 29:00 (an exit at 29:00, an enter again at
    30:00)."""
    add: Sent = ("bob", "Product Added", T0, {"product_id": "p1", "price": 20})
    ada: Sent = ("ada", "Product Viewed", T0 + 30 * MINUTE, {"product_id": "p1"})
    view: Sent = ("bob", "Product Viewed", T0 + 29 * MINUTE, {"product_id": "p1"})
    earlier: Sent = ("bob", "Product Viewed", T0 + 27 * MINUTE + 30 * SECOND, {"product_id": "p1"})
    sent = [ada, view, add, earlier]
    late = T0 + 30 * MINUTE + 2
    arrivals = [(T0 + 30 * MINUTE + 1, 0, ada), (late, 1, view), (T0, 2, add), (late, 3, earlier)]
    out = run_live(arrivals, T0 + 400 * DAY)
    expected = oracle_transitions([message(n, s) for n, s in enumerate(sent)])
    assert expected["bob"] == [("bob", "cart-abandoners", "enter", T0 + 30 * MINUTE)]
    assert written(out)["bob"] == expected["bob"]
    bobs = [u for u in out if isinstance(u, ProfileUpdate) and u.customer_id == "bob"]
    # never an exit at 29:00 (the 27:30 view counted as of the 29:00 one) to take back later
    assert [(t.kind, t.at) for u in bobs for t in u.transitions] == [("enter", T0 + 30 * MINUTE)]


def test_a_late_view_enters_at_its_own_instant_and_the_early_exit_is_retracted():
    views = [("ada", "Product Viewed", T0 + m * MINUTE, {"product_id": f"p{m}"}) for m in range(5)]
    late = ("ada", "Product Viewed", T0 + 9 * MINUTE + 30 * SECOND, {"product_id": "p5"})
    arrivals = [(s[2], n, s) for n, s in enumerate(views)]
    # the clock passes 10 min (the first view leaves: exit) before the 9m30s view arrives
    arrivals.append((T0 + 10 * MINUTE + SECOND, 5, late))
    arrivals.insert(
        5, (T0 + 10 * MINUTE + 500, 99, ("bob", "Product Viewed", T0, {"product_id": "x"}))
    )
    out = run_live(arrivals, T0 + DAY)
    updates = [u for u in out if isinstance(u, ProfileUpdate) and u.customer_id == "ada"]
    corrections = [c for u in updates for c in u.corrections]
    assert len(corrections) == 1
    (correction,) = corrections
    assert [(t.kind, t.at) for t in correction.retracted] == [("exit", T0 + 10 * MINUTE)]
    assert correction.added == ()
    assert correction.message_id == "ada-5"
    assert written(out)["ada"] == [
        ("ada", "browsing-enthusiasts", "enter", T0 + 4 * MINUTE),
        ("ada", "browsing-enthusiasts", "exit", T0 + 11 * MINUTE),
    ]


def test_an_order_arriving_after_the_cart_reminder_retracts_it():
    add: Sent = ("ada", "Product Added", T0, {"product_id": "p1", "price": 20})
    order: Sent = ("ada", "Order Completed", T0 + 29 * MINUTE, {"revenue": 20})
    # the order, sent at 29 min, arrives 2 min late: the 30-min reminder has fired by then (the
    # live clock passed 30 min with a read of another customer's event)
    bob: Sent = ("bob", "Product Viewed", T0 + 30 * MINUTE, {"product_id": "p1"})
    arrivals = [(T0, 0, add), (T0 + 30 * MINUTE + SECOND, 2, bob), (T0 + 31 * MINUTE, 1, order)]
    out = run_live(arrivals, T0 + DAY)
    enter = ("ada", "cart-abandoners", "enter", T0 + 30 * MINUTE)
    fired = [
        (u.customer_id, t.segment, t.kind, t.at)
        for u in out
        if isinstance(u, ProfileUpdate)
        for t in u.transitions
    ]
    assert enter in fired
    (correction,) = [c for u in out if isinstance(u, ProfileUpdate) for c in u.corrections]
    assert [(t.segment, t.kind, t.at) for t in correction.retracted] == [enter[1:]]
    assert correction.retracted[0].actions  # the reminder's send, which the dispatcher skips
    assert all(change[1] != "cart-abandoners" for change in written(out).get("ada", []))


def test_a_saved_state_is_the_snapshots_only_while_the_customer_is_unchanged_since() -> None:
    """Saved states reuse the last snapshot's serialized customer when it is current. Here
    the snapshot is taken after the first view; the state saved before the 6:10 view is the
    one after the 6:00 view, which that snapshot does not hold. The late 11:00 view makes five
    in ten minutes at 12:00 only when counted with the 6:00 one."""
    at = [0, 6 * MINUTE, 6 * MINUTE + 10 * SECOND, 6 * MINUTE + 20 * SECOND, 12 * MINUTE]
    sent = [("ada", "Product Viewed", T0 + t, {"product_id": "p1"}) for t in [*at, 11 * MINUTE]]
    shard = FeatureShard(CATALOGUE, RULES, None)
    first, _ = shard.on_batch([entry(0, sent[0]), Tick(0, T0, inclusive=False)])
    out = list(first)
    shard.state.freeze()
    reads: list[list[StreamEvent | Tick]] = [
        [*(entry(n, sent[n]) for n in range(1, 5)), Tick(0, T0 + 12 * MINUTE, inclusive=False)],
        [entry(5, sent[5]), Tick(0, T0 + 13 * MINUTE, inclusive=False)],
        [Tick(0, T0 + 400 * DAY, inclusive=True)],
    ]
    for read in reads:
        batch, _ = shard.on_batch(read)
        out += batch
    expected = oracle_transitions([message(n, s) for n, s in enumerate(sent)])
    assert ("ada", "browsing-enthusiasts", "enter", T0 + 12 * MINUTE) in expected["ada"]
    assert written(out) == expected


def test_a_late_add_after_a_quiet_spell_retracts_the_reminder_its_deadline_gave() -> None:
    """Bob is quiet for half an hour: his history is let go (the live clock moves with Ada's
    view), and his cart deadline fires at 31:00 before his view at 31:30 applies. An add dated
    31:00 comes after the view: the state saved before the view is evaluated through 31:00,
    so the replay steps back from it to just before the add."""
    sent: list[Sent] = [
        ("bob", "Product Added", T0 + MINUTE, {"product_id": "p1", "price": 20}),
        ("ada", "Product Viewed", T0 + 10 * MINUTE, {"product_id": "p1"}),
        ("bob", "Product Viewed", T0 + 31 * MINUTE + 30 * SECOND, {"product_id": "p1"}),
        ("bob", "Product Added", T0 + 31 * MINUTE, {"product_id": "p1", "price": 20}),
    ]
    arrivals = [(max(s[2] for s in sent[: n + 1]), n, s) for n, s in enumerate(sent)]
    out = run_live(arrivals, T0 + 400 * DAY)
    corrections = [c for u in out if isinstance(u, ProfileUpdate) for c in u.corrections]
    assert [(t.segment, t.kind, t.at) for c in corrections for t in c.retracted] == [
        ("cart-abandoners", "enter", T0 + 31 * MINUTE)
    ]
    expected = oracle_transitions([message(n, s) for n, s in enumerate(sent)])
    assert written(out)["bob"] == expected["bob"]
    assert expected["bob"] == [("bob", "cart-abandoners", "enter", T0 + 61 * MINUTE)]


def test_history_is_kept_bounded_and_let_go_after_the_retention():
    shard = FeatureShard(CATALOGUE, RULES, None)
    sent = [("ada", "Product Viewed", T0 + n * SECOND, {"product_id": "p1"}) for n in range(2_000)]
    for n, s in enumerate(sent):
        shard.on_batch([entry(n, s), Tick(0, s[2], inclusive=False)])
    rewind = shard.state.rewinds.get("ada")
    assert rewind is not None
    assert len(rewind.events) <= EVENTS_CAP
    assert 1 <= len(rewind.anchors) <= 2 + 2_000 * SECOND // REWIND_MIN_MS
    # the live clock passes the retention with no event of hers: the history goes
    shard.on_batch([Tick(0, sent[-1][2] + max(LATENESS, REWIND_MIN_MS) + 1, inclusive=False)])
    assert shard.state.rewinds.get("ada") is None


def test_an_event_older_than_every_saved_state_counts_from_the_newest_instant():
    """No saved state before it (history let go): the event is not lost, it counts as of the
    customer's newest instant, as before corrections existed."""
    shard = FeatureShard(CATALOGUE, RULES, None)
    first = ("ada", "Product Viewed", T0, {"product_id": "p1"})
    shard.on_batch([entry(0, first), Tick(0, T0, inclusive=False)])
    assert shard.state.rewinds.get("ada") is not None
    shard.on_batch([Tick(0, T0 + LATENESS + REWIND_MIN_MS, inclusive=False)])
    assert shard.state.rewinds.get("ada") is None
    late = ("ada", "Product Viewed", T0 - MINUTE, {"product_id": "p2"})
    out, _ = shard.on_batch([entry(1, late), Tick(0, T0 + 2 * LATENESS, inclusive=False)])
    updates = [u for u in out if isinstance(u, ProfileUpdate)]
    assert updates
    assert all(not u.corrections for u in updates)
    customer = shard.state.customer("ada")
    assert customer is not None
    assert customer.events_total == 2


def test_a_new_rule_set_lets_go_of_saved_history() -> None:
    """Saved states were evaluated under the rules before: a late event after a rule change
    counts as of the newest instant instead of replaying under rules that did not hold then."""
    shard = FeatureShard(CATALOGUE, RULES, None)
    shard._follow(RuleSet(1, RULES))
    shard.on_batch([entry(0, ("ada", "Product Viewed", T0, {})), Tick(0, T0, inclusive=False)])
    assert shard.state.rewinds.get("ada") is not None
    shard._follow(RuleSet(2, RULES))
    assert shard.state.rewinds.get("ada") is None
