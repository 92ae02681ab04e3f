"""Credentials an operator controls: revoking write keys and admin tokens (through the API and
the CLI), a bootstrap token strong enough, a data dir only its owner reads, a Redis that wants
its password."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from sqlmodel import Session

from app.credentials import create_admin_token, create_write_key
from app.db import make_engine
from app.settings import Settings
from tests.conftest import Services
from tests.helpers import (
    SEGFLOW,
    ServerThread,
    free_port,
    start_segflow,
    wait_for,
    wait_for_line,
)


def _cli(services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEGFLOW_DATA_DIR": str(services.data_dir)}
    env["REDIS_URL"] = services.redis_url
    env.pop("DATABASE_URL", None)
    if services.database_url:
        env["DATABASE_URL"] = services.database_url
    return subprocess.run(
        [*SEGFLOW, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _new_write_key(settings: Settings) -> tuple[str, str]:
    name = f"src-{uuid.uuid4().hex[:8]}"
    engine = make_engine(settings)
    with Session(engine) as session:
        key = create_write_key(session=session, name=name)
        session.commit()
    engine.dispose()
    return name, key


def _new_admin_token(settings: Settings, name: str) -> str:
    engine = make_engine(settings)
    with Session(engine) as session:
        token = create_admin_token(session=session, name=name)
        session.commit()
    engine.dispose()
    return token


def _track(api: ServerThread, key: str) -> int:
    answer = httpx.post(f"{api.url}/v1/track", auth=(key, ""), json={"userId": "u", "event": "E"})
    return answer.status_code


def test_a_revoked_write_key_is_refused_at_the_next_request(
    services: Services, settings: Settings, api: ServerThread, credentials: dict[str, str]
) -> None:
    """There was no way to revoke a write key."""
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    by_api, key_a = _new_write_key(settings)
    by_cli, key_b = _new_write_key(settings)
    # the collector reloads on an unknown key at most once a second: both known to its cache
    wait_for(lambda: _track(api, key_a) == 200, what="the new key accepted")
    assert _track(api, key_b) == 200

    revoked = httpx.delete(f"{api.url}/api/write-keys/{by_api}", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["name"] == by_api
    assert _track(api, key_a) == 401  # at once, though the cache knew it

    done = _cli(services, "writekey", "revoke", by_cli)  # another process
    assert done.returncode == 0, done.stderr
    assert f"write key {by_cli!r}" in done.stdout
    assert _track(api, key_b) == 401

    assert _track(api, credentials["write_key"]) == 200  # the others work on
    unknown = httpx.delete(f"{api.url}/api/write-keys/nobody-{uuid.uuid4().hex}", headers=admin)
    assert unknown.status_code == 404
    missing = _cli(services, "writekey", "revoke", "nobody")
    assert missing.returncode != 0
    assert "no write key named 'nobody'" in missing.stderr
    # The source gets a new key under its name; the revoked one stays refused.
    again = _cli(services, "writekey", "create", by_cli)
    assert again.returncode == 0, again.stderr
    renewed = again.stdout.strip().splitlines()[-1]
    wait_for(lambda: _track(api, renewed) == 200, what="the renewed key accepted")
    assert _track(api, key_b) == 401


def test_a_revoked_admin_token_is_refused_at_the_next_call(
    services: Services, settings: Settings, api: ServerThread, credentials: dict[str, str]
) -> None:
    """There was no way to revoke an admin token."""
    admin = {"Authorization": f"Bearer {credentials['admin_token']}"}
    by_api = f"ops-{uuid.uuid4().hex[:8]}"
    by_cli = f"ops-{uuid.uuid4().hex[:8]}"
    tokens = [_new_admin_token(settings, by_api), _new_admin_token(settings, by_api)]
    cli_token = _new_admin_token(settings, by_cli)

    def status_with(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.get(f"{api.url}/api/segments", headers=headers).status_code

    assert [status_with(t) for t in [*tokens, cli_token]] == [200, 200, 200]  # cached now
    revoked = httpx.delete(f"{api.url}/api/admin-tokens/{by_api}", headers=admin)
    assert revoked.json() == {"name": by_api, "revoked": 2}
    assert [status_with(t) for t in tokens] == [401, 401]

    done = _cli(services, "token", "revoke", by_cli)
    assert done.returncode == 0, done.stderr
    assert "1 admin token named" in done.stdout
    assert status_with(cli_token) == 401
    assert status_with(credentials["admin_token"]) == 200

    bootstrap = httpx.delete(
        f"{api.url}/api/admin-tokens/admin (SEGFLOW_ADMIN_TOKEN)", headers=admin
    )
    assert bootstrap.status_code == 409
    assert "SEGFLOW_ADMIN_TOKEN" in bootstrap.json()["detail"]
    missing = _cli(services, "token", "revoke", "nobody")
    assert missing.returncode != 0
    assert "no admin token named 'nobody'" in missing.stderr


@pytest.mark.parametrize(
    ("value", "says"),
    [("tok3n", "has 5 characters; use at least 16"), ("", "is set but empty")],
)
def test_a_short_or_empty_admin_token_is_refused_at_start(
    tmp_path: Path, value: str, says: str
) -> None:
    """`SEGFLOW_ADMIN_TOKEN=a` was accepted; an empty one locked the operator out silently."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {"SEGFLOW_DATA_DIR": str(tmp_path / "data"), "SEGFLOW_ADMIN_TOKEN": value}
    done = subprocess.run(
        [*SEGFLOW, "up", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"SEGFLOW_ADMIN_TOKEN: {says}" in done.stderr, done.stderr
    if value:
        assert value not in done.stdout + done.stderr  # the message never shows it
    assert not (tmp_path / "data").exists()  # nothing started, nothing made


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)


def test_the_data_dir_is_private_and_the_embedded_redis_wants_its_password(
    tmp_path: Path,
) -> None:
    """Files were 0644 and the embedded Redis answered anyone on the machine."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "notes.txt").write_text("left by an older version")
    os.chmod(data / "notes.txt", 0o644)
    process, port, _env = start_segflow(data, api_workers=1)
    seen: list[str] = []
    try:
        wait_for_line(process, r"^\s+admin token", seen)
        key = wait_for_line(process, r"^\s+demo write key", seen).split()[-1]
        wait_for_line(process, r"Ctrl-C", seen)
        sent = httpx.post(
            f"http://127.0.0.1:{port}/v1/track",
            auth=(key, ""),
            json={"userId": "u", "event": "E"},
            timeout=30,
        )
        assert sent.status_code == 200, sent.text
        recovery = data / "recovery"
        deadline = time.monotonic() + 60
        while not any(recovery.glob("*")):  # the dataflow's first snapshot
            assert time.monotonic() < deadline, "the dataflow made no recovery store"
            time.sleep(0.2)

        port_of_redis = json.loads((data / "redis" / "server.json").read_text())["port"]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port_of_redis).ping()
        password = (data / "redis" / "password").read_text().strip()
        assert redis.Redis(port=port_of_redis, password=password).ping()
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
        seen.append(out)
    assert process.returncode == 0, "".join(seen)
    assert password not in "".join(seen)

    for required in ("segflow.db", "segflow.lock", "redis/appendonly.aof", "redis/password"):
        assert (data / required).exists(), required
    assert any(recovery.iterdir())
    assert _mode(data) == 0o700
    for path in data.rglob("*"):
        if path.is_symlink():
            continue
        wanted = 0o700 if path.is_dir() else 0o600
        assert _mode(path) == wanted, f"{path}: {oct(_mode(path))}"
    assert password not in (data / "redis" / "redis.log").read_text()
