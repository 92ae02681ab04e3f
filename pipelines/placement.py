"""Where a shard's state lives: on the Bytewax worker that reads the shard's stream partition,
so an event never crosses between workers on its way to its customer's state.

How Bytewax 0.21.1 places work (observed, and checked against real runs by
``tests/integration/test_placement.py``), with W workers over all processes:

- source partitions: the i-th partition name in sorted order (``"events:{10}"`` sorts before
  ``"events:{1}"``) is read by worker ``i mod W``;
- state keys: a key goes to worker ``SipHash-1-3(UTF-8 of the key, then byte 0xff) mod W``
  (Rust's ``DefaultHasher``, zero keys, on a ``String``).

A shard's key is ``"shard-<salt>"``: the salts whose key hashes to each residue modulo
``ALIGNED_MODULUS`` are found once per process (one vectorized pass over ~10^5 candidates),
and a partition's shards take the first ones congruent to the partition's rank. For every W
dividing the modulus (1-10, 12, 14, 15, 16, 18, 20, 21, 24, 28, 30, ...) a shard is then on
its partition's worker, whatever the number of workers per process; other worker counts still
compute the same (events then cross between workers). The keys depend on nothing but the
partition, the shard and the number of partitions, so they are the same in every process,
machine and restart (Python's ``hash()`` is not).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from app.streams import stream_key

SHARDS_PER_PARTITION = 16
ALIGNED_MODULUS = 5040  # 7!: divisible by every worker count up to 10, and 12, 14, 16, ...
# The recovery store says which shard keys it holds: one of another layout (or another number of
# partitions) is set aside at start, never mixed with this one (``settle_recovery_store``).
LAYOUT_FILE = "segflow-layout"
LAYOUT = "partition-aligned shard keys v1"
_U64 = np.uint64


def partition_rank(partition: int, partitions: int) -> int:
    """The place of the partition's stream name among all of them, sorted as Bytewax sorts
    source partitions (by the bytes of their names)."""
    names = sorted(stream_key(p).encode() for p in range(partitions))
    return names.index(stream_key(partition).encode())


def worker_of_partition(partition: int, partitions: int, workers: int) -> int:
    """The worker (of ``workers`` over all processes) that reads the partition."""
    return partition_rank(partition, partitions) % workers


def worker_of_key(key: str, workers: int) -> int:
    """The worker Bytewax hands the state key to."""
    data = np.frombuffer(key.encode() + b"\xff", dtype=np.uint8)[None, :]
    return int(_siphash13(data)[0] % _U64(workers))


@functools.cache
def shard_keys(partition: int, partitions: int) -> tuple[str, ...]:
    """The keys of the partition's shards, each on the partition's worker (see above)."""
    rank = partition_rank(partition, partitions)
    lap, residue = divmod(rank, ALIGNED_MODULUS)  # ranks a modulus apart take the next salts
    salts = _salts_of(residue, (lap + 1) * SHARDS_PER_PARTITION)[lap * SHARDS_PER_PARTITION :]
    return tuple(f"{KEY_PREFIX}{salt:0{_SALT_DIGITS}d}" for salt in salts)


KEY_PREFIX = "shard-"
_SALT_DIGITS = 7
_CHUNK = 1 << 16  # salts hashed per pass
_residues: list[np.ndarray] = []  # per chunk of salts, each one's key hash mod the modulus


def _salts_of(residue: int, count: int) -> list[int]:
    """The first ``count`` salts whose key hashes to ``residue`` modulo the modulus."""
    found: list[int] = []
    chunk = 0
    while len(found) < count:
        if chunk == len(_residues):
            if (chunk + 1) * _CHUNK > 10**_SALT_DIGITS:
                raise ValueError(f"too few salts for residue {residue}")  # odds: none
            _residues.append(_key_residues(chunk * _CHUNK))
        hits = np.flatnonzero(_residues[chunk] == residue)
        found += (hits + chunk * _CHUNK).tolist()
        chunk += 1
    return found[:count]


def _key_residues(start: int) -> np.ndarray:
    """For salts ``start`` .. ``start + _CHUNK - 1``: their keys' hashes mod the modulus."""
    head = np.frombuffer(KEY_PREFIX.encode(), dtype=np.uint8)
    salts = np.arange(start, start + _CHUNK, dtype=np.int64)
    powers = 10 ** np.arange(_SALT_DIGITS - 1, -1, -1, dtype=np.int64)
    data = np.empty((_CHUNK, head.size + _SALT_DIGITS + 1), dtype=np.uint8)
    data[:, : head.size] = head
    data[:, head.size : -1] = salts[:, None] // powers % 10 + ord("0")
    data[:, -1] = 0xFF  # what Rust's Hash of a str writes after its bytes
    return (_siphash13(data) % _U64(ALIGNED_MODULUS)).astype(np.int32)


def _siphash13(data: np.ndarray) -> np.ndarray:
    """SipHash-1-3 with a zero key of each row of ``data`` (uint8, rows of one length),
    vectorized: the key search hashes thousands of candidates at once."""
    rows, length = data.shape
    full = length // 8
    words = np.ascontiguousarray(data[:, : full * 8]).view("<u8").astype(_U64)
    last = np.full(rows, _U64((length & 0xFF) << 56), dtype=_U64)
    for index in range(length - full * 8):
        last |= data[:, full * 8 + index].astype(_U64) << _U64(8 * index)
    v0 = np.full(rows, _U64(0x736F6D6570736575), dtype=_U64)
    v1 = np.full(rows, _U64(0x646F72616E646F6D), dtype=_U64)
    v2 = np.full(rows, _U64(0x6C7967656E657261), dtype=_U64)
    v3 = np.full(rows, _U64(0x7465646279746573), dtype=_U64)

    def rotl(x: np.ndarray, bits: int) -> np.ndarray:
        return (x << _U64(bits)) | (x >> _U64(64 - bits))

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 += v1
        v1 = rotl(v1, 13) ^ v0
        v0 = rotl(v0, 32)
        v2 += v3
        v3 = rotl(v3, 16) ^ v2
        v0 += v3
        v3 = rotl(v3, 21) ^ v0
        v2 += v1
        v1 = rotl(v1, 17) ^ v2
        v2 = rotl(v2, 32)

    for column in range(full):
        word = words[:, column]
        v3 ^= word
        sip_round()
        v0 ^= word
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= _U64(0xFF)
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def layout_of(partitions: int) -> str:
    """What a recovery store of this flow holds: the shard key layout and the partitions."""
    return f"{LAYOUT}, {partitions} partitions\n"


def settle_recovery_store(directory: Path, partitions: int, stamp: str) -> Path | None:
    """Set aside (``<directory>.old-<stamp>``, as `segflow rebuild` does) a recovery store
    whose shard keys are not this flow's: one from before the keys were partition-aligned
    (no layout file) or for another number of partitions. Its state, under other keys, would
    lie beside the new state and never be read again. Returns where it went (None: kept, or
    no store)."""
    if not directory.exists():
        return None
    marker = directory / LAYOUT_FILE
    if marker.exists() and marker.read_text() == layout_of(partitions):
        return None
    aside = directory.with_name(f"{directory.name}.old-{stamp}")
    directory.rename(aside)
    return aside


def mark_recovery_store(directory: Path, partitions: int) -> None:
    """Record in a new recovery store which shard keys it holds."""
    (directory / LAYOUT_FILE).write_text(layout_of(partitions))
