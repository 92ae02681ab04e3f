"""The sink's packed pipeline against a real Redis: replies read a batch later, many more than
one socket read holds; an error reply raised (at the next send or flush) and the pipeline
usable after it; a script Redis lost (a restart, ``SCRIPT FLUSH``) loaded again and its batch
sent again."""

from __future__ import annotations

import pytest
import redis

from pipelines.sinks import PackedPipeline
from tests.conftest import Services

_SCRIPT = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1"


def test_a_batch_larger_than_a_socket_read_is_written_and_its_replies_read(
    redis_client: redis.Redis,
):
    pipeline = PackedPipeline(redis_client)
    value = "v" * 200  # 20,000 commands: replies over many socket reads
    for n in range(20_000):
        pipeline.command("HSET", "packed:many", f"f{n}", value)
    pipeline.send()
    pipeline.command("HLEN", "packed:many")  # the next batch: the previous replies first
    pipeline.send()
    pipeline.flush()
    assert redis_client.hlen("packed:many") == 20_000
    # nothing left unread: the connection is usable as it was
    assert redis_client.ping()


def test_an_error_reply_is_raised_and_the_next_batch_is_written(redis_client: redis.Redis):
    redis_client.set("packed:string", "x")
    pipeline = PackedPipeline(redis_client)
    pipeline.command("HSET", "packed:fine", "f", "1")
    pipeline.command("HSET", "packed:string", "f", "1")  # WRONGTYPE
    pipeline.command("HSET", "packed:after", "f", "1")
    pipeline.send()
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        pipeline.flush()
    assert redis_client.hget("packed:fine", "f") == b"1"
    assert redis_client.hget("packed:after", "f") == b"1"  # Redis ran the rest
    pipeline.command("HSET", "packed:later", "f", "1")  # the pipeline goes on after it
    pipeline.send()
    pipeline.flush()
    assert redis_client.hget("packed:later", "f") == b"1"


def test_a_script_redis_lost_is_loaded_again_and_its_batch_sent_again(
    services: Services, redis_client: redis.Redis
):
    if services.name != "embedded":
        pytest.skip("SCRIPT FLUSH would drop every client's scripts on a shared server")
    pipeline = PackedPipeline(redis_client, _SCRIPT)
    redis_client.script_flush()  # as after a restart of a Redis that keeps no scripts
    pipeline.script(_SCRIPT, ["packed:scripted"], ["f", "1"])
    pipeline.command("HSET", "packed:plain", "f", "1")
    pipeline.send()
    pipeline.flush()
    assert redis_client.hget("packed:scripted", "f") == b"1"
    assert redis_client.hget("packed:plain", "f") == b"1"
