"""Redis key names of a customer's profile. The customer id is the hash tag, so a customer's
keys share one Redis Cluster slot and can be read or erased together."""

from __future__ import annotations


def profile_key(customer_id: str) -> str:
    return f"profile:{{{customer_id}}}"


def recent_events_key(customer_id: str) -> str:
    return f"recent:{{{customer_id}}}"
