"""A renderer process: renders templates for its parent (``app.dispatch.rendering``) until its
input ends.

Started as ``python -m app.dispatch.render_worker MEMORY_BYTES``: its address space is capped
at what it uses at start plus ``MEMORY_BYTES``, so a template asking for gigabytes fails with
``MemoryError`` here, not in the dispatcher or the API. Each request and answer is a 4-byte
big-endian length and that many bytes of JSON; an empty frame at start says it is ready.

Request: ``{"name", "kind", "sources": [[field, source], ...], "context": {...}}`` (the context
as ``templates.jsonable_context`` writes it). Answer: ``{"fields": {...}}``, or ``{"problems":
[[template, field, line, message], ...]}``. After a ``MemoryError`` it answers (with
``"exiting": true``) and exits, so its parent starts a fresh one.
"""

from __future__ import annotations

import resource
import struct
import sys
from typing import Any, BinaryIO

import orjson

from app.dispatch.errors import MessageTemplateError
from app.dispatch.templates import Cart, compile_template, render_message

HEADER = struct.Struct(">I")


def read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return stream.read(size)


def answer(request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The answer to one request, and whether this process can go on."""
    name = request["name"]
    try:
        template = compile_template(
            name=name, kind=request["kind"], sources=dict(request["sources"])
        )
        context = dict(request["context"])
        context["cart"] = Cart(**context["cart"])
        message = render_message(template, context)
    except MessageTemplateError as error:
        problems = [[p.template, p.field, p.line, p.message] for p in error.problems]
        return {"problems": problems}, True
    except MemoryError:
        limit = int(sys.argv[1]) // (1 << 20)
        problem = [name, None, None, f"needs more than {limit} MB of memory to render"]
        return {"problems": [problem], "exiting": True}, False
    return {"fields": message.fields}, True


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_in_use() + int(sys.argv[1]),) * 2)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(HEADER.pack(0))  # ready: a render's time starts after the imports
    stdout.flush()
    while (frame := read_frame(stdin)) is not None:
        reply, going_on = answer(orjson.loads(frame))
        payload = orjson.dumps(reply)
        stdout.write(HEADER.pack(len(payload)) + payload)
        stdout.flush()
        if not going_on:
            return


def _in_use() -> int:
    """This process's address space now, in bytes (the interpreter and its libraries)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    return pages * resource.getpagesize()


if __name__ == "__main__":
    main()
