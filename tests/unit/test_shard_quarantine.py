"""An event the dataflow cannot apply, or a customer it cannot evaluate, stops only that
customer, not the shard (which, restarted, would fail on the same entry again): the event goes
to failed events, the customer back to their last snapshot's state. The fault is injected
(no input is known to make the shard raise: each one found was fixed), in the real shard."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

import pytest

from app.rules.active import shipped_compiled
from pipelines.features import CustomerFeatures
from pipelines.records import ProfileUpdate, Unprocessable
from pipelines.segmentation import QUARANTINED_MOST, FeatureShard, catalogue_for
from pipelines.sources import StreamEvent, Tick
from tests.factories import stored_event

RULES = shipped_compiled()
CATALOGUE = catalogue_for(RULES, 5 * 60_000)
T0 = 1_767_225_600_000
SECOND = 1_000


def view(customer: str, at: int, n: int, **props: Any) -> StreamEvent:
    entry = stored_event(
        message_id=f"m{n}", customer=customer, name="Product Viewed", at=at,
        properties={"product_id": f"p{n}", **props},
    )  # fmt: skip
    return StreamEvent(0, f"{n}-0", entry)  # type: ignore[arg-type]


def records(out: Iterable[Any]) -> dict[str, ProfileUpdate]:
    return {r.customer_id: r for r in out if isinstance(r, ProfileUpdate)}


def one_view_each(*customers: str, snapshot: bool = True) -> FeatureShard:
    """A shard that read one view of each customer at ``T0``; with ``snapshot``, then took a
    recovery snapshot (what a customer set aside goes back to)."""
    shard = FeatureShard(CATALOGUE, RULES, None)
    views = [view(customer, T0, n) for n, customer in enumerate(customers, 1)]
    shard.on_batch([*views, Tick(0, T0 + SECOND, True)])
    if snapshot:
        pickle.dumps(shard.snapshot())
    return shard


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A view with ``poison`` in its properties makes applying it raise; a customer whose
    state holds one with ``bomb`` makes evaluating them raise."""
    apply, read = CustomerFeatures.apply, CustomerFeatures.read

    def applying(self: CustomerFeatures, event: Any) -> str | None:
        if "poison" in (event.get("properties") or {}):
            raise ValueError("cannot apply this one")
        found = apply(self, event)
        if "bomb" in (event.get("properties") or {}):
            self.traits["bomb"] = True
        return found

    def reading(self: CustomerFeatures, now: int) -> Any:
        if self.traits.get("bomb"):
            raise ArithmeticError("cannot evaluate this one")
        return read(self, now)

    monkeypatch.setattr(CustomerFeatures, "apply", applying)
    monkeypatch.setattr(CustomerFeatures, "read", reading)


def test_an_event_that_cannot_be_applied_sets_its_customer_aside_and_the_shard_goes_on(
    poisoned: None,
) -> None:
    shard = one_view_each("ann", "bob")  # the snapshot: ann as of one view
    out, _ = shard.on_batch(
        [
            view("ann", T0 + 2 * SECOND, 3),
            view("ann", T0 + 3 * SECOND, 4, poison=True),
            view("bob", T0 + 3 * SECOND, 5),
            Tick(0, T0 + 4 * SECOND, True),
        ]
    )
    kept = [item for item in out if isinstance(item, Unprocessable)]
    assert [item.event["message_id"] for item in kept] == ["m4"]
    assert kept[0].detail == (
        "ValueError: cannot apply this one; the customer's state went back to their last snapshot's"
    )
    assert records(out)["bob"].features["count(Product Viewed, 10m)"] == 2
    # ann is back to her snapshot's state (her view before the poison is left out) and goes
    # on from there
    out, _ = shard.on_batch([view("ann", T0 + 5 * SECOND, 6), Tick(0, T0 + 6 * SECOND, True)])
    assert records(out)["ann"].features["count(Product Viewed, 10m)"] == 2


def test_a_customer_that_cannot_be_evaluated_keeps_the_events_that_waited_for_it(
    poisoned: None,
) -> None:
    shard = one_view_each("ann")
    bomb = view("ann", T0 + 2 * SECOND, 2, bomb=True)
    out, _ = shard.on_batch([bomb, view("bob", T0 + 2 * SECOND, 3), Tick(0, T0 + 3 * SECOND, True)])
    assert [item.event["message_id"] for item in out if isinstance(item, Unprocessable)] == ["m2"]
    assert set(records(out)) == {"bob"}
    # re-evaluated from her snapshot's state at the next read, and on from there
    out, _ = shard.on_batch([view("ann", T0 + 4 * SECOND, 4), Tick(0, T0 + 5 * SECOND, True)])
    assert records(out)["ann"].features["count(Product Viewed, 10m)"] == 2


def test_a_customer_new_since_the_snapshot_starts_afresh() -> None:
    shard = one_view_each("ann", snapshot=False)
    shard._quarantine("ann", ValueError("as if"))
    fresh = shard.state.customer("ann")
    assert fresh is not None
    assert fresh.events_total == 0
    out, _ = shard.on_batch([view("ann", T0 + 2 * SECOND, 2), Tick(0, T0 + 3 * SECOND, True)])
    assert records(out)["ann"].features["count(Product Viewed, 10m)"] == 1


def test_many_customers_failing_at_once_is_no_one_customers_doing_and_stops_the_shard(
    poisoned: None,
) -> None:
    shard = FeatureShard(CATALOGUE, RULES, None)
    poison = [view(f"c{n}", T0, n, poison=True) for n in range(QUARANTINED_MOST + 1)]
    with pytest.raises(RuntimeError, match="not one customer's events"):
        shard.on_batch([*poison, Tick(0, T0 + SECOND, True)])


def test_memory_running_out_is_raised_on() -> None:
    shard = FeatureShard(CATALOGUE, RULES, None)
    with pytest.raises(MemoryError):
        shard._quarantine("ann", MemoryError())


def test_a_customer_set_aside_keeps_the_segments_the_sink_wrote_so_none_is_left_or_entered_twice(
    poisoned: None,
) -> None:
    """Their state goes back to before they entered browsing-enthusiasts, which the sink
    wrote: the re-evaluation from it exits them (before, the exit was never written and a
    later enter came twice)."""
    shard = one_view_each("ann")  # the snapshot: one view, in no segment
    found: list[tuple[str, str]] = []

    def read(*items: Any) -> None:
        out, _ = shard.on_batch(list(items))
        found.extend(
            (t.segment, t.kind)
            for r in out
            if isinstance(r, ProfileUpdate) and r.customer_id == "ann"
            for t in r.transitions
        )

    read(*(view("ann", T0 + n * SECOND, n) for n in range(2, 6)), Tick(0, T0 + 6 * SECOND, True))
    assert found == [("browsing-enthusiasts", "enter")]
    read(view("ann", T0 + 7 * SECOND, 7, poison=True), Tick(0, T0 + 8 * SECOND, True))
    read(Tick(0, T0 + 9 * SECOND, True))  # re-evaluated from the snapshot's single view
    assert found == [("browsing-enthusiasts", "enter"), ("browsing-enthusiasts", "exit")]
    read(*(view("ann", T0 + n * SECOND, n) for n in range(10, 15)), Tick(0, T0 + 15 * SECOND, True))
    assert found[2:] == [("browsing-enthusiasts", "enter")]
