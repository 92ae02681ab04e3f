"""bench/dispatch.py runs end to end at tiny sizes, so it cannot rot between benchmark runs.

It starts what it measures (an embedded Redis, a receiver process, a feeder process), so this
takes a few seconds."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from app.dispatch.secret_box import generate_signing_secret
from app.dispatch.webhooks import signature_headers
from bench import dispatch as bench

TINY = ["--deliveries", "30", "--rate", "40", "--seconds", "0.5", "--warm-up", "5", "--verify"]


def test_the_benchmark_prints_its_four_paths_with_every_delivery_received(capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)  # it flushes the Redis it is given
    bench.main(TINY)
    lines = capsys.readouterr().out.splitlines()
    assert "Signatures verified by the receiver" in "\n".join(lines)
    table = [line for line in lines if line.startswith("| ")]
    header = table[0].strip("| ").split(" | ")
    rows = [dict(zip(header, line.strip("| ").split(" | "), strict=True)) for line in table[1:]]
    assert [row["path"].split(":")[0] for row in rows] == [
        "floor",
        "dispatcher",
        "floor",
        "dispatcher",
    ]
    assert [row["deliveries"] for row in rows] == ["30", "30", "20", "20"]
    for row in rows:
        # connections are reused (the warm-up's, even: 0 new), not one opened per delivery
        assert int(row["connections"]) < int(row["deliveries"])
        assert float(row["deliveries/s"].replace(",", "")) > 0
        assert float(row["p99 ms"]) >= float(row["p50 ms"]) > 0
        assert float(row["ratio to floor"]) > 0


def test_a_signature_the_receiver_cannot_verify_stops_the_run(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    other, sign = SecretStr(generate_signing_secret()), signature_headers
    monkeypatch.setattr(bench, "signature_headers", lambda **kw: sign(**{**kw, "secret": other}))
    with pytest.raises(SystemExit, match="401"):
        bench.main(TINY)
