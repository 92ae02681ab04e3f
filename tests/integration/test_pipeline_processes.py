"""`segflow pipeline --processes N`: one Bytewax cluster of N processes, stopped as one."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from app.settings import Settings
from tests.factories import append_events, processed_entries, shop_events
from tests.helpers import children, pipeline_env, segflow_process, wait_for


def flow_processes(pid: int) -> list[int]:
    return [
        child
        for child in children(pid)
        if b"bytewax.run" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


@pytest.mark.backend_independent
def test_a_killed_process_stops_the_whole_cluster_and_the_command_fails(
    settings: Settings, redis_client, tmp_path
):
    assert settings.redis_url
    env = pipeline_env(settings.redis_url, tmp_path, settings.partitions)
    events = shop_events(200, customers=40, now=time.time_ns() // 1_000_000, seed=3)
    append_events(redis_client, events, settings.partitions)
    with segflow_process(env, "pipeline", "--processes", "2") as command:
        # both processes run the flow: together they read every partition
        wait_for(lambda: processed_entries(redis_client) == len(events), timeout_s=120)
        flows = flow_processes(command.pid)
        assert len(flows) == 2
        assert all(b"-i" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in flows)

        os.kill(flows[0], signal.SIGKILL)

        # the other cannot go on without it: the command stops it and fails, so `segflow up`
        # restarts the whole cluster from its recovery state
        wait_for(lambda: command.poll() is not None, timeout_s=60, what="the command to end")
        assert command.returncode == 128 + signal.SIGKILL  # as a shell reports it
        assert not Path(f"/proc/{flows[1]}").exists()


@pytest.mark.backend_independent
def test_the_processes_setting_is_the_default(settings: Settings, redis_client, tmp_path):
    assert settings.redis_url
    env = pipeline_env(
        settings.redis_url, tmp_path, settings.partitions, SEGFLOW_PIPELINE_PROCESSES="3"
    )
    events = shop_events(100, customers=20, now=time.time_ns() // 1_000_000, seed=4)
    append_events(redis_client, events, settings.partitions)
    with segflow_process(env, "pipeline", "--no-recovery") as command:
        # three processes, which together read every partition
        wait_for(lambda: processed_entries(redis_client) == len(events), timeout_s=120)
        assert len(flow_processes(command.pid)) == 3
