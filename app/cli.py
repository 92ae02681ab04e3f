"""The ``segflow`` command: each subcommand calls one function of the package."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
import httpx
import redis
from bytewax.recovery import init_db_dir as init_recovery
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlmodel import Session

from app import bootstrap, migrate, redis_server
from app import demo as shop
from app.clustering import store as cluster_store
from app.clustering.choices import DEFAULT_SAMPLE, FAMILIES, MIN_PROFILES
from app.clustering.model import ClusterModel, membership
from app.clustering.summary import distinguishing
from app.credentials import (
    DuplicateNameError,
    EnvironmentTokenError,
    UnknownCredentialError,
    bump_credentials_revision,
    create_admin_token,
    create_write_key,
    revoke_admin_tokens,
    revoke_write_key,
)
from app.db import make_engine
from app.dispatch import outbox
from app.ingest.replay import FORMATS, ReplayError, replay_file
from app.profiles.keys import members_key
from app.redis_client import async_redis, masked_url, wait_until_ready_sync
from app.redis_server import redis_url_for
from app.settings import Settings, get_settings
from app.streams import PROGRESS_KEY
from app.supervisor import ProcessSpec, Supervisor, end_leftovers
from pipelines.examples import check_rule_files
from pipelines.placement import mark_recovery_store, settle_recovery_store
from pipelines.retention import StreamTrimmer
from pipelines.segmentation import prepare_rules

if TYPE_CHECKING:
    from app.clustering.service import Refit

err = Console(stderr=True)


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness probe


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors(include_input=False, include_url=False)
        )
        raise click.ClickException(f"bad environment setting: {problems}") from None


@click.group()
@click.version_option(package_name="segflow")
def main() -> None:
    """Segflow: real-time customer segmentation."""
    # What Segflow and the processes it starts create (the data dir: SQLite, Redis's AOF, the
    # recovery store, keys) is the owner's only: files 0600, directories 0700.
    os.umask(0o077)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--demo", is_flag=True, help="Also run the simulated shop.")
@click.option(
    "--pipeline/--no-pipeline",
    default=True,
    show_default=True,
    help="Run the dataflow and the dispatcher here (--no-pipeline: an API-only node).",
)
def up(host: str, port: int, demo: bool, pipeline: bool) -> None:
    """Start the API (and the stages that exist) and keep them running until Ctrl-C."""
    _configure_logging()
    settings = _settings()
    data_dir = settings.data_dir.resolve()
    with _data_dir_lock(data_dir):
        _make_private(data_dir)
        # A killed run's api may hold the port until the kernel has ended it.
        ended = end_leftovers(data_dir / PROCESSES_FILE)
        _check_port_free(host, port, wait_s=10.0 if ended else 0.0)
        embedded = None if settings.redis_url else redis_server.supervised(data_dir)
        try:
            _serve(settings, data_dir, embedded, host=host, port=port, demo=demo, pipeline=pipeline)
        finally:
            if embedded is not None:
                embedded.forget()


LOCK_FILE = "segflow.lock"
PROCESSES_FILE = "processes.json"  # the process groups `segflow up` runs (``Supervisor``)


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One `segflow up` (or `segflow rebuild`) per data dir: a second `up` would end the
    first one's processes and run a second dataflow on its recovery store. The lock goes with
    this process (the kernel lets go of it however it ends), so a start after a crash is not
    refused."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise click.ClickException(
                f"{data_dir} is in use by `segflow up` (pid {holder}); stop it first "
                "(Ctrl-C in its terminal), or give this command another SEGFLOW_DATA_DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def _make_private(data_dir: Path) -> None:
    """Narrow what an earlier version left readable to others: the data dir holds hashed
    credentials, the events, Redis's password and the key sealing webhook secrets."""
    data_dir.chmod(0o700)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o600)


def _check_port_free(host: str, port: int, *, wait_s: float = 0.0) -> None:
    """Refuse a port something already listens on (after ``wait_s`` of trying), before
    anything is prepared or printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind((host, port))
                return
            except OSError as error:
                if time.monotonic() >= deadline:
                    raise click.ClickException(
                        f"cannot listen on {host}:{port}: {error.strerror}; another program "
                        "may be using it (choose another with --port)"
                    ) from None
        time.sleep(0.1)


def _serve(
    settings: Settings,
    data_dir: Path,
    embedded: redis_server.SupervisedRedis | None,
    *,
    host: str,
    port: int,
    demo: bool,
    pipeline: bool,
) -> None:
    """Prepare the database, then supervise the processes (the embedded Redis first, unless
    ``REDIS_URL`` names one) until Ctrl-C."""
    redis_url = embedded.url if embedded else str(settings.redis_url)
    env = {"SEGFLOW_DATA_DIR": str(data_dir), "REDIS_URL": redis_url}
    first = bootstrap.prepare(settings, demo_shop=DEMO_SHOP_SOURCE if demo else None)
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters restart with the processes
    metrics_dir.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    base = f"http://{_display_host(host)}:{port}"
    api = ProcessSpec(
        "api",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            str(settings.effective_api_workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
    )
    specs = [api]
    if embedded is not None:
        specs.insert(0, ProcessSpec("redis", embedded.argv, on_start=embedded.record))
    if pipeline:
        specs.append(ProcessSpec("pipeline", [sys.executable, "-m", "app.cli", "pipeline"]))
        specs.append(ProcessSpec("dispatcher", [sys.executable, "-m", "app.cli", "dispatcher"]))
        if settings.clustering == "stream":
            specs.append(
                ProcessSpec(
                    "cluster-stream", [sys.executable, "-m", "app.cli", "cluster", "stream"]
                )
            )
    if first.demo_shop_key:
        specs.append(
            ProcessSpec(
                "demo-shop",
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "demo",
                    "--url",
                    base,
                    "--rate",
                    f"{DEMO_RATE:g}",
                    "--wait",
                    "120",
                ],
                {DEMO_KEY_VARIABLE: first.demo_shop_key},
            )
        )
    supervisor = Supervisor(
        specs, base_env={**os.environ, **env}, state_file=data_dir / PROCESSES_FILE
    )

    def announce() -> None:
        _wait_until_up(f"{base}/healthz")
        click.echo(f"Segflow is up at {base}")
        click.echo(f"  admin UI: {base}/admin (log in there with the admin token)")
        if first.admin_token:
            click.echo(f"  admin token (shown once, keep it): {first.admin_token}")
        elif settings.admin_token is not None:
            click.echo("  admin token: the value of SEGFLOW_ADMIN_TOKEN")
        else:
            click.echo(
                "  admin token: the one printed at first start "
                "(lost it? `segflow token create NAME` prints a new one)"
            )
        click.echo(f"  API docs: {base}/docs")
        if first.demo_write_key:
            click.echo(f"  demo write key (shown once): {first.demo_write_key}")
        if first.demo_shop_key:
            click.echo(
                f"  demo shop: simulated shoppers send about {DEMO_RATE:g} events/s; "
                f"segments fill within a minute: {base}/admin/segments"
            )
        click.echo("Press Ctrl-C to stop.")

    supervisor.run(on_started=announce)


DEMO_SHOP_SOURCE = "demo-shop"
DEMO_RATE = 20.0  # events per second from `segflow up --demo`'s simulated shop
DEMO_KEY_VARIABLE = "SEGFLOW_DEMO_WRITE_KEY"


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - display only


def _wait_until_up(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    err.print(f"[yellow]the API did not answer {url} within {timeout_s:.0f} s; still trying[/]")


RECOVERY_PARTITIONS = 1


@main.command()
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Bytewax worker threads in each of its processes (they share one interpreter).",
)
@click.option(
    "--processes",
    default=None,
    type=click.IntRange(1, 64),
    help="Processes the dataflow runs as, one per core to give it (default: "
    "SEGFLOW_PIPELINE_PROCESSES, 1).",
)
@click.option(
    "--recovery/--no-recovery",
    default=True,
    show_default=True,
    help="Snapshot state under SEGFLOW_DATA_DIR/recovery and resume from it.",
)
def pipeline(workers: int, processes: int | None, recovery: bool) -> None:
    """Run the segmentation dataflow (features, profiles) until stopped: as one Bytewax
    cluster of PROCESSES processes of WORKERS threads, each worker reading, computing and
    writing its own stream partitions."""
    settings = _settings()
    processes = processes or settings.pipeline_processes
    argv = [
        sys.executable,
        "-m",
        "bytewax.run",
        "pipelines.segmentation:flow_from_env()",
        "-w",
        str(workers),
    ]
    env = {k: v for k, v in os.environ.items() if k != "SEGFLOW_RECOVERY_DIR"}
    directory: Path | None = None
    set_aside: Path | None = None
    if recovery:
        directory = (settings.data_dir / "recovery").resolve()
        set_aside = settle_recovery_store(
            directory, settings.partitions, time.strftime("%Y%m%d-%H%M%S")
        )
        if set_aside is not None:
            err.print(
                f"[yellow]the recovery state in {directory} holds shards of another layout (an "
                f"older Segflow, or another SEGFLOW_PARTITIONS): moved to {set_aside} (delete "
                "it once the rebuild is done); this start reads every stream from its start and "
                "rebuilds each customer, as after `segflow rebuild`[/]"
            )
        if not directory.exists():
            directory.mkdir(parents=True)
            init_recovery(directory, RECOVERY_PARTITIONS)  # type: ignore[no-untyped-call]
            mark_recovery_store(directory, settings.partitions)
        interval = settings.snapshot_interval_s
        argv += ["-r", str(directory), "-s", str(interval), "-b", "0"]
        # the flow compacts it after erasures (pipelines.erasure)
        env["SEGFLOW_RECOVERY_DIR"] = str(directory)
    with redis_url_for(settings.redis_url, settings.data_dir) as url:
        try:
            wait_until_ready_sync(url, who="dataflow")
        except redis.AuthenticationError as error:
            raise click.ClickException(
                f"dataflow: Redis at {masked_url(url)} refused the password: {error}"
            ) from None
        if set_aside is not None:  # its shards' progress: the new ones count from the start
            with contextlib.closing(redis.Redis.from_url(url)) as client:
                client.delete(PROGRESS_KEY)
        # Beside the flow, the streams are trimmed behind its recovery state (none is
        # trimmed without recovery: each start then re-reads them whole).
        trimmer = StreamTrimmer(
            url,
            recovery=directory,
            partitions=settings.partitions,
            retention_ms=settings.stream_retention_ms,
            failed_events_kept=settings.failed_events_kept,
            every_s=settings.trim_interval_s,
        )
        prepare_rules(settings)  # once, not by each process of the cluster at once
        with trimmer:
            code = run_cluster(argv, processes, {**env, "REDIS_URL": url})
    raise SystemExit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N


CLUSTER_STOP_S = 10.0  # how long the other processes of a cluster get to stop on SIGTERM


def run_cluster(
    argv: list[str], processes: int, env: dict[str, str], cwd: Path | None = None
) -> int:
    """Run ``argv`` (a ``bytewax.run``) as ``processes`` processes of one cluster on the
    loopback until they end; the exit code (negative: killed by that signal). One that fails
    stops the others (a cluster cannot go on without a process), so whoever supervises this
    command restarts them all together from the recovery state."""
    ports = [redis_server.free_port() for _ in range(processes)] if processes > 1 else []
    addresses = ";".join(f"127.0.0.1:{port}" for port in ports)
    commands = (
        [[*argv, "-i", str(i), "-a", addresses] for i in range(processes)] if ports else [argv]
    )
    running: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            running.append(subprocess.Popen(command, env=env, cwd=cwd))  # noqa: S603 - our argv
            if ports and len(running) == 1:
                _wait_listening(running[0], ports[0])
        while True:
            ended = [process.returncode for process in running if process.poll() is not None]
            failed = [code for code in ended if code != 0]
            if failed or len(ended) == len(running):
                break
            time.sleep(0.2)
    except BaseException:  # as subprocess.call does: the flow does not outlive us
        for process in running:
            process.kill()
            process.wait()
        raise
    _stop_all(running)
    return failed[0] if failed else 0


def _wait_listening(first: subprocess.Popen[bytes], port: int, timeout_s: float = 60.0) -> None:
    """Wait until the cluster's first process listens on ``port`` (it does once its flow is
    built), so the others do not start by failing to connect to it, with a line of log per
    retry. Read from /proc/net/tcp, which opens no connection to it; where there is none (not
    Linux), or it ends, or the wait times out, the others start anyway and retry."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        return
    wanted = f":{port:04X}"
    deadline = time.monotonic() + timeout_s
    while first.poll() is None and time.monotonic() < deadline:
        for line in table.read_text().splitlines()[1:]:
            _, local, _, state, *_ = line.split()
            if local.endswith(wanted) and state == "0A":  # 0A: LISTEN
                return
        time.sleep(0.05)


def _stop_all(running: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process still running, then SIGKILL those not ended within
    ``CLUSTER_STOP_S``."""
    for process in running:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + CLUSTER_STOP_S
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@main.command()
def rebuild() -> None:
    """Set the dataflow's recovery state aside: its next start rebuilds every customer from the
    streams (when recovery cannot resume, e.g. "too old to resume")."""
    data_dir = _settings().data_dir.resolve()
    with _data_dir_lock(data_dir):
        recovery = data_dir / "recovery"
        if not recovery.exists():
            click.echo(f"no recovery state in {data_dir}: the dataflow starts from the streams")
            return
        aside = data_dir / f"recovery.old-{time.strftime('%Y%m%d-%H%M%S')}"
        recovery.rename(aside)
        click.echo(f"recovery state moved to {aside} (delete it once the rebuild is done)")
        click.echo(
            "the next `segflow up` reads every stream from its start and rebuilds each "
            "customer's profile, segments and transitions (triggers already sent are not "
            "sent again for 7 days)"
        )


@main.command()
def dispatcher() -> None:
    """Deliver rule triggers as signed webhooks (retries, dead letters) until stopped."""
    settings = _settings()
    with redis_url_for(settings.redis_url, settings.data_dir) as url:
        try:
            asyncio.run(outbox.run(settings, url))
        except outbox.RedisLost as error:  # one line, no traceback: `segflow up` restarts it
            raise click.ClickException(f"dispatcher: {error}") from None
        except redis.AuthenticationError as error:
            raise click.ClickException(
                f"dispatcher: Redis at {masked_url(url)} refused the password: {error}"
            ) from None


@main.command(name="migrate")
def migrate_command() -> None:
    """Create or upgrade the SQL tables."""
    migrate.migrated(_settings())
    click.echo("database is up to date")


@main.group()
def writekey() -> None:
    """Write keys: what the SDKs send to prove which source they are."""


@writekey.command(name="create")
@click.argument("name")
def writekey_create(name: str) -> None:
    """Create a write key called NAME and print it (alone on the last line)."""
    try:
        key = _create_secret(
            _settings(), lambda session: create_write_key(session=session, name=name)
        )
    except (DuplicateNameError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"write key for source {name!r} (shown once; only its hash is stored):")
    click.echo(key)


@writekey.command(name="revoke")
@click.argument("name")
def writekey_revoke(name: str) -> None:
    """Revoke the write key of source NAME: the collector answers 401 to it from now on
    (`writekey create NAME` then makes the source a new key)."""
    settings = _settings()
    with migrate.migrated_session(settings) as session:
        try:
            row = revoke_write_key(session=session, name=name)
        except UnknownCredentialError as error:
            raise click.ClickException(str(error)) from None
        prefix = row.key_prefix
    _spread_revocation(settings)
    click.echo(f"write key {name!r} ({prefix}...) revoked")


def _spread_revocation(settings: Settings) -> None:
    """Tell the running API processes (through Redis) that their cached checks are stale."""
    try:
        with redis_url_for(settings.redis_url, settings.data_dir) as url:
            client = async_redis(url)

            async def bump() -> None:
                try:
                    await bump_credentials_revision(client)
                finally:
                    await client.aclose()

            asyncio.run(bump())
    except (redis.RedisError, OSError, redis_server.EmbeddedRedisError) as error:
        err.print(
            f"[yellow]revoked in the database, but Redis is unreachable ({error}): running "
            "API processes refuse it within 5 seconds[/]"
        )


def _create_secret(settings: Settings, create: Callable[[Session], str]) -> str:
    """Run ``create`` in a committed session of an up-to-date database; its secret."""
    with migrate.migrated_session(settings) as session:
        return create(session)


@main.group()
def token() -> None:
    """Admin tokens for the admin API and UI."""


@token.command(name="create")
@click.argument("name")
def token_create(name: str) -> None:
    """Create an admin token called NAME and print it (alone on the last line)."""
    value = _create_secret(
        _settings(), lambda session: create_admin_token(session=session, name=name)
    )
    click.echo(f"admin token {name!r} (shown once; only its hash is stored):")
    click.echo(value)


@token.command(name="revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke every admin token called NAME: the admin API answers 401 to them from now on."""
    settings = _settings()
    with migrate.migrated_session(settings) as session:
        try:
            count = revoke_admin_tokens(session=session, name=name)
        except (UnknownCredentialError, EnvironmentTokenError) as error:
            raise click.ClickException(str(error)) from None
    _spread_revocation(settings)
    click.echo(f"{count} admin token{'' if count == 1 else 's'} named {name!r} revoked")


@main.group()
def rules() -> None:
    """Segment rules: YAML documents with examples."""


@rules.command(name="check")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def rules_check(path: Path) -> None:
    """Validate the rule file PATH, or every *.yaml rule in the directory PATH, and run their
    examples; print each problem (rule, field, line) and fail if there is any."""
    checked = check_rule_files(path)
    for item in checked.rules:
        if not item.problems:
            count = len(item.rule.examples)
            click.echo(f"ok  {item.rule.id}  {count} example{'' if count == 1 else 's'}")
    for problem in checked.problems:
        click.echo(str(problem), err=True)
    if not checked.ok:
        found = len(checked.problems)
        ran = "" if checked.rules else "; no example was run"
        raise click.ClickException(f"{found} problem{'' if found == 1 else 's'}{ran}")


@main.group()
def cluster() -> None:
    """Behavioural clusters: refit the model now, or show the current one."""


@cluster.command(name="fit")
@click.option(
    "--sample-size",
    default=DEFAULT_SAMPLE,
    show_default=True,
    type=click.IntRange(MIN_PROFILES, 1_000_000),
    help="Fit on at most this many profiles (a uniform sample).",
)
@click.option(
    "--algorithms",
    default=",".join(FAMILIES),
    show_default=True,
    help="The candidate families to fit, comma-separated.",
)
def cluster_fit(sample_size: int, algorithms: str) -> None:
    """Refit the cluster model now on a sample of the profiles, publish it to the running
    dataflow, and print every candidate judged (the chosen one marked) and the clusters."""
    from app.clustering import service as cluster_service  # scikit-learn: a second to load
    from app.clustering.fitting import TooFewProfiles

    families = [name.strip() for name in algorithms.split(",") if name.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise click.BadParameter(
            f"{', '.join(unknown) or 'none given'}: choose among {', '.join(FAMILIES)}",
            param_hint="--algorithms",
        )
    settings = _settings()
    migrate.migrated(settings)
    engine = make_engine(settings, pooled=False)
    progress = Progress(
        TextColumn("[bold]cluster fit[/] {task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )
    with redis_url_for(settings.redis_url, settings.data_dir) as url:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=60)
        try:
            with progress:
                # the sample, then one step per family (ids, names and publishing follow)
                task = progress.add_task("starting", total=len(families) + 1)

                def phase(name: str) -> None:
                    started = progress.tasks[0].description != "starting"
                    shown = name if name == "sampling profiles" else f"fitting {name}"
                    progress.update(task, advance=int(started), description=shown)

                refit = cluster_service.refit(
                    client,
                    engine,
                    reason="cli",
                    sample_size=sample_size,
                    families=families,
                    progress=phase,
                )
                progress.update(task, completed=len(families) + 1, description="published")
        except (TooFewProfiles, cluster_service.RefitBusy) as error:
            raise click.ClickException(str(error)) from None
        except redis.RedisError as error:
            raise click.ClickException(
                f"Redis is unreachable at {masked_url(url)}: {error}"
            ) from None
        finally:
            client.close()
            engine.dispose()
    _print_candidates(refit)


def _number(value: object, digits: int = 3) -> str:
    return "—" if not isinstance(value, int | float) else f"{value:,.{digits}f}"


def _print_candidates(refit: Refit) -> None:
    console = Console(width=max(Console().width, 160))  # a table too wide for 80 columns
    table = Table(title=f"candidates on {refit.sample_size:,} profiles (a quarter held back)")
    for name in ("algorithm", "params", "clusters", "silhouette", "Davies-Bouldin"):
        table.add_column(name, justify="left" if name in ("algorithm", "params") else "right")
    for name in ("Calinski-Harabasz", "noise share", "fit s", "chosen", "note"):
        table.add_column(name, justify="left" if name in ("chosen", "note") else "right")
    for candidate in refit.fit.candidates:
        quality = candidate.quality
        chosen = candidate is refit.fit.chosen
        table.add_row(
            candidate.algorithm,
            ", ".join(f"{k}={v}" for k, v in candidate.params.items()),
            str(len(candidate.sizes)),
            _number(quality.get("silhouette")),
            _number(quality.get("davies_bouldin")),
            _number(quality.get("calinski_harabasz"), 1),
            _number(quality.get("noise_share")),
            f"{candidate.fit_seconds:.2f}",
            "✓" if chosen else "",
            candidate.reason,
            style="bold" if chosen else None,
        )
    console.print(table)
    _print_clusters(console, refit.model, None)
    model = refit.model
    changes = [f"kept {', '.join(refit.kept)}" if refit.kept else ""]
    changes += [f"new {', '.join(refit.added)}" if refit.added else ""]
    changes += [f"retired {', '.join(refit.retired)}" if refit.retired else ""]
    click.echo(
        f"model version {model.version} published: {model.algorithm}, "
        f"{len(model.clusters)} clusters ({'; '.join(c for c in changes if c)})"
    )


def _print_clusters(console: Console, model: ClusterModel, live: list[int] | None) -> None:
    table = Table(title="clusters")
    table.add_column("id")
    table.add_column("name")
    if live is not None:
        table.add_column("members now", justify="right")
    table.add_column("in the sample", justify="right")
    table.add_column("outlier share", justify="right")
    table.add_column("what sets it apart")
    shares = model.quality.get("outlier_shares", {})
    for i, cluster in enumerate(model.clusters):
        traits = "; ".join(trait.shown() for trait in distinguishing(model, cluster))
        row = [cluster.id, cluster.name]
        if live is not None:
            row.append(f"{live[i]:,}")
        row += [f"{cluster.size:,}", _number(shares.get(cluster.id)), traits or "typical"]
        table.add_row(*row)
    console.print(table)


@cluster.command(name="show")
def cluster_show() -> None:
    """Print the current cluster model: algorithm, quality, and each cluster's members now,
    outlier share and what sets it apart."""
    settings = _settings()
    with redis_url_for(settings.redis_url, settings.data_dir) as url:
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        try:
            model = cluster_store.published(client)
            if model is None:
                raise click.ClickException(
                    "no cluster model yet: run `segflow cluster fit` (it needs at least "
                    f"{MIN_PROFILES} profiles)"
                )
            live = [int(client.scard(members_key(membership(i)))) for i in model.ids]
        except redis.RedisError as error:
            raise click.ClickException(
                f"Redis is unreachable at {masked_url(url)}: {error}"
            ) from None
        finally:
            client.close()
    fitted = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(model.fitted_at / 1000))
    params = ", ".join(f"{k}={v}" for k, v in model.params.items())
    click.echo(f"model version {model.version}: {model.algorithm} ({params}), fitted {fitted}")
    quality = model.quality
    click.echo(
        f"silhouette {_number(quality.get('silhouette'))}, "
        f"Davies-Bouldin {_number(quality.get('davies_bouldin'))}, "
        f"Calinski-Harabasz {_number(quality.get('calinski_harabasz'), 1)}, "
        f"outlier share {_number(quality.get('outlier_share'))}, "
        f"sample {quality.get('sample_size', '?')} profiles"
    )
    _print_clusters(Console(width=max(Console().width, 160)), model, live)


@cluster.command(name="stream")
def cluster_stream() -> None:
    """Keep the clusters on the stream (SEGFLOW_CLUSTERING=stream; `segflow up` runs it): learn
    from the dataflow's feature snapshots and publish the centres every
    SEGFLOW_CLUSTER_STREAM_INTERVAL_S, between the batch refits, until stopped."""
    from app.clustering import stream

    _configure_logging()
    settings = _settings()
    if settings.clustering != "stream":
        raise click.ClickException(
            f"SEGFLOW_CLUSTERING is {settings.clustering!r}: the stream clusterer runs only "
            "with SEGFLOW_CLUSTERING=stream (the dataflow then sends it the snapshots)"
        )
    migrate.migrated(settings)
    engine = make_engine(settings, pooled=False)
    with redis_url_for(settings.redis_url, settings.data_dir) as url:
        try:
            wait_until_ready_sync(url, who="stream clusterer")
            client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
            stream.run(
                client,
                engine,
                interval_s=settings.cluster_stream_interval_s,
                memory=settings.cluster_stream_memory,
            )
        except redis.RedisError as error:  # one line, no traceback: `segflow up` restarts it
            raise click.ClickException(f"stream clusterer: {error}") from None
        finally:
            engine.dispose()


@main.command()
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Where Segflow's collector listens.",
)
@click.option(
    "--write-key",
    envvar=DEMO_KEY_VARIABLE,
    required=True,
    help=f"The write key to send with (or {DEMO_KEY_VARIABLE}).",
)
@click.option(
    "--rate",
    default=DEMO_RATE,
    show_default=True,
    type=click.FloatRange(0.1, 10_000),
    help="Events per second.",
)
@click.option("--shoppers", default=200, show_default=True, type=click.IntRange(1))
@click.option("--seed", type=int, default=None, help="Make the shoppers' choices repeatable.")
@click.option(
    "--wait",
    "wait_s",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="Seconds to wait for the collector to come up (by default it must answer at once).",
)
def demo(
    url: str, write_key: str, rate: float, shoppers: int, seed: int | None, wait_s: float
) -> None:
    """Run the simulated shop: browsing, cart-abandoning and buying shoppers, live. It says
    what it sends every few seconds, and stops at once when nothing answers at --url."""
    with contextlib.suppress(KeyboardInterrupt):
        shop.run(
            url=url,
            write_key=write_key,
            rate=rate,
            shoppers=shoppers,
            seed=seed,
            wait_s=wait_s,
            echo=click.echo,
        )


BENCHMARKS = (
    "ingest",
    "pipeline",
    "latency",
    "crash",
    "rules",
    "dispatch",
    "corrections",
    "retention",
    "rule_saves",
    "admin_pages",
    "clustering",
    "instructions",
)  # bench/NAME.py


@main.command(
    context_settings={"ignore_unknown_options": True}, add_help_option=False, options_metavar=""
)
@click.argument("name", required=False, metavar=f"[{'|'.join(BENCHMARKS)}]")
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def bench(ctx: click.Context, name: str | None, options: tuple[str, ...]) -> None:
    """Run the benchmark bench/NAME.py (from a source checkout; `ingest` when no NAME is
    given) with its OPTIONS; it prints a table with its floor. `segflow bench NAME --help`
    lists the benchmark's own options."""
    if name in ("--help", "-h"):
        click.echo(ctx.get_help())
        return
    if name is not None and name not in BENCHMARKS:
        raise click.BadParameter(f"{name!r} is not one of {', '.join(BENCHMARKS)}", ctx)
    name = name or "ingest"
    script = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    if not script.is_file():
        raise click.ClickException(f"{script} not found: benchmarks run from a source checkout")
    raise SystemExit(subprocess.call([sys.executable, str(script), *options]))  # noqa: S603


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "file_format",
    type=click.Choice(FORMATS),
    default=None,
    help="The file's layout; by default told from its name or CSV header.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=1, min_open=False),
    default=None,
    help="Append at most this many events per second (default: as fast as Redis takes them).",
)
def replay(file: Path, file_format: str | None, rate: float | None) -> None:
    """Replay FILE's events into Segflow in event-time order."""
    settings = _settings()
    progress = Progress(
        TextColumn("[bold]replay[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    with redis_url_for(settings.redis_url, settings.data_dir) as url:
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        try:
            with progress:
                task = progress.add_task(file.name, total=None)
                summary = replay_file(
                    file,
                    client=client,
                    partitions=settings.partitions,
                    dedup_ttl_s=settings.dedup_window_s,
                    file_format=file_format,  # type: ignore[arg-type]
                    on_progress=lambda rows: progress.update(task, completed=rows),
                    rate=rate,
                )
        except ReplayError as error:
            raise click.ClickException(str(error)) from None
        except redis.RedisError as error:
            raise click.ClickException(
                f"Redis is unreachable at {masked_url(url)}: {error}"
            ) from None
        finally:
            client.close()
    table = Table(title=f"replay of {file}")
    table.add_column("rows read", justify="right")
    table.add_column("accepted", justify="right")
    table.add_column("duplicate", justify="right")
    table.add_column("failed", justify="right")
    table.add_row(
        *(f"{n:,}" for n in (summary.rows, summary.accepted, summary.duplicates, summary.failed))
    )
    Console().print(table)
    for reason, count in summary.reasons.most_common(10):
        click.echo(f"  failed {count:,} x {reason}")
    click.echo(
        f"accepted={summary.accepted} duplicates={summary.duplicates} failed={summary.failed}"
    )
    if summary.failed and not summary.accepted and not summary.duplicates:
        raise click.ClickException(f"{file}: no row could be replayed (failed events keep them)")


if __name__ == "__main__":
    main()
