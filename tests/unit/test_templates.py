"""Message templates: checked when saved, rendered in Jinja2's sandbox from a customer's profile
and a trigger, and failing with the template, field and line named."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.dispatch.errors import MessageTemplateError
from app.dispatch.store import shipped_templates
from app.dispatch.templates import (
    TriggerContext,
    compile_template,
    jsonable_context,
    message_context,
    render_message,
    template_problems,
)
from app.profiles.service import RECENT_EVENTS_SHOWN, CustomerProfile, ProfileEvent

AT = 1_800_000_000_000


def track(event: str, at: int, **properties: object) -> ProfileEvent:
    return ProfileEvent(type="track", event=event, timestamp=at, properties=properties)


def profile(*events: ProfileEvent, **traits: object) -> CustomerProfile:
    """A profile; ``events`` oldest first (profiles hold them newest first)."""
    return CustomerProfile(
        customer_id="user-1",
        traits=traits,
        features={"cart_value": 55.0},
        segments=["cart-abandoners"],
        cluster=None,
        first_seen=AT - 60_000,
        last_seen=AT,
        events=list(reversed(events)),
    )


TRIGGER = TriggerContext(segment="cart-abandoners", kind="enter", at=AT, rule_version=3)


def render(kind: str, *, customer: CustomerProfile | None = None, **sources: str) -> dict[str, Any]:
    template = compile_template(name="t", kind=kind, sources=sources)
    context = message_context(profile=customer or profile(first_name="Ada"), trigger=TRIGGER)
    return render_message(template, context).fields


def refusal(kind: str = "email", **sources: str) -> MessageTemplateError:
    with pytest.raises(MessageTemplateError) as caught:
        compile_template(name="t", kind=kind, sources=sources)
    return caught.value


def render_failure(kind: str = "push", **sources: str) -> MessageTemplateError:
    with pytest.raises(MessageTemplateError) as caught:
        render(kind, customer=None, **sources)
    return caught.value


# --- what each kind renders ---------------------------------------------------------------------


def test_an_email_renders_subject_text_and_html_with_only_html_escaped():
    fields = render(
        "email",
        customer=profile(first_name="<Ada>"),
        subject="Hi {{ traits.first_name }}",
        text="Dear {{ traits.first_name }}",
        html="<p>Dear {{ traits.first_name }}</p>",
    )
    assert fields == {
        "subject": "Hi <Ada>",
        "text": "Dear <Ada>",
        "html": "<p>Dear &lt;Ada&gt;</p>",
    }


def test_a_push_renders_title_body_and_deep_link():
    fields = render(
        "push",
        title="{{ trigger.segment }}",
        body="{{ segments | join(', ') }} since {{ trigger.at | datetime('%Y-%m-%d') }}",
        deep_link="shop://cart?c={{ customer_id | urlencode }}",
    )
    assert fields == {
        "title": "cart-abandoners",
        "body": "cart-abandoners since 2027-01-15",
        "deep_link": "shop://cart?c=user-1",
    }


def test_a_generic_body_renders_to_json():
    fields = render(
        "generic",
        body='{"customer": {{ customer_id | tojson }}, "value": {{ cart.value }}, '
        '"name": {{ traits.first_name | tojson }}, "version": {{ trigger.rule_version }}}',
    )
    assert fields == {"body": {"customer": "user-1", "value": 55.0, "name": "Ada", "version": 3}}


def test_a_generic_body_that_renders_to_something_else_than_json_names_its_field():
    error = render_failure("generic", body='{"name": {{ traits.first_name }}}')
    assert "template 't', field 'body'" in str(error)
    assert "not JSON" in str(error)
    assert "tojson" in str(error)


def test_trigger_fields_as_the_triggers_stream_holds_them_are_read_as_numbers():
    fields = {
        "trigger_id": "user-1:cart-abandoners:enter:5:0",
        "customer_id": "user-1",
        "segment": "cart-abandoners",
        "kind": "enter",
        "at": "5",
        "rule_version": "2",
        "destination": "email",
        "template": "cart-reminder",
    }
    context = message_context(profile=profile(), trigger=fields)
    assert context["trigger"] == {
        "id": "user-1:cart-abandoners:enter:5:0",
        "segment": "cart-abandoners",
        "kind": "enter",
        "at": 5,
        "rule_version": 2,
    }


# --- the cart -----------------------------------------------------------------------------------


def test_the_cart_lines_follow_the_contracts_cart_semantics():
    customer = profile(
        track("Product Added", AT - 9000, product_id="old", price=5),
        track("Order Completed", AT - 8000, order_id="o1"),  # empties the cart
        track("Product Added", AT - 7000, product_id="p1", price=20, quantity=2, name="Shoes"),
        track("Product Added", AT - 6000, product_id="p2", price=15),
        track("Product Added", AT - 5000, product_id="p3", price=1, quantity=3),
        track("Product Removed", AT - 4000, product_id="p2"),  # default: all of it
        track("Product Removed", AT - 3000, product_id="p3", quantity=1),
        track("Product Added", AT - 2000, product_id="p1", price=18),  # newest price
        track("Product Added", AT + 1000, product_id="late", price=99),  # after the trigger
    )
    cart = message_context(profile=customer, trigger=TRIGGER)["cart"]
    assert cart.items == [
        {"product_id": "p1", "name": "Shoes", "quantity": 3, "price": 18},
        {"product_id": "p3", "quantity": 2, "price": 1},
    ]
    assert cart.value == 55.0  # the profile's exact cart_value, not the lines' sum
    assert cart.items_complete


def test_cart_lines_say_when_the_recent_events_may_not_hold_the_whole_cart():
    adds = [track("Product Added", AT - n, product_id=f"p{n}", price=1) for n in range(30, 0, -1)]
    customer = profile(*adds)
    assert len(customer.events) > RECENT_EVENTS_SHOWN
    customer.events = customer.events[:RECENT_EVENTS_SHOWN]
    cart = message_context(profile=customer, trigger=TRIGGER)["cart"]
    assert len(cart.items) == RECENT_EVENTS_SHOWN
    assert not cart.items_complete


def test_templates_read_cart_items_as_the_lines_not_the_dicts_method():
    customer = profile(track("Product Added", AT - 1, product_id="p1", price=2, name="Socks"))
    fields = render(
        "push",
        customer=customer,
        title="{{ cart.count }} item(s)",
        body="{% for item in cart.items %}{{ item.name }} x {{ item.quantity }}{% endfor %}",
    )
    assert fields == {"title": "1 item(s)", "body": "Socks x 1"}


def test_the_context_answers_as_plain_json_values():
    context = message_context(profile=profile(), trigger=TRIGGER)
    assert jsonable_context(context)["cart"] == {
        "value": 55.0,
        "count": 0,
        "items": [],
        "items_complete": True,
    }


# --- the sandbox --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ traits['__class__'] }}",
        "{{ self.__init__ }}",
    ],
)
def test_reaching_for_python_internals_is_refused_when_saved(source: str):
    error = refusal("push", title="Hi", body=f"line one\n{source}")
    (problem,) = error.problems  # one per field, naming every attribute
    assert (problem.template, problem.field, problem.line) == ("t", "body", 2)
    assert "'__" in problem.message
    assert "Python internals" in problem.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ traits[name] }}",  # the attribute is only known when rendering
        "{{ (traits | attr(name)) }}",
        "{{ name | attr('__class__') }}",
    ],
)
def test_reaching_for_internals_dynamically_fails_to_render(source: str):
    template = compile_template(name="t", kind="push", sources={"title": "x", "body": source})
    context = {**message_context(profile=profile(), trigger=TRIGGER), "name": "__class__"}
    with pytest.raises(MessageTemplateError) as caught:
        render_message(template, context)
    (problem,) = caught.value.problems
    assert (problem.field, problem.line) == ("body", 1)


def test_an_unsafe_attribute_reached_dynamically_is_a_sandbox_error():
    template = compile_template(
        name="t", kind="push", sources={"title": "x", "body": "\n\n{{ name | attr(n) }}"}
    )
    with pytest.raises(MessageTemplateError) as caught:
        render_message(template, {"name": "", "n": "__class__"})
    assert str(caught.value) == (
        "template 't', field 'body' (line 3): reaches outside the sandbox: access to attribute "
        "'__class__' of 'str' object is unsafe."
    )


def test_the_context_cannot_be_changed_by_a_template():
    error = render_failure(title="x", body="{{ segments.append('vip') }}")
    assert "reaches outside the sandbox" in str(error)


@pytest.mark.parametrize(
    "body", ["{{ 'x' * 10000000 }}", "{{ [1] * 10000000 }}", "{{ 10 ** 100000 }}"]
)
def test_huge_values_are_refused_rather_than_built(body: str):
    error = render_failure(title="x", body=body)
    assert "reaches outside the sandbox" in str(error)


# --- refusals and failures ----------------------------------------------------------------------


def test_a_template_that_does_not_parse_is_refused_with_field_and_line():
    error = refusal(subject="ok", text="Hi\n\n{{ cart.value + }}")
    (problem,) = error.problems
    assert (problem.template, problem.field, problem.line) == ("t", "text", 3)
    assert str(error) == (
        "template 't', field 'text' (line 3): does not parse: unexpected 'end of print statement'"
    )


def test_a_block_left_open_is_refused_at_the_line_that_opened_it():
    (problem,) = refusal(subject="ok", text="Hi\n{% if cart.value %}\nno end").problems
    assert (problem.field, problem.line) == ("text", 2)
    assert "The innermost block that needs to be closed is 'if'" in problem.message


def test_every_problem_of_a_template_is_named():
    problems = template_problems(
        name="t", kind="email", sources={"title": "x", "html": "{{ oops }"}
    )
    assert [(p.field, p.message.split(":")[0]) for p in problems] == [
        ("title", "an email template has no field 'title'; its fields are subject, text, html"),
        ("subject", "an email template needs a subject"),
        ("html", "does not parse"),
    ]


def test_an_email_needs_a_body_and_a_push_its_title_and_body():
    assert "needs a text or html body" in str(refusal(subject="s"))
    assert [p.field for p in refusal("push", deep_link="x").problems] == ["title", "body"]


def test_an_undefined_value_fails_naming_field_line_and_the_way_out():
    error = render_failure(title="Hi", body="Hello\n{{ traits.frist_name }}!")
    (problem,) = error.problems
    assert (problem.template, problem.field, problem.line) == ("t", "body", 2)
    assert "'dict object' has no attribute 'frist_name'" in problem.message
    assert "default" in problem.message


def test_a_value_a_customer_may_not_have_has_a_default():
    fields = render(
        "push",
        customer=profile(),
        title="Hi {{ traits.first_name | default('there') }}",
        body="{% if traits.plan is defined %}{{ traits.plan }}{% else %}free{% endif %}",
    )
    assert fields == {"title": "Hi there", "body": "free"}


def test_any_other_failure_names_its_field_and_line():
    error = render_failure(title="x", body="one\ntwo\n{{ cart.value / 0 }}")
    assert str(error) == (
        "template 't', field 'body' (line 3): fails to render: ZeroDivisionError: "
        "float division by zero"
    )


@given(st.text(max_size=200))
def test_any_text_either_compiles_or_is_refused_with_a_named_problem(source: str):
    problems = []
    try:
        template = compile_template(name="t", kind="push", sources={"title": source, "body": "b"})
        render_message(template, message_context(profile=profile(), trigger=TRIGGER))
    except MessageTemplateError as error:
        problems = error.problems
    assert all((p.template, p.field) == ("t", "title") for p in problems)


# --- the shipped template -----------------------------------------------------------------------


def test_the_shipped_cart_reminder_lists_the_cart_for_a_real_shaped_profile():
    (spec,) = [t for t in shipped_templates() if t.name == "cart-reminder"]
    assert spec.kind == "email"
    template = compile_template(name=spec.name, kind=spec.kind, sources=spec.sources())
    customer = profile(
        track("Product Added", AT - 2000, product_id="p1", price=20, quantity=2),
        track("Product Added", AT - 1000, product_id="p2", price=15, name="Socks <wool>"),
        first_name="Ada",
    )
    fields = render_message(template, message_context(profile=customer, trigger=TRIGGER)).fields
    assert fields["subject"] == "Ada, your cart is waiting (55.00)"
    assert "You left 3 items in your cart, worth 55.00." in fields["text"]
    assert "- Socks <wool> x 1 at 15.00" in fields["text"]
    assert "<li>Socks &lt;wool&gt; &times; 1 at 15.00</li>" in fields["html"]


def test_the_shipped_cart_reminder_renders_for_a_customer_with_nothing_known():
    (spec,) = [t for t in shipped_templates() if t.name == "cart-reminder"]
    template = compile_template(name=spec.name, kind=spec.kind, sources=spec.sources())
    bare = CustomerProfile(
        customer_id="anon-1",
        traits={},
        features={},
        segments=[],
        cluster=None,
        first_seen=None,
        last_seen=None,
        events=[],
    )
    fields = render_message(template, message_context(profile=bare, trigger=TRIGGER)).fields
    assert fields["subject"] == "Hello, your cart is waiting"
