"""Templates render in renderer processes (``app.dispatch.rendering``): a template that loops
for minutes or asks for gigabytes fails its own render with the reason, quickly, and the next
render is served as before."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.dispatch.errors import MessageTemplateError
from app.dispatch.rendering import TemplateRenderer
from app.dispatch.templates import CompiledTemplate, compile_template, message_context
from app.profiles.service import CustomerProfile

PROFILE = CustomerProfile(
    customer_id="ann",
    traits={"first_name": "Ann"},
    features={"cart_value": 12.5},
    segments=["cart-abandoners"],
    cluster=None,
    first_seen=None,
    last_seen=None,
    events=[],
)
CONTEXT = message_context(profile=PROFILE, trigger={"segment": "cart-abandoners", "at": 1})
LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def push(body: str) -> CompiledTemplate:
    return compile_template(name="hostile", kind="push", sources={"title": "Hi", "body": body})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (LOOPS, "renders for more than 1 s"),
        ("{{ 'x' | center(300000000) }}", "needs more than 64 MB of memory to render"),
        ("{{ (['x' * 100000] * 100000) | join }}", "needs more than 64 MB of memory to render"),
        ("{% for a in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "more than the 524288"),
    ],
)
def test_a_hostile_template_fails_its_own_render_and_the_next_one_is_served(
    body: str, reason: str
) -> None:
    async def run() -> tuple[str, float, str]:
        renderer = TemplateRenderer(processes=1, timeout_s=1.0, memory_bytes=64 << 20)
        try:
            started = time.monotonic()
            with pytest.raises(MessageTemplateError) as refused:
                await renderer.render(push(body), CONTEXT)
            took = time.monotonic() - started
            fine = await renderer.render(push("Hi {{ traits.first_name }}"), CONTEXT)
            return str(refused.value), took, fine.fields["body"]
        finally:
            await renderer.close()

    refused, took, fine = asyncio.run(run())
    assert reason in refused
    assert "template 'hostile'" in refused
    assert took < 30  # a ceiling for a loaded machine; it was minutes
    assert fine == "Hi Ann"


def test_compiling_does_not_evaluate_the_template() -> None:
    """Jinja folded constant expressions while compiling: saving ``center(300000000)`` took
    seconds and kept its 300 MB in the compiled template."""
    compiled = push("{{ 'x' | center(300000000) }}")
    assert all(len(source) < 100 for _, source in compiled.sources)
    code = compiled.fields["body"].root_render_func.__code__
    assert all(not isinstance(c, str) or len(c) < 1000 for c in code.co_consts)


def test_renders_share_the_processes_and_wait_for_a_free_one() -> None:
    async def run() -> list[str]:
        renderer = TemplateRenderer(processes=2, timeout_s=30.0)
        try:
            found = await asyncio.gather(
                *(renderer.render(push(f"{n} {{{{ customer_id }}}}"), CONTEXT) for n in range(8))
            )
            return [message.fields["body"] for message in found]
        finally:
            await renderer.close()

    assert asyncio.run(run()) == [f"{n} ann" for n in range(8)]
