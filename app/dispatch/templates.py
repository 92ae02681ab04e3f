"""Message templates: Jinja2 sources, one per field of a message, rendered in a sandbox.

An ``email`` template has ``subject``, ``text`` and ``html`` (a subject and at least one body);
a ``push`` template ``title``, ``body`` and optionally ``deep_link``; a ``generic`` template one
``body`` that renders to a JSON document (write values with ``| tojson``).

Rendering is Jinja2's ``ImmutableSandboxedEnvironment``: a template reads the values it is given
and cannot reach Python internals (``{{ ''.__class__ }}``, ``{{ cycler.__init__.__globals__
}}``) or change its context; ``range`` and repetition (``'x' * n``, ``n ** m``) are bounded.
Undefined values are errors (``StrictUndefined``): a misspelt ``{{ traits.frist_name }}``
fails instead of sending "Hi ,". Write ``{{ traits.first_name | default('there') }}`` for what
a customer may not have. Only ``html`` is autoescaped. Output is bounded in size while it is
written (``MAX_OUTPUT_CHARS`` per field); time and memory are bounded by rendering in a
renderer process (``app.dispatch.rendering``), which the dispatcher and the API always do.

A template that does not parse, or reaches for an attribute starting with ``_``, is refused
when saved; one that fails to render raises ``MessageTemplateError`` naming the template, the
field and the line.

The context (``message_context``):

- ``customer_id``, ``traits``, ``features`` (name: value, as profiles show them), ``segments``,
  ``cluster``: the customer's profile;
- ``trigger``: ``segment``, ``kind`` (``enter`` / ``exit``), ``at`` (event time, ms since the
  epoch; ``{{ trigger.at | datetime }}`` writes it), ``rule_version``, ``id``;
- ``cart``: ``value`` and ``count`` (the profile's ``cart_value`` / ``cart_items`` features,
  exact when the rule set computes them), and ``items``: the lines (``product_id``,
  ``quantity``, ``price`` and the other properties its adds carried, the newest winning)
  rebuilt from the profile's recent events (the last 20). Profiles keep the cart's value, not
  its lines, so a cart filled over more events than those lists its newest lines only;
  ``items_complete`` says whether the list is whole.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import jinja2
import jinja2.exceptions
import jinja2.runtime
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field

from app.dispatch.errors import MessageTemplateError, TemplateProblem
from app.profiles.service import RECENT_EVENTS_SHOWN, CustomerProfile

Kind = Literal["email", "push", "generic"]
KINDS: tuple[Kind, ...] = ("email", "push", "generic")
# every field of each kind, in order, and what a field renders as
FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("subject", "text", "html"),
    "push": ("title", "body", "deep_link"),
    "generic": ("body",),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "email": ("subject",),
    "push": ("title", "body"),
    "generic": ("body",),
}
ALL_FIELDS = ("subject", "text", "html", "title", "body", "deep_link")
MAX_SOURCE_CHARS = 256 * 1024
MAX_OUTPUT_CHARS = 512 * 1024
MAX_REPEAT = 100_000  # longest string or list ``*`` may make
MAX_POWER = 100  # largest exponent ``**`` may take


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with ``*`` and ``**`` bounded so a template cannot ask for
    a gigabyte string or an integer with a billion digits."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(times, int)
                    and len(sequence) * times > MAX_REPEAT
                ):
                    raise jinja2.exceptions.SecurityError(
                        f"repeating makes more than {MAX_REPEAT} items"
                    )
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER:
                raise jinja2.exceptions.SecurityError(f"an exponent above {MAX_POWER}")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)


def _datetime(value: Any, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """Milliseconds since the epoch (or an ISO string) as a UTC date and time."""
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
    else:
        moment = datetime.fromtimestamp(float(value) / 1000, UTC)
    return moment.strftime(fmt)


def _environment(*, autoescape: bool) -> _Sandbox:
    env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=autoescape, optimized=False)
    env.filters["datetime"] = _datetime
    env.filters = {name: _at_render_time(f) for name, f in env.filters.items()}
    return env


def _at_render_time(function: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, run only when a template renders. Jinja evaluates a filter on constants
    while compiling (``optimized=False`` does not stop it), unless the filter takes the render
    context: saving ``{{ 'x' | center(300000000) }}`` took seconds and kept its 300 MB in the
    compiled template."""
    takes = getattr(getattr(function, "jinja_pass_arg", None), "name", None)
    if takes == "context":
        return function

    @jinja2.pass_context
    @functools.wraps(function)
    def filtered(context: jinja2.runtime.Context, *args: Any, **kwargs: Any) -> Any:
        if takes == "eval_context":
            return function(context.eval_ctx, *args, **kwargs)
        if takes == "environment":
            return function(context.environment, *args, **kwargs)
        return function(*args, **kwargs)

    return filtered


_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def _environment_of(field: str) -> _Sandbox:
    return _HTML if field == "html" else _TEXT


@dataclass(frozen=True)
class CompiledTemplate:
    """A template checked and compiled, ready to render any number of times."""

    name: str
    kind: str
    fields: Mapping[str, jinja2.Template]
    sources: tuple[tuple[str, str], ...] = ()  # (field, source): a renderer process compiles them


@dataclass(frozen=True)
class RenderedMessage:
    """What a template made for one customer: ``fields`` holds the email's ``subject`` /
    ``text`` / ``html``, the push's ``title`` / ``body`` / ``deep_link`` (strings), or the
    generic ``body`` (the JSON document, parsed)."""

    template: str
    kind: str
    fields: dict[str, Any]

    def content(self) -> Any:
        """The message as a webhook carries it: the fields, or a generic body itself."""
        return self.fields["body"] if self.kind == "generic" else dict(self.fields)


class TriggerContext(BaseModel):
    """The trigger a message is for. Built from a triggers-stream entry (strings are read as
    numbers where numbers are meant; other fields of the entry are ignored)."""

    model_config = ConfigDict(extra="ignore")

    segment: str = Field(max_length=200)
    kind: Literal["enter", "exit"] = "enter"
    at: int = Field(ge=0, le=10**15, description="Event time, ms since the epoch.")
    rule_version: int = Field(default=0, ge=0, le=10**9)
    trigger_id: str = Field(default="", max_length=500)


# --- checking and compiling ---------------------------------------------------------------------


def template_problems(*, name: str, kind: str, sources: Mapping[str, str]) -> list[TemplateProblem]:
    """Everything that stops these sources from being saved (none: they may)."""
    if kind not in FIELDS:
        return [TemplateProblem(name, "kind", None, f"a kind is one of {', '.join(KINDS)}")]
    problems = [
        TemplateProblem(
            name,
            field,
            None,
            f"an {kind} template has no field {field!r}; its fields are {', '.join(FIELDS[kind])}",
        )
        for field in sorted(sources, key=_field_order)
        if field not in FIELDS[kind]
    ]
    problems += [
        TemplateProblem(name, field, None, f"an {kind} template needs a {field}")
        for field in REQUIRED[kind]
        if not sources.get(field)
    ]
    if kind == "email" and not (sources.get("text") or sources.get("html")):
        problems.append(
            TemplateProblem(name, "text", None, "an email template needs a text or html body")
        )
    for field in FIELDS[kind]:
        source = sources.get(field)
        if source is None:
            continue
        if len(source) > MAX_SOURCE_CHARS:
            problems.append(
                TemplateProblem(name, field, None, f"longer than {MAX_SOURCE_CHARS} characters")
            )
            continue
        problems += _source_problems(name, field, source)
    return problems


def _field_order(field: str) -> tuple[int, str]:
    return (ALL_FIELDS.index(field) if field in ALL_FIELDS else len(ALL_FIELDS), field)


def _source_problems(name: str, field: str, source: str) -> list[TemplateProblem]:
    try:
        tree = _environment_of(field).parse(source)
    except jinja2.TemplateSyntaxError as error:
        return [TemplateProblem(name, field, error.lineno, f"does not parse: {error.message}")]
    unsafe: dict[str, int] = {}  # attribute -> its first line
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            attribute: object = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            attribute = node.arg.value
        else:
            continue
        if isinstance(attribute, str) and attribute.startswith("_"):
            unsafe[attribute] = min(unsafe.get(attribute, node.lineno), node.lineno)
    if not unsafe:
        return []
    names = sorted(unsafe, key=lambda a: (unsafe[a], a))
    return [
        TemplateProblem(
            name,
            field,
            unsafe[names[0]],
            f"{', '.join(map(repr, names))}: attributes starting with '_' are Python "
            "internals, which templates cannot reach",
        )
    ]


def compile_template(*, name: str, kind: str, sources: Mapping[str, str]) -> CompiledTemplate:
    """Check and compile; raise ``MessageTemplateError`` with every problem."""
    given = {field: source for field, source in sources.items() if source is not None}
    return _compiled(name, kind, tuple(sorted(given.items())))


@functools.lru_cache(maxsize=256)  # by content: an edited template is another key
def _compiled(name: str, kind: str, sources: tuple[tuple[str, str], ...]) -> CompiledTemplate:
    by_field = dict(sources)
    problems = template_problems(name=name, kind=kind, sources=by_field)
    if problems:
        raise MessageTemplateError(problems)
    return CompiledTemplate(
        name=name,
        kind=kind,
        fields={
            field: _environment_of(field).from_string(by_field[field])
            for field in FIELDS[kind]
            if by_field.get(field)
        },
        sources=sources,
    )


# --- rendering ----------------------------------------------------------------------------------


def render_message(template: CompiledTemplate, context: Mapping[str, Any]) -> RenderedMessage:
    """Render every field; raise ``MessageTemplateError`` naming the first field that fails,
    with its line. The context is read, never changed."""
    fields: dict[str, Any] = {}
    for field, compiled in template.fields.items():
        text = _render_field(template.name, field, compiled, context)
        if template.kind == "generic":
            try:
                fields[field] = json.loads(text)
            except ValueError as error:
                raise MessageTemplateError(
                    [
                        TemplateProblem(
                            template.name,
                            field,
                            getattr(error, "lineno", None),
                            f"renders text that is not JSON ({error}); write values with | tojson",
                        )
                    ]
                ) from None
        else:
            fields[field] = text.strip() if field in ("subject", "title", "deep_link") else text
    return RenderedMessage(template=template.name, kind=template.kind, fields=fields)


def _render_field(
    name: str, field: str, compiled: jinja2.Template, context: Mapping[str, Any]
) -> str:
    """The field's text, produced piece by piece and stopped as soon as it is longer than a
    message may be (not after: a loop could otherwise fill the memory first)."""
    parts: list[str] = []
    size = 0
    try:
        for part in compiled.generate(context):
            size += len(part)
            if size > MAX_OUTPUT_CHARS:
                raise MessageTemplateError(
                    [
                        TemplateProblem(
                            name,
                            field,
                            None,
                            f"renders more than the {MAX_OUTPUT_CHARS} characters a message "
                            "may hold",
                        )
                    ]
                )
            parts.append(part)
    except (MessageTemplateError, MemoryError):
        raise
    except Exception as error:  # anything a template does wrong is the template's error
        raise MessageTemplateError(
            [TemplateProblem(name, field, _template_line(error), _explain(error))]
        ) from None
    return "".join(parts)


def _template_line(error: BaseException) -> int | None:
    """The template line an error was raised at: Jinja rewrites the traceback so that the
    template's frames carry its own line numbers."""
    line = getattr(error, "lineno", None)
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _explain(error: BaseException) -> str:
    if isinstance(error, jinja2.exceptions.SecurityError):
        return f"reaches outside the sandbox: {error}"
    if isinstance(error, jinja2.UndefinedError):
        return (
            f"{error.message}; for a value a customer may not have, write "
            "| default(...) or test it with 'is defined'"
        )
    return f"fails to render: {type(error).__name__}: {error}"


# --- context ------------------------------------------------------------------------------------


def message_context(
    *, profile: CustomerProfile, trigger: TriggerContext | Mapping[str, Any]
) -> dict[str, Any]:
    """What a template sees for this customer and trigger (see the module's docstring)."""
    if not isinstance(trigger, TriggerContext):
        trigger = TriggerContext.model_validate(trigger)
    return {
        "customer_id": profile.customer_id,
        "traits": profile.traits,
        "features": profile.features,
        "segments": profile.segments,
        "cluster": profile.cluster,
        "trigger": {
            "id": trigger.trigger_id,
            "segment": trigger.segment,
            "kind": trigger.kind,
            "at": trigger.at,
            "rule_version": trigger.rule_version,
        },
        "cart": cart_context(profile, at=trigger.at),
    }


@dataclass(frozen=True)
class Cart:
    """The cart in a template's context. An object, not a dict, so that ``cart.items`` is the
    lines (on a dict, Jinja finds the ``items`` method first)."""

    value: float
    count: float
    items: list[dict[str, Any]]
    items_complete: bool


def jsonable_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context as plain JSON values (for a preview's answer)."""
    return {
        key: dataclasses.asdict(value) if isinstance(value, Cart) else value
        for key, value in context.items()
    }


def cart_context(profile: CustomerProfile, *, at: int) -> Cart:
    """The cart as of ``at``, as far as the profile tells it: the contract's cart semantics
    replayed over the recent events (adds add ``quantity``, default 1, at ``price``; removes
    take ``quantity``, default all; an order empties it)."""
    lines: dict[str, dict[str, Any]] = {}
    events = [e for e in reversed(profile.events) if e.timestamp <= at]  # oldest first
    complete = len(profile.events) < RECENT_EVENTS_SHOWN  # the whole history is there
    for event in events:
        if event.type != "track":
            continue
        properties = event.properties
        if event.event == "Order Completed":
            lines.clear()
            complete = True  # nothing before the order counts
        elif event.event in ("Product Added", "Product Removed"):
            product = properties.get("product_id")
            if not isinstance(product, str | int) or isinstance(product, bool):
                continue
            key = str(product)
            quantity = _number(properties.get("quantity"))
            if event.event == "Product Added":
                line = lines.get(key, {"product_id": key, "quantity": 0, "price": 0})
                price = _number(properties.get("price"))
                lines[key] = {
                    **line,  # what an earlier add said and this one does not
                    "product_id": key,
                    **{k: v for k, v in properties.items() if k not in _LINE_KEYS},
                    "quantity": line["quantity"] + (1 if quantity is None else quantity),
                    "price": line["price"] if price is None else price,
                }
            elif key in lines:
                left = 0 if quantity is None else lines[key]["quantity"] - quantity
                if left > 0:
                    lines[key]["quantity"] = left
                else:
                    del lines[key]
    items = list(lines.values())
    features = profile.features
    value = features.get("cart_value")
    count = _number(features.get("cart_items"))  # features are floats: 3.0 reads as 3
    return Cart(
        value=value if value is not None else sum(i["price"] * i["quantity"] for i in items),
        count=count if count is not None else sum(i["quantity"] for i in items),
        items=items,
        items_complete=complete,
    )


_LINE_KEYS = ("product_id", "quantity", "price")


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return int(number) if number.is_integer() else number
