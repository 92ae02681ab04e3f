"""Work handed to a thread from async code (``app.db.to_the_end``): a cancelled wait still
ends after the work, so a process shutting down does not dispose of an engine under a thread
that holds one of its connections."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.db import to_the_end


def test_a_cancelled_wait_ends_only_after_the_threads_work() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        release.wait(120)
        finished.set()

    async def scenario() -> None:
        task = asyncio.create_task(to_the_end(work))
        assert await asyncio.to_thread(started.wait, 120)
        task.cancel()
        for _ in range(20):  # plain ``asyncio.to_thread`` is cancelled within one of these
            await asyncio.sleep(0)
        assert not task.done()  # still waiting for the thread
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()

    asyncio.run(scenario())


def test_the_works_answer_and_error_come_back() -> None:
    def fails() -> None:
        raise LookupError("no such segment")

    async def scenario() -> None:
        assert await to_the_end(sum, [1, 2, 3]) == 6
        with pytest.raises(LookupError, match="no such segment"):
            await to_the_end(fails)

    asyncio.run(scenario())
