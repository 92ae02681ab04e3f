"""Rules in SQL: the current document of each rule, every version, and who changed what.

Every change is checked as the running system would meet it before anything is written: the
document against the schema, the whole rule set (duplicate ids, unknown segments, cycles, the
engine's size limits) with the new version in place, and the rule's own examples run (through
the dataflow's shard: the caller passes that check, ``ExampleCheck``). A change that passes
becomes a new version and one row of the audit trail; the newest audit row's id is the rule
set's *revision*, which the dataflow polls to reload (``app.rules.active``).

On first start the shipped rules in ``rules/`` are stored as version 1 of each, once: a rule
an operator later deletes stays deleted.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import yaml
from sqlalchemy import func
from sqlmodel import Session, col, select

from app.models import RuleChange, RuleRow, RuleVersion, utcnow
from app.rules.compiler import ActiveRule, compile_rules
from app.rules.engine import refusals as engine_refusals
from app.rules.schema import (
    Rule,
    RuleError,
    RuleProblem,
    check_rule_set,
    parse_rule,
    position_of,
)

YAML = "application/yaml"
JSON = "application/json"
SHIPPED_AUTHOR = "segflow (shipped rules)"


class RuleNotFound(LookupError):
    pass


class RuleConflict(Exception):
    """The change contradicts what is stored (an id taken, a rule others read)."""


@dataclass(frozen=True)
class StoredRule:
    """A rule as stored now, parsed."""

    rule: Rule
    version: int
    enabled: bool
    source: str
    media_type: str
    updated_at: datetime

    @property
    def id(self) -> str:
        return self.rule.id


# --- reading ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def parse_document(text: str, media_type: str = YAML) -> Rule:
    """A rule from its YAML text, or from the same document as JSON (a rule is frozen: stored
    rules, read on every listing, explanation and save, are parsed once per process)."""
    if media_type != JSON:
        return parse_rule(text)
    try:
        document = json.loads(text)
    except ValueError as error:
        raise RuleError([RuleProblem(None, None, None, f"not valid JSON: {error}")]) from error
    if not isinstance(document, dict):
        raise RuleError([RuleProblem(None, None, None, "a rule is a JSON object")])
    try:  # JSON is YAML too: read as it is, problems name the lines of the text sent
        yaml.safe_load(text)
    except yaml.YAMLError:  # but for what YAML refuses (tabs): the same document re-emitted
        return parse_rule(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return parse_rule(text)


def _stored(row: RuleRow) -> StoredRule:
    return StoredRule(
        parse_document(row.source, row.media_type),
        row.version,
        row.enabled,
        row.source,
        row.media_type,
        row.updated_at,
    )


def current_rules(*, session: Session) -> list[StoredRule]:
    """Every stored rule, enabled or not, by id."""
    return [_stored(row) for row in session.exec(select(RuleRow).order_by(col(RuleRow.id)))]


def get_rule(*, session: Session, rule_id: str) -> StoredRule:
    row = session.get(RuleRow, rule_id)
    if row is None:
        raise RuleNotFound(f"rule {rule_id!r}: no such rule")
    return _stored(row)


def active_rules(*, session: Session) -> list[ActiveRule]:
    """The enabled rules at their current versions: what the dataflow evaluates."""
    return [
        ActiveRule(stored.rule, stored.version)
        for stored in current_rules(session=session)
        if stored.enabled
    ]


def revision(*, session: Session) -> int:
    """The rule set's revision: it moves with every change (0: nothing stored yet)."""
    return session.exec(select(func.max(RuleChange.id))).one() or 0


def versions(*, session: Session, rule_id: str) -> list[RuleVersion]:
    """Every version of a rule, newest first (a deleted rule's too)."""
    query = select(RuleVersion).where(RuleVersion.rule_id == rule_id)
    found = list(session.exec(query.order_by(col(RuleVersion.version).desc())))
    if not found:
        raise RuleNotFound(f"rule {rule_id!r}: no such rule")
    return found


def changes(*, session: Session, rule_id: str) -> list[RuleChange]:
    """The rule's audit trail, newest first."""
    query = select(RuleChange).where(RuleChange.rule_id == rule_id)
    found = list(session.exec(query.order_by(col(RuleChange.id).desc())))
    if not found:
        raise RuleNotFound(f"rule {rule_id!r}: no such rule")
    return found


# --- checking -----------------------------------------------------------------------------------


class ExampleCheck(Protocol):
    """Runs a rule's examples (with ``others``, the rules of the segments it reads) and
    answers the ones it contradicts as problems: ``pipelines.examples.example_problems``, which
    runs them through the dataflow's own shard. The store takes it as a parameter, so the
    rules domain never imports the dataflow."""

    def __call__(
        self, rule: Rule, *, others: Iterable[Rule], text: str | None
    ) -> list[RuleProblem]: ...


def problems_of(
    *, session: Session, rule: Rule, text: str | None = None, examples: ExampleCheck
) -> list[RuleProblem]:
    """What would stop ``rule`` from replacing its namesake in the stored set (none: it may)."""
    others = [stored.rule for stored in current_rules(session=session) if stored.id != rule.id]
    return problems_among(rule=rule, others=others, text=text, examples=examples)


def problems_among(
    *, rule: Rule, others: list[Rule], text: str | None = None, examples: ExampleCheck
) -> list[RuleProblem]:
    rules = [*others, rule]
    try:
        check_rule_set(rules)
        compiled = compile_rules([ActiveRule(item, 1) for item in rules if item.enabled])
    except RuleError as error:
        # Found on the parsed rules: placed in the text, when they are this rule's.
        return [
            problem.placed(text) if problem.rule_id == rule.id else problem
            for problem in error.problems
        ]
    refused = engine_refusals(compiled)
    if any(rule.id in ruleset.definition for ruleset, _ in refused):
        why = next(reason for ruleset, reason in refused if rule.id in ruleset.definition)
        return [
            RuleProblem.at(
                rule.id,
                "when",
                position_of(text, ("when",)),
                f"the rule engine refuses this condition ({why}): make it simpler, or split "
                "it into segments that read each other",
            )
        ]
    return examples(rule, others=others, text=text)


def _checked(*, session: Session, text: str, media_type: str, examples: ExampleCheck) -> Rule:
    rule = parse_document(text, media_type)
    problems = problems_of(session=session, rule=rule, text=text, examples=examples)
    if problems:
        raise RuleError(problems)
    return rule


# --- changing -----------------------------------------------------------------------------------


def create_rule(
    *, session: Session, text: str, media_type: str, author: str, examples: ExampleCheck
) -> StoredRule:
    rule = _checked(session=session, text=text, media_type=media_type, examples=examples)
    if session.get(RuleRow, rule.id) is not None:
        raise RuleConflict(f"rule {rule.id!r} exists already: PUT /api/rules/{rule.id} edits it")
    newest = session.exec(
        select(func.max(RuleVersion.version)).where(RuleVersion.rule_id == rule.id)
    ).one()
    version = (newest or 0) + 1  # a deleted rule's id, reused, goes on from its old versions
    return _write(session, rule, text, media_type, author, version, "create", old="")


def update_rule(
    *,
    session: Session,
    rule_id: str,
    text: str,
    media_type: str,
    author: str,
    examples: ExampleCheck,
    action: str = "update",
) -> StoredRule:
    row = session.get(RuleRow, rule_id)
    if row is None:
        raise RuleNotFound(f"rule {rule_id!r}: no such rule; POST /api/rules creates one")
    rule = parse_document(text, media_type)
    if rule.id != rule_id:
        raise RuleError(
            [
                RuleProblem.at(
                    rule.id,
                    "id",
                    position_of(text, ("id",)),
                    f"the document's id {rule.id!r} is not the rule's id {rule_id!r}: "
                    "a rule's id is its segment's and cannot change",
                )
            ]
        )
    rule = _checked(session=session, text=text, media_type=media_type, examples=examples)
    return _write(session, rule, text, media_type, author, row.version + 1, action, row.source)


def set_enabled(
    *, session: Session, rule_id: str, enabled: bool, author: str, examples: ExampleCheck
) -> StoredRule:
    """A new version of the rule that says ``enabled: true`` or ``false``, comments kept."""
    row = session.get(RuleRow, rule_id)
    if row is None:
        raise RuleNotFound(f"rule {rule_id!r}: no such rule")
    return update_rule(
        session=session,
        rule_id=rule_id,
        text=_with_enabled(row.source, row.media_type, enabled),
        media_type=row.media_type,
        author=author,
        examples=examples,
        action="enable" if enabled else "disable",
    )


def rollback(
    *, session: Session, rule_id: str, version: int, author: str, examples: ExampleCheck
) -> StoredRule:
    """Make an old version current again, as a new version (history is never rewritten)."""
    old = session.exec(
        select(RuleVersion).where(RuleVersion.rule_id == rule_id, RuleVersion.version == version)
    ).first()
    if old is None:
        raise RuleNotFound(f"rule {rule_id!r}: no version {version}")
    if session.get(RuleRow, rule_id) is None:
        return create_rule(
            session=session,
            text=old.source,
            media_type=old.media_type,
            author=author,
            examples=examples,
        )
    return update_rule(
        session=session,
        rule_id=rule_id,
        text=old.source,
        media_type=old.media_type,
        author=author,
        examples=examples,
        action="rollback",
    )


def delete_rule(*, session: Session, rule_id: str, author: str) -> None:
    """Delete the rule (its segment empties); its versions and audit trail stay."""
    row = session.get(RuleRow, rule_id)
    if row is None:
        raise RuleNotFound(f"rule {rule_id!r}: no such rule")
    readers = sorted(
        stored.id
        for stored in current_rules(session=session)
        if rule_id in stored.rule.segment_refs()
    )
    if readers:
        raise RuleConflict(
            f"rule {rule_id!r} is read by {', '.join(map(repr, readers))}: "
            "change or delete those first"
        )
    session.delete(row)
    session.add(
        RuleChange(
            rule_id=rule_id,
            action="delete",
            version=None,
            author=author,
            diff=_diff(rule_id, row.version, row.source, None, ""),
        )
    )
    session.flush()


def seed_shipped(*, session: Session, rules: list[tuple[Rule, str]]) -> int:
    """Store the shipped rules as version 1, once ever; return how many were stored."""
    if revision(session=session):
        return 0
    for rule, text in rules:
        _write(session, rule, text, YAML, SHIPPED_AUTHOR, 1, "seed", old="")
    return len(rules)


def _write(
    session: Session,
    rule: Rule,
    text: str,
    media_type: str,
    author: str,
    version: int,
    action: str,
    old: str,
) -> StoredRule:
    now = utcnow()
    row = session.get(RuleRow, rule.id)
    if row is None:
        row = RuleRow(
            id=rule.id,
            name=rule.name,
            enabled=rule.enabled,
            version=version,
            source=text,
            media_type=media_type,
            created_at=now,
            updated_at=now,
        )
    else:
        row.name, row.enabled, row.version = rule.name, rule.enabled, version
        row.source, row.media_type, row.updated_at = text, media_type, now
    session.add(row)
    session.add(
        RuleVersion(
            rule_id=rule.id,
            version=version,
            source=text,
            media_type=media_type,
            author=author,
            created_at=now,
        )
    )
    session.add(
        RuleChange(
            rule_id=rule.id,
            action=action,
            version=version,
            author=author,
            at=now,
            diff=_diff(rule.id, version - 1, old, version, text),
        )
    )
    session.flush()
    return StoredRule(rule, version, rule.enabled, text, media_type, now)


def _diff(rule_id: str, before: int, old: str, after: int | None, new: str) -> str:
    return "".join(
        difflib.unified_diff(
            _lines(old),
            _lines(new),
            fromfile=f"{rule_id}@v{before}" if old else "/dev/null",
            tofile=f"{rule_id}@v{after}" if after is not None else "/dev/null",
        )
    )


def _lines(text: str) -> list[str]:
    """The text's lines, each ended (a last line without one ran into the next line of the
    diff: a JSON document sent on one line showed its change as one line, '-old+new')."""
    return [line if line.endswith("\n") else line + "\n" for line in text.splitlines(True)]


_ENABLED_LINE = re.compile(r"^enabled[ \t]*:.*$", re.MULTILINE)
_ID_LINE = re.compile(r"^id[ \t]*:.*$", re.MULTILINE)


def _with_enabled(source: str, media_type: str, enabled: bool) -> str:
    word = "true" if enabled else "false"
    if media_type == JSON:  # written again in its own layout: one line, or indented
        document = json.loads(source)
        document["enabled"] = enabled
        if "\n" not in source.strip():
            return json.dumps(document, ensure_ascii=False) + source[len(source.rstrip()) :]
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if _ENABLED_LINE.search(source):
        text = _ENABLED_LINE.sub(f"enabled: {word}", source, count=1)
    elif (found := _ID_LINE.search(source)) is not None:
        text = f"{source[: found.end()]}\nenabled: {word}{source[found.end() :]}"
    else:  # a document in flow style: write it out again (comments are lost)
        document = yaml.safe_load(source)
        document["enabled"] = enabled
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    if parse_rule(text).enabled is not enabled:
        raise RuleError([RuleProblem(None, "enabled", None, "could not set 'enabled' in the text")])
    return text
