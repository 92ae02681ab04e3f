"""Templates render in child processes, so that no template can take the caller's time or
memory.

Jinja's sandbox keeps a template from Python's internals, not from work: loops nested over big
ranges render for minutes, and a filter can ask for gigabytes (``'x' | center(300000000)``).
Rendered in the dispatcher's event loop, such a template held up every other trigger. So the
dispatcher and the API hand each render to a ``TemplateRenderer``: a few renderer processes
(``app.dispatch.render_worker``), each with its memory capped. A render gets ``timeout_s``;
past it, its process is killed (another starts on the next render) and the render fails with
that reason. Only that template's delivery or preview fails; the caller's loop never waits on
a render. A render costs a round trip through a pipe (the context and the message as JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from app.dispatch.errors import MessageTemplateError, TemplateProblem
from app.dispatch.render_worker import HEADER
from app.dispatch.templates import CompiledTemplate, RenderedMessage, jsonable_context

RENDER_TIMEOUT_S = 2.0
RENDER_MEMORY_BYTES = 256 << 20  # beyond what the renderer process uses at start
STARTUP_TIMEOUT_S = 60.0  # a process's imports, on a busy machine: not the render's time


class _Renderer:
    """One renderer process, one render at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, request: bytes) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None, "started with pipes"
        assert stdout is not None, "started with pipes"
        stdin.write(HEADER.pack(len(request)) + request)
        await stdin.drain()
        (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
        answer: dict[str, Any] = orjson.loads(await stdout.readexactly(size))
        return answer

    def alive(self) -> bool:
        return self.process.returncode is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class TemplateRenderer:
    """Renders templates in up to ``processes`` renderer processes, started when first
    needed; each render gets ``timeout_s`` and the process ``memory_bytes``."""

    def __init__(
        self,
        *,
        processes: int = 2,
        timeout_s: float = RENDER_TIMEOUT_S,
        memory_bytes: int = RENDER_MEMORY_BYTES,
    ) -> None:
        self._timeout_s = timeout_s
        self._memory_bytes = memory_bytes
        self._idle: list[_Renderer] = []
        self._all: set[_Renderer] = set()
        self._slots = asyncio.Semaphore(processes)

    async def render(
        self, template: CompiledTemplate, context: Mapping[str, Any]
    ) -> RenderedMessage:
        """The message; raises ``MessageTemplateError`` as ``templates.render_message`` does,
        and when the render takes too long or too much memory."""
        request = orjson.dumps(
            {
                "name": template.name,
                "kind": template.kind,
                "sources": template.sources,
                "context": jsonable_context(context),
            }
        )
        async with self._slots:
            renderer = self._idle.pop() if self._idle else await self._start(template)
            try:
                answer = await asyncio.wait_for(renderer.ask(request), self._timeout_s)
            except TimeoutError:
                self._drop(renderer)
                raise _failed(template, f"renders for more than {self._timeout_s:g} s") from None
            except (asyncio.IncompleteReadError, ConnectionError):
                self._drop(renderer)
                raise _failed(template, "its renderer process stopped while rendering") from None
            if answer.get("exiting") or not renderer.alive():
                self._drop(renderer)
            else:
                self._idle.append(renderer)
        if "problems" in answer:
            raise MessageTemplateError([TemplateProblem(*p) for p in answer["problems"]])
        return RenderedMessage(template=template.name, kind=template.kind, fields=answer["fields"])

    async def _start(self, template: CompiledTemplate) -> _Renderer:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.dispatch.render_worker",
            str(self._memory_bytes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        renderer = _Renderer(process)
        self._all.add(renderer)
        stdout = process.stdout
        assert stdout is not None, "started with pipes"
        try:
            await asyncio.wait_for(stdout.readexactly(HEADER.size), STARTUP_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError):
            self._drop(renderer)
            raise _failed(template, "no renderer process could start") from None
        return renderer

    def _drop(self, renderer: _Renderer) -> None:
        renderer.kill()
        self._all.discard(renderer)

    def cpu_s(self) -> float:
        """CPU seconds used so far by the renderer processes running now."""
        total = 0
        for renderer in list(self._all):
            try:
                with open(f"/proc/{renderer.process.pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    async def close(self) -> None:
        for renderer in list(self._all):
            renderer.kill()
            with contextlib.suppress(ProcessLookupError):
                await renderer.process.wait()
        self._all.clear()
        self._idle.clear()


def _failed(template: CompiledTemplate, why: str) -> MessageTemplateError:
    return MessageTemplateError([TemplateProblem(template.name, None, None, why)])
