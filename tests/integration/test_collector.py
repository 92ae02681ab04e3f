"""The collector over real HTTP against real Redis and SQL, as the SDKs and curl see it."""

from __future__ import annotations

import base64
import gzip
import json
import select
import socket
import uuid

import httpx
import pytest
import redis
from sqlmodel import Session

from app.credentials import create_write_key
from app.db import make_engine
from app.main import create_app
from app.settings import Settings
from app.streams import partition_of
from tests.factories import stored_events, track
from tests.helpers import ServerThread, proxied, run_dataflow, through_proxy


def post(api, path: str, body, key: str | None, **kwargs) -> httpx.Response:
    auth = (key, "") if key else None
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{api.url}{path}", content=content, auth=auth, timeout=10, **kwargs)


def test_batch_stores_each_message_once_and_names_the_bad_ones(api, credentials, redis_client):
    key = credentials["write_key"]
    good = [track("alice"), track("bob", "Product Added"), track("carol")]
    bad = {"type": "track", "event": "Product Viewed", "messageId": "no-ids"}
    response = post(api, "/v1/batch", {"batch": [good[0], bad, good[1], good[2]]}, key)

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert (body["accepted"], body["duplicates"]) == (3, 0)
    assert body["errors"] == [
        {"index": 1, "messageId": "no-ids", "error": "userId or anonymousId is required"}
    ]
    stored = stored_events(redis_client)
    assert sorted(e.message_id for e in stored) == sorted(m["messageId"] for m in good)
    assert {e.source for e in stored} == {credentials["source"]}

    failed = httpx.get(
        f"{api.url}/api/failed-events",
        headers={"Authorization": f"Bearer {credentials['admin_token']}"},
    ).json()["items"]
    assert [item["reason"] for item in failed] == ["userId or anonymousId is required"]
    assert json.loads(failed[0]["raw"]) == bad
    assert failed[0]["source"] == credentials["source"]


def test_a_retried_batch_is_acknowledged_but_not_stored_again(api, credentials, redis_client):
    batch = {"batch": [track("alice"), track("alice")]}
    first = post(api, "/v1/batch", batch, credentials["write_key"]).json()
    again = post(api, "/v1/batch", batch, credentials["write_key"]).json()

    assert (first["accepted"], first["duplicates"]) == (2, 0)
    assert (again["accepted"], again["duplicates"]) == (0, 2)
    assert len(stored_events(redis_client)) == 2


def test_a_message_id_is_deduplicated_per_source(api, credentials, redis_client, services):
    """The same id from two sources is two events; from one source it is one, whichever
    customer it names (it was per partition: two customers of different partitions both
    stored, two sources of one customer dropped each other's)."""
    engine = make_engine(services.settings())
    other = f"app-{uuid.uuid4().hex[:6]}"
    with Session(engine) as session:
        other_key = create_write_key(session=session, name=other)
        session.commit()
    engine.dispose()
    key = credentials["write_key"]
    alice = track("alice")
    bob = next(  # a customer of another partition than alice's, sending alice's id
        {**track(name), "messageId": alice["messageId"]}
        for name in (f"bob-{n}" for n in range(100))
        if partition_of(name, 4) != partition_of("alice", 4)
    )
    answers = [
        post(api, "/v1/batch", {"batch": [alice]}, key).json(),
        post(api, "/v1/batch", {"batch": [alice]}, other_key).json(),  # another source
        post(api, "/v1/batch", {"batch": [bob]}, key).json(),  # the first source's id again
        post(api, "/v1/batch", {"batch": [alice]}, other_key).json(),  # a retry
    ]
    assert [(a["accepted"], a["duplicates"]) for a in answers] == [(1, 0), (1, 0), (0, 1), (0, 1)]
    stored = stored_events(redis_client)
    assert sorted((e.customer_id, e.source) for e in stored) == sorted(
        [("alice", credentials["source"]), ("alice", other)]
    )


def test_same_message_id_twice_in_one_batch_is_stored_once(api, credentials, redis_client):
    message = track("alice")
    body = post(api, "/v1/batch", {"batch": [message, message]}, credentials["write_key"]).json()
    assert (body["accepted"], body["duplicates"]) == (1, 1)
    assert len(stored_events(redis_client)) == 1


def test_single_calls_take_the_type_from_the_path(api, credentials, redis_client):
    key = credentials["write_key"]
    calls = {
        "/v1/track": {"userId": "u", "event": "Signed Up"},
        "/v1/identify": {"userId": "u", "traits": {"plan": "pro"}},
        "/v1/page": {"anonymousId": "a", "name": "Home"},
        "/v1/screen": {"userId": "u", "name": "Cart"},
        "/v1/alias": {"userId": "u", "previousId": "a"},
        "/v1/group": {"userId": "u", "groupId": "g1", "traits": {"name": "ACME"}},
    }
    for path, body in calls.items():
        response = post(api, path, body, key)
        assert response.status_code == 200, (path, response.text)
        assert response.json()["accepted"] == 1

    by_type = {e.type: e for e in stored_events(redis_client)}
    assert set(by_type) == {"track", "identify", "page", "screen", "alias", "group"}
    assert by_type["identify"].traits == {"plan": "pro"}
    assert by_type["page"].customer_id == "a"
    assert by_type["page"].event == "Home"
    assert (by_type["alias"].customer_id, by_type["alias"].previous_id) == ("u", "a")
    assert all(e.message_id for e in by_type.values())  # generated when absent


def test_write_key_in_the_body_is_accepted(api, credentials, redis_client):
    body = {"writeKey": credentials["write_key"], "batch": [track()]}
    assert post(api, "/v1/batch", body, None).json()["accepted"] == 1


@pytest.mark.parametrize(
    ("key", "message"),
    [(None, "no write key"), ("sk_wrong", "the write key is not valid")],
)
def test_a_missing_or_wrong_write_key_is_401(api, redis_client, key, message):
    response = post(api, "/v1/batch", {"batch": [track()]}, key)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert message in response.json()["message"]
    assert stored_events(redis_client) == []


def test_gzip_bodies_are_accepted(api, credentials, redis_client):
    body = gzip.compress(json.dumps({"batch": [track(), track()]}).encode())
    response = post(
        api, "/v1/batch", body, credentials["write_key"], headers={"Content-Encoding": "gzip"}
    )
    assert response.json()["accepted"] == 2


def test_every_gzip_member_is_read_and_trailing_garbage_refused(api, credentials, redis_client):
    """``gzip -c a b`` writes two members: both are the body (the first alone was read, and
    the rest silently dropped)."""
    text = json.dumps({"batch": [track("ann"), track("bo")]}).encode()
    middle = len(text) // 2
    two = gzip.compress(text[:middle]) + gzip.compress(text[middle:])
    gz = {"Content-Encoding": "gzip"}
    response = post(api, "/v1/batch", two, credentials["write_key"], headers=gz)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    junk = post(
        api, "/v1/batch", gzip.compress(text) + b"junk", credentials["write_key"], headers=gz
    )
    assert (junk.status_code, junk.json()["code"]) == (400, "invalid_gzip")
    assert len(stored_events(redis_client)) == 2


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/v1/batch", b"{not json", {}, 400, "invalid_json"),
        ("/v1/batch", b"[1, 2]", {}, 400, "invalid_json"),
        ("/v1/batch", b'{"batch": {"type": "track"}}', {}, 400, "invalid_batch"),
        ("/v1/batch", b'{"batch": []}', {"Content-Encoding": "gzip"}, 400, "invalid_gzip"),
        (
            "/v1/batch",
            gzip.compress(b'{"batch": []}')[:-6],
            {"Content-Encoding": "gzip"},
            400,
            "invalid_gzip",
        ),
        ("/v1/track", b'{"userId": "u"}', {}, 400, "invalid_message"),
        ("/v1/track", b'{"userId": 12.5, "event": "x"}', {}, 400, "invalid_message"),
        (
            "/v1/track",
            b'{"userId": "u", "event": "x", "timestamp": "yesterday"}',
            {},
            400,
            "invalid_message",
        ),
        (
            "/v1/track",
            b'{"userId": "u", "event": "x", "timestamp": 1700000000}',
            {},
            400,
            "invalid_message",
        ),
        ("/v1/track", b'{"userId": "u\\u0000", "event": "x"}', {}, 400, "invalid_message"),
        ("/v1/track", b'{"userId": "u", "event": "\\ud800"}', {}, 400, "invalid_json"),
        (
            "/v1/identify",
            b'{"userId": "u", "traits": ["not", "an", "object"]}',
            {},
            400,
            "invalid_message",
        ),
        ("/v1/track", b"\xff\xfe\x00", {}, 400, "invalid_json"),
        (
            "/v1/track",
            b'{"userId": "u"}',
            {"Content-Encoding": "deflate"},
            415,
            "unsupported_encoding",
        ),
    ],
)
def test_bad_input_gets_a_4xx_in_segments_error_shape(
    api, credentials, redis_client, path, body, headers, status, code
):
    response = post(api, path, body, credentials["write_key"], headers=headers)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["success"] is False
    assert payload["code"] == code
    assert payload["message"]
    if body.startswith(b"\xff"):  # said as it is, not as orjson's surrogate at char 0
        assert payload["message"] == "body is not UTF-8 text: byte 0 is 0xff"
    assert stored_events(redis_client) == []


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"42", b"null"])
def test_a_refused_body_from_a_known_source_is_kept(api, credentials, redis_client, body):
    response = post(api, "/v1/batch", body, credentials["write_key"])
    assert (response.status_code, response.json()["code"]) == (400, "invalid_json")
    headers = {"Authorization": f"Bearer {credentials['admin_token']}"}
    (kept,) = httpx.get(f"{api.url}/api/failed-events", headers=headers).json()["items"]
    assert kept["raw"] == body.decode()
    assert kept["reason"].startswith(("body is not JSON", "body is not a JSON object"))


def test_a_message_nested_too_deeply_is_refused_alone(api, credentials, redis_client):
    """orjson reads 1,024 levels and writes 254: a message between the two was a 500 that
    lost its whole batch (and SDKs retry a 5xx for ever)."""
    key = credentials["write_key"]
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(300):
        inner["a"] = {}
        inner = inner["a"]  # type: ignore[assignment]
    good, bad = track("alice"), track("bob", properties=deep)
    response = post(api, "/v1/batch", {"batch": [good, bad]}, key)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    assert response.json()["errors"] == [
        {
            "index": 1,
            "messageId": bad["messageId"],
            "error": "message is nested more than 254 levels deep",
        }
    ]
    assert [e.message_id for e in stored_events(redis_client)] == [good["messageId"]]
    single = post(api, "/v1/track", bad, key)
    assert (single.status_code, single.json()["code"]) == (400, "invalid_message")
    failed = httpx.get(
        f"{api.url}/api/failed-events",
        headers={"Authorization": f"Bearer {credentials['admin_token']}"},
    ).json()["items"]
    assert [item["reason"] for item in failed] == [
        "message is nested more than 254 levels deep"
    ] * 2
    assert json.loads(failed[0]["raw"])["messageId"] == bad["messageId"]


def test_unicode_is_kept_exactly(api, credentials, redis_client):
    message = track("ユーザー🙂", "Produkt angesehen ✓", properties={"note": "tab\there \u0001"})
    assert (
        post(api, "/v1/batch", {"batch": [message]}, credentials["write_key"]).json()["accepted"]
        == 1
    )
    (event,) = stored_events(redis_client)
    assert event.customer_id == "ユーザー🙂"
    assert event.event == "Produkt angesehen ✓"
    assert event.properties == {"note": "tab\there \u0001"}


def test_size_limits_follow_segment(api, credentials, redis_client):
    key = credentials["write_key"]
    big = track(properties={"blob": "x" * 33_000})
    in_batch = post(api, "/v1/batch", {"batch": [big, track()]}, key)
    assert in_batch.status_code == 200
    assert in_batch.json()["accepted"] == 1
    assert "larger than 32 KB" in in_batch.json()["errors"][0]["error"]

    single = post(api, "/v1/track", big, key)
    assert (single.status_code, single.json()["code"]) == (413, "message_too_large")

    huge = {"batch": [track(properties={"blob": "y" * 20_000}) for _ in range(30)]}
    too_large = post(api, "/v1/batch", huge, key)
    assert (too_large.status_code, too_large.json()["code"]) == (413, "request_too_large")

    bomb = gzip.compress(b'{"batch": [' + b" " * 2_000_000 + b"]}")
    unzipped = post(api, "/v1/batch", bomb, key, headers={"Content-Encoding": "gzip"})
    assert (unzipped.status_code, unzipped.json()["code"]) == (413, "request_too_large")
    assert len(stored_events(redis_client)) == 1


def test_clock_skew_is_corrected_like_segment(api, credentials, redis_client):
    # The device clock is an hour fast; the event happened 2 s before the batch was sent.
    message = track(timestamp=None, originalTimestamp="2030-01-01T12:59:58Z")
    body = {"batch": [message], "sentAt": "2030-01-01T13:00:00Z"}
    assert post(api, "/v1/batch", body, credentials["write_key"]).json()["accepted"] == 1
    (event,) = stored_events(redis_client)
    assert 1_900 <= event.received_at - event.timestamp <= 2_100


# The cut resets the API's pooled Redis connections under its feet; a socket of one that
# asyncio notices unclosed only when it is collected says nothing about the collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_store_unreachable_is_503_and_claims_nothing(services, credentials, redis_client):
    url = redis.Redis.from_url(services.redis_url).connection_pool.connection_kwargs
    with proxied(url.get("host", "127.0.0.1"), url["port"]) as proxy:
        # no background refits or samples through the proxy: the requests alone go through it
        settings = services.settings(
            REDIS_URL=through_proxy(services.redis_url, proxy.port),
            SEGFLOW_CLUSTER_REFIT_INTERVAL_S=0,
            SEGFLOW_SEGMENT_HISTORY_INTERVAL_S=3600,
        )
        with ServerThread(create_app(settings)) as api:
            key = credentials["write_key"]
            proxy.cut()
            down = post(api, "/v1/batch", {"batch": [track("alice")]}, key)
            assert down.status_code == 503
            assert down.json()["code"] == "store_unavailable"
            assert down.headers["retry-after"]
            assert stored_events(redis_client) == []

            proxy.restore()
            message = track("alice")
            assert post(api, "/v1/batch", {"batch": [message]}, key).json()["accepted"] == 1
            assert post(api, "/v1/batch", {"batch": [message]}, key).json()["duplicates"] == 1


def test_admin_endpoints_need_the_bearer_token(api, credentials):
    assert httpx.get(f"{api.url}/api/failed-events").status_code == 401
    wrong = httpx.get(f"{api.url}/api/failed-events", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "detail" in wrong.json()


def test_failed_events_are_paged_newest_first(api, credentials, redis_client):
    bad = [{"type": "track", "event": "x", "messageId": f"bad-{i}"} for i in range(5)]
    post(api, "/v1/batch", {"batch": bad}, credentials["write_key"])
    headers = {"Authorization": f"Bearer {credentials['admin_token']}"}
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = httpx.get(f"{api.url}/api/failed-events", params=params, headers=headers).json()
        seen += [json.loads(item["raw"])["messageId"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"bad-{i}" for i in reversed(range(5))]


def test_failed_events_keep_no_write_key(api, credentials, redis_client):
    key = credentials["write_key"]
    bad = {"type": "track", "userId": "wk", "writeKey": key}  # a track needs an event
    assert post(api, "/v1/batch", {"writeKey": key, "batch": [bad]}, None).status_code == 200
    text = b'{"userId": "wk", "writeKey": "' + key.encode() + b'", not json'
    assert post(api, "/v1/track", text, key).status_code == 400
    headers = {"Authorization": f"Bearer {credentials['admin_token']}"}
    items = httpx.get(f"{api.url}/api/failed-events", headers=headers).json()["items"]
    assert len(items) == 2
    assert all(key not in item["raw"] for item in items)
    assert all('"writeKey":"(hidden)"' in item["raw"].replace(" ", "") for item in items)
    assert not [entry for entry in redis_client.xrange("failed-events") if key.encode() in
                b"".join(entry[1].values())]  # fmt: skip


def test_health_readiness_and_metrics(api, credentials, redis_client, settings):
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    waiting = httpx.get(f"{api.url}/readyz")
    assert waiting.status_code == 503  # no dataflow has run on this Redis yet
    assert waiting.json()["checks"]["dataflow"].startswith("not running")
    run_dataflow(settings)  # its source leaves a heartbeat that lasts a few seconds
    ready = httpx.get(f"{api.url}/readyz").json()
    assert ready["ready"] is True
    assert ready["checks"] == {"redis": "ok", "sql": "ok", "dataflow": "ok"}

    def counter(name: str) -> float:
        text = httpx.get(f"{api.url}/metrics").text
        return sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
        )

    before = [
        counter(n)
        for n in (
            "segflow_events_accepted_total",
            "segflow_events_duplicate_total",
            "segflow_events_failed_total",
        )
    ]
    message = track()
    post(
        api, "/v1/batch", {"batch": [message, message, {"type": "track"}]}, credentials["write_key"]
    )
    after = [
        counter(n)
        for n in (
            "segflow_events_accepted_total",
            "segflow_events_duplicate_total",
            "segflow_events_failed_total",
        )
    ]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    assert "segflow_collector_request_seconds_bucket" in httpx.get(f"{api.url}/metrics").text


def test_readiness_names_the_part_that_is_down(services, credentials, redis_client):
    settings = Settings(
        REDIS_URL="redis://127.0.0.1:1/0",
        DATABASE_URL=services.database_url,
        SEGFLOW_DATA_DIR=services.data_dir,
    )
    with ServerThread(create_app(settings)) as api:
        response = httpx.get(f"{api.url}/readyz", timeout=10)
    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("unreachable")
    assert response.json()["checks"]["sql"] == "ok"


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize(
    ("path", "auth", "shape"),
    [("/v1/batch", "basic", "message"), ("/api/destinations", "bearer", "detail")],
)
def test_a_body_that_stops_coming_gets_408_and_the_connection_is_closed(
    services, credentials, redis_client, path, auth, shape
):
    """Headers, part of the body, then nothing: the connection was held for as long as the
    client liked. Now the read gives up after the idle timeout, answers 408 and closes."""
    settings = services.settings(SEGFLOW_BODY_IDLE_TIMEOUT_S=0.5, SEGFLOW_BODY_TIMEOUT_S=30)
    if auth == "basic":
        token = base64.b64encode(f"{credentials['write_key']}:".encode()).decode()
        authorization = f"Basic {token}"
    else:
        authorization = f"Bearer {credentials['admin_token']}"
    with ServerThread(create_app(settings)) as api:
        sock = socket.create_connection(("127.0.0.1", api.port), timeout=60)
        with sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n"
                "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                '{"batch": ['.encode()
            )
            answer = _answer(sock)  # the server closes: recv returns b"" at the end
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    assert "did not arrive in time" in json.loads(body)[shape]
    assert stored_events(redis_client) == []


def test_a_body_trickled_byte_by_byte_is_cut_off_at_the_total_timeout(
    services, credentials, redis_client
):
    """Each byte within the idle timeout, never the whole body: the total timeout ends it."""
    settings = services.settings(SEGFLOW_BODY_IDLE_TIMEOUT_S=30, SEGFLOW_BODY_TIMEOUT_S=2)
    token = base64.b64encode(f"{credentials['write_key']}:".encode()).decode()
    with ServerThread(create_app(settings)) as api:
        sock = socket.create_connection(("127.0.0.1", api.port), timeout=60)
        with sock:
            sock.sendall(
                f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
                "Content-Length: 100000\r\n\r\n".encode()
            )
            answered = False
            for _ in range(100_000):  # a byte every 0.1 s: the body would take hours
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable:
                    answered = True
                    break
                sock.sendall(b" ")
            assert answered, "the server kept reading the trickle"
            answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"code":"request_timeout"' in answer
    assert stored_events(redis_client) == []
