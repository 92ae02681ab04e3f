"""docker-compose.yml and the Dockerfile stay true to the code, checked without running Docker.

Every name the deployment files use is looked up where the code defines it: environment
variables in ``Settings``' aliases, ``segflow`` subcommands in the click group, the uvicorn
target and flags in uvicorn's own option parser. A rename on either side fails here, naming what
drifted, instead of in a container at deploy time.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import ipaddress
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import Scope
from uvicorn.main import main as uvicorn_cli

from app.cli import main as segflow_cli
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SETTINGS_NAMES = frozenset(
    field.alias for field in Settings.model_fields.values() if field.alias is not None
)
# Read straight from os.environ rather than through Settings; each must still occur in its file.
PROCESS_ENV_NAMES = {"PROMETHEUS_MULTIPROC_DIR": ROOT / "app" / "metrics.py"}
CONTRACT_ENV = ("REDIS_URL", "DATABASE_URL", "SEGFLOW_DATA_DIR", "SEGFLOW_ADMIN_TOKEN")
SHELL_OPERATORS = frozenset({"&&", "||", ";", "|", "&"})

COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]

APP_IMAGE = next(spec.get("image") for spec in SERVICES.values() if "build" in spec)
# Services running Segflow's code: the one built here and those reusing its image.
APP_SERVICES = sorted(
    name for name, spec in SERVICES.items() if "build" in spec or spec.get("image") == APP_IMAGE
)


# --- compose's own syntax, interpreted as `docker compose` would --------------------------------

_VARIABLE = re.compile(
    r"\$(?:\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: str) -> str:
    """Compose's ``${VAR}`` substitution as if no variable were set in the shell.

    Defaults (``:-``) apply; required values (``:?``) become a placeholder, so the result never
    depends on the environment the tests happen to run in (CI sets REDIS_URL, for one).
    """

    def substitute(match: re.Match[str]) -> str:
        name = match["name"] or match["bare"]
        op = match["op"] or ""
        if op.endswith("-"):
            return str(match["arg"])
        if op.endswith("+"):
            return ""
        return f"{name.lower()}-value"

    parts = value.split("$$")  # an escaped dollar is not a variable
    return "$".join(_VARIABLE.sub(substitute, part) for part in parts)


def environment(service: str) -> dict[str, str]:
    """The service's environment as a mapping, whichever of compose's two forms it uses."""
    raw = SERVICES[service].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


def simple_commands(command: str | list[str]) -> list[tuple[list[str], str]]:
    """Split a command into the simple commands it runs, each with the operator after it.

    ``sh -c SCRIPT`` is split at ``&&``, ``;``, ``|`` ...; a leading ``exec`` and ``VAR=value``
    assignments are dropped, so ``exec uvicorn ...`` is seen as ``uvicorn ...``.
    """
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        lexer = shlex.shlex(argv[2], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    else:
        tokens = argv
    commands: list[tuple[list[str], str]] = []
    current: list[str] = []
    for token in [*tokens, ""]:
        if token in SHELL_OPERATORS or token == "":
            while current and (current[0] == "exec" or re.fullmatch(r"\w+=.*", current[0])):
                current.pop(0)
            if current:
                commands.append((current, token))
            current = []
        else:
            current.append(token)
    return commands


def program_args(argv: list[str], program: str, module: str) -> list[str] | None:
    """The arguments after ``program`` (or ``python -m module``), None for another program."""
    if Path(argv[0]).name == program:
        return argv[1:]
    if Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", module]:
        return argv[3:]
    return None


# --- the Dockerfile, instruction by instruction ------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def exec_form(arguments: str) -> list[str]:
    """CMD / ENTRYPOINT arguments: JSON exec form, or shell form run by ``sh -c``."""
    if arguments.startswith("["):
        parsed: list[str] = yaml.safe_load(arguments)  # JSON is YAML
        return parsed
    return ["sh", "-c", arguments]


# --- every command either file runs ------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    where: str
    argv: list[str]


def all_invocations() -> Iterator[Invocation]:
    for name, spec in SERVICES.items():
        for key in ("entrypoint", "command"):
            if spec.get(key):
                for argv, _ in simple_commands(spec[key]):
                    yield Invocation(f"services.{name}.{key}", argv)
    for keyword, arguments in dockerfile_instructions():
        if keyword in ("CMD", "ENTRYPOINT"):
            for argv, _ in simple_commands(exec_form(arguments)):
                yield Invocation(f"Dockerfile {keyword}", argv)


SEGFLOW_CALLS = [
    (call.where, args)
    for call in all_invocations()
    if (args := program_args(call.argv, "segflow", "app.cli")) is not None
]


def uvicorn_call(service: str) -> click.Context:
    """The service's uvicorn invocation parsed by uvicorn's own CLI (so bad flags fail here)."""
    calls = [
        args
        for call in all_invocations()
        if call.where.startswith(f"services.{service}.")
        and (args := program_args(call.argv, "uvicorn", "uvicorn")) is not None
    ]
    assert len(calls) == 1, f"services.{service} should run uvicorn once, found {calls}"
    try:
        return uvicorn_cli.make_context("uvicorn", list(calls[0]))
    except click.ClickException as error:
        pytest.fail(
            f"services.{service}: `uvicorn {shlex.join(calls[0])}`: {error.format_message()}"
        )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built in a test read only what the test gives them, not the runner's env."""
    for name in SETTINGS_NAMES:
        monkeypatch.delenv(name, raising=False)


# --- services -----------------------------------------------------------------------------------


def test_the_expected_services_exist() -> None:
    missing = {"redis", "postgres", "api", "pipeline", "dispatcher"} - SERVICES.keys()
    assert not missing, f"docker-compose.yml lacks the services {sorted(missing)}"
    assert SERVICES["redis"]["image"].split(":")[1].split(".")[0] == "7", "Redis should be 7"
    assert SERVICES["postgres"]["image"].split(":")[1].split(".")[0] == "15"
    assert "build" in SERVICES["api"], "services.api should be built from this repository"
    assert SERVICES["pipeline"]["image"] == SERVICES["api"]["image"], "one image for both"
    assert SERVICES["dispatcher"]["image"] == SERVICES["api"]["image"], "one image for all"


def test_api_and_dispatcher_share_the_data_dir_where_the_secret_key_is() -> None:
    """The API seals destination secrets that the dispatcher opens (app.dispatch.secret_box)."""

    def data_volume(service: str) -> str | None:
        data_dir = SERVICES[service]["environment"]["SEGFLOW_DATA_DIR"]
        volume: str
        for volume in SERVICES[service].get("volumes") or []:
            name, _, target = volume.partition(":")
            if target == data_dir:
                return name
        return None

    assert data_volume("api") is not None
    assert data_volume("api") == data_volume("dispatcher")


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    """Accepted events live in Redis Streams until processed; a restart must not lose them."""
    ((argv, _),) = simple_commands(SERVICES["redis"]["command"])
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert options.get("--appendonly") == "yes", f"redis runs {argv}, without --appendonly yes"
    targets = [volume.split(":")[1] for volume in SERVICES["redis"].get("volumes") or []]
    assert "/data" in targets, "Redis' append-only file should sit on a volume at /data"


@pytest.mark.parametrize("service", ["redis", "postgres"])
def test_the_api_starts_only_once_its_stores_are_healthy(service: str) -> None:
    assert SERVICES[service].get("healthcheck", {}).get("test"), f"{service} has no healthcheck"
    condition = SERVICES["api"]["depends_on"][service]["condition"]
    assert condition == "service_healthy", f"api depends on {service} with {condition!r}"


# --- environment --------------------------------------------------------------------------------


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_services_set_only_variables_the_code_reads(service: str) -> None:
    unknown = set(environment(service)) - SETTINGS_NAMES - PROCESS_ENV_NAMES.keys()
    assert not unknown, (
        f"services.{service}.environment sets {sorted(unknown)}, which Segflow never reads; "
        f"the names it reads are {sorted(SETTINGS_NAMES | PROCESS_ENV_NAMES.keys())}"
    )


@pytest.mark.parametrize(("name", "path"), list(PROCESS_ENV_NAMES.items()))
def test_variables_read_outside_settings_are_still_read(name: str, path: Path) -> None:
    assert name in path.read_text(), f"{path.relative_to(ROOT)} no longer reads {name}"


def test_dockerfile_sets_only_segflow_variables_the_code_reads() -> None:
    names = {
        match.group(1)
        for keyword, arguments in dockerfile_instructions()
        if keyword == "ENV"
        for match in re.finditer(r"(?:^|\s)(SEGFLOW_\w+)=", arguments)
    }
    assert not names - SETTINGS_NAMES, (
        f"Dockerfile ENV sets unknown {sorted(names - SETTINGS_NAMES)}"
    )


def test_api_environment_is_valid_production_settings(clean_env: None) -> None:
    """External Redis and PostgreSQL, a required admin token, values Settings accepts."""
    env = environment("api")
    missing = [name for name in (*CONTRACT_ENV, "SEGFLOW_PARTITIONS") if name not in env]
    assert not missing, f"services.api.environment lacks {missing}"
    assert re.fullmatch(r"\$\{SEGFLOW_ADMIN_TOKEN:\?[^}]+\}", env["SEGFLOW_ADMIN_TOKEN"]), (
        "SEGFLOW_ADMIN_TOKEN should be required from the operator: ${SEGFLOW_ADMIN_TOKEN:?...}"
    )
    values = {name: interpolate(value) for name, value in env.items() if name in SETTINGS_NAMES}
    settings = Settings(**values)  # type: ignore[arg-type]
    assert settings.effective_database_url.startswith("postgresql+psycopg://")
    mounts = [volume.split(":")[1] for volume in SERVICES["api"].get("volumes") or []]
    assert str(settings.data_dir) in mounts, (
        f"SEGFLOW_DATA_DIR={settings.data_dir} is not a volume of api (mounts: {mounts})"
    )


@pytest.mark.parametrize("service", APP_SERVICES)
def test_store_urls_point_at_the_compose_services(service: str) -> None:
    env = environment(service)
    redis_url = urlsplit(interpolate(env["REDIS_URL"]))
    assert redis_url.scheme in ("redis", "rediss"), f"REDIS_URL scheme {redis_url.scheme!r}"
    assert redis_url.hostname == "redis", f"REDIS_URL points at {redis_url.hostname!r}"

    database_url = urlsplit(interpolate(env["DATABASE_URL"]))
    postgres = environment("postgres")
    assert database_url.scheme in ("postgresql", "postgres"), f"DATABASE_URL {database_url.scheme}"
    assert database_url.hostname == "postgres", f"DATABASE_URL points at {database_url.hostname!r}"
    assert database_url.username == postgres["POSTGRES_USER"], "DATABASE_URL's user drifted"
    assert database_url.path.lstrip("/") == postgres["POSTGRES_DB"], "DATABASE_URL's db drifted"
    password_variable = re.match(r"\$\{(\w+)", postgres["POSTGRES_PASSWORD"])
    assert password_variable, "POSTGRES_PASSWORD should come from a variable, not the file"
    assert f"${{{password_variable[1]}" in env["DATABASE_URL"], "DATABASE_URL's password drifted"


# --- commands -----------------------------------------------------------------------------------


def test_segflow_is_invoked_somewhere() -> None:
    """Guards the test below: a parser that finds nothing would let every command drift."""
    assert any(where.startswith("services.api.") for where, _ in SEGFLOW_CALLS), SEGFLOW_CALLS
    assert any(where.startswith("Dockerfile") for where, _ in SEGFLOW_CALLS), SEGFLOW_CALLS


@pytest.mark.parametrize(
    ("where", "args"),
    SEGFLOW_CALLS,
    ids=[f"{w}: segflow {shlex.join(a)}" for w, a in SEGFLOW_CALLS],
)
def test_every_segflow_subcommand_exists(where: str, args: list[str]) -> None:
    """Walk the click group as the shell would; the leaf then parses its own options."""
    command: click.Command = segflow_cli
    path = ["segflow"]
    rest = list(args)
    while isinstance(command, click.Group):
        while rest and rest[0].startswith("-"):
            rest.pop(0)  # group options such as --version take no value
        assert rest, f"{where}: `{' '.join(path)}` is a group; which subcommand?"
        name = rest.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, (
            f"{where}: `{' '.join([*path, name])}`: {' '.join(path)} has no command {name!r}; "
            f"it has {sorted(command.commands)}"
        )
        command, path = sub, [*path, name]
    try:
        command.make_context(" ".join(path), list(rest))  # click consumes the list it parses
    except click.ClickException as error:
        pytest.fail(f"{where}: `segflow {shlex.join(args)}`: {error.format_message()}")


def test_api_migrates_then_serves_the_app_factory(clean_env: None) -> None:
    calls = list(simple_commands(SERVICES["api"]["command"]))
    programs = [Path(argv[0]).name for argv, _ in calls]
    assert programs == ["segflow", "uvicorn"], f"services.api.command runs {programs}"
    (migrate_argv, then), _ = calls
    assert migrate_argv[1:] == ["migrate"], f"api runs `{shlex.join(migrate_argv)}` first"
    assert then == "&&", f"api serves even when the migration failed (joined by {then!r})"

    params = uvicorn_call("api").params
    module_name, _, attribute = params["app"].partition(":")
    target = getattr(importlib.import_module(module_name), attribute, None)
    assert callable(target), f"uvicorn target {params['app']} is not a callable in the code"
    assert params["factory"], "create_app builds the app: uvicorn needs --factory"
    try:
        inspect.signature(target).bind()  # uvicorn calls the factory without arguments
    except TypeError as error:
        pytest.fail(f"uvicorn cannot call {params['app']}(): {error}")
    app = target(Settings())  # builds the app; nothing starts without the lifespan
    assert isinstance(app, FastAPI), f"{params['app']}() returned {type(app).__name__}"
    assert ipaddress.ip_address(params["host"]).is_unspecified, (
        f"uvicorn listens on {params['host']}: unreachable through the published port"
    )


def _published_container_ports(service: str) -> list[int]:
    ports: list[int] = []
    for entry in SERVICES[service].get("ports") or []:
        if isinstance(entry, dict):
            ports.append(int(entry["target"]))
        else:
            container = interpolate(str(entry)).rsplit(":", 1)[-1]
            ports.append(int(container.split("/")[0]))
    return ports


def test_published_port_matches_uvicorn_port() -> None:
    port = uvicorn_call("api").params["port"]
    published = _published_container_ports("api")
    assert published == [port], f"api publishes container ports {published}; uvicorn binds {port}"
    exposed = [args for keyword, args in dockerfile_instructions() if keyword == "EXPOSE"]
    assert exposed == [str(port)], f"Dockerfile EXPOSE {exposed}; uvicorn binds {port}"


def test_api_healthcheck_probes_readyz_on_the_served_port(clean_env: None) -> None:
    test = SERVICES["api"]["healthcheck"]["test"]
    probe = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[\w/-]*)", " ".join(test))
    assert probe, f"api's healthcheck calls no local URL: {test}"
    assert int(probe[1]) == uvicorn_call("api").params["port"], "healthcheck port drifted"
    assert probe[2] == "/readyz", f"api's healthcheck probes {probe[2]}, not /readyz"
    # Ask the router itself (FastAPI may nest included routers), as a GET would reach it.
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": probe[2],
        "root_path": "",
        "headers": [],
    }
    routes = create_app(Settings()).router.routes
    assert any(route.matches(scope)[0] == Match.FULL for route in routes), (
        f"GET {probe[2]} reaches no route of the app"
    )


# --- the image ----------------------------------------------------------------------------------


def test_image_builds_durable_rules_optimised_as_non_root() -> None:
    instructions = dockerfile_instructions()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert froms[-1].split()[0] == "python:3.11-slim", f"the image runs on {froms[-1]}"
    global_flags = any(
        keyword == "ENV" and "CPPFLAGS=-O2" in args for keyword, args in instructions
    )
    installs = [
        args
        for keyword, args in instructions
        if keyword == "RUN" and "pip install" in args and "--no-deps" not in args
    ]
    assert installs, "no RUN installs the dependencies"
    for args in installs:
        assert global_flags or "CPPFLAGS=-O2 pip install" in args, (
            f"durable-rules would build at -O0: set CPPFLAGS=-O2 on `{args}`"
        )
        assert "gcc" in args.split("pip install")[0], "gcc must be installed before durable-rules"
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"the image runs as {users[-1]}"


def test_migrate_finds_its_files_inside_the_image() -> None:
    """app/migrate.py reads alembic.ini and migrations/ beside the app package (its ROOT).

    A plain ``pip install .`` copies only the packages to site-packages, so the image installs
    the tree editable and must not leave those files out of the build context.
    """
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    editable = [args for args in runs if re.search(r"pip install .*(-e|--editable) \.", args)]
    assert editable, "the Dockerfile should `pip install -e .` so migrate.ROOT is the tree"
    assert ("COPY", ". .") in dockerfile_instructions(), "the tree is not copied whole"
    ignored = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("alembic.ini", "migrations/env.py", "app/migrate.py", "pyproject.toml"):
        parts = Path(needed).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hits = [rule for rule in ignored for p in prefixes if fnmatch.fnmatch(p, rule)]
        assert not hits, f".dockerignore {hits} leaves {needed} out of the image"
