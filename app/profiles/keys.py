"""Redis key names of profiles, transitions, segment memberships and moves. The customer id
is the hash tag of a customer's keys, so they share one Redis Cluster slot."""

from __future__ import annotations


def profile_key(customer_id: str) -> str:
    return f"profile:{{{customer_id}}}"


def recent_events_key(customer_id: str) -> str:
    return f"recent:{{{customer_id}}}"


def transitions_key(customer_id: str) -> str:
    return f"transitions:{{{customer_id}}}"


def corrections_key(customer_id: str) -> str:
    """What late events corrected in the customer's transitions (``pipelines.records``)."""
    return f"corrections:{{{customer_id}}}"


def members_key(segment: str) -> str:
    """The set of a segment's members (the segment id is the hash tag)."""
    return f"members:{{{segment}}}"


# A cluster's members are kept as the pseudo-segment ``cluster:<id>`` (``app.clustering.model``):
# in the members sets, a profile's segments and the transitions, next to the segments'.
CLUSTER_PREFIX = "cluster:"
CLUSTER_MOVES_KEY = "clusters:moves"  # customer id -> event time of their last cluster change


TRIGGERS_KEY = "triggers"  # stream of segment enter / exit actions, for the dispatcher


def trigger_marker_key(trigger_id: str) -> str:
    """Set once a trigger is in the stream (its slot is the stream's)."""
    return f"{{{TRIGGERS_KEY}}}:seen:{trigger_id}"


def trigger_id(customer_id: str, segment: str, kind: str, at: int, index: int) -> str:
    """A rule action's trigger: the transition it comes from and the action's place in the
    rule (the same transition always gives the same id; the webhook-id)."""
    return f"{customer_id}:{segment}:{kind}:{at}:{index}"


def retracted_key(trigger_id: str) -> str:
    """Set when a late event retracted the trigger's transition: not sent if still waiting."""
    return f"{{{TRIGGERS_KEY}}}:retracted:{trigger_id}"


def moves_key(segment: str, kind: str) -> str:
    """A segment's recent enters (``kind`` "enter") or exits ("exit"), a sorted set scored by
    each transition's event time (``app.profiles.moves``); the segment id is the hash tag."""
    return f"segment-moves:{{{segment}}}:{kind}"


# The segments that have moves (a set of ids): where an erasure looks for a customer's.
MOVES_INDEX_KEY = "segment-moves:segments"
