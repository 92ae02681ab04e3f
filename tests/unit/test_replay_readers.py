"""Replay's file readers: each row of a Segment export, RetailRocket or REES46 file as a message."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from app.ingest.replay import (
    ReplayError,
    Row,
    detect_format,
    read_rees46,
    read_retailrocket,
    read_segment,
)

RETAILROCKET_HEADER = "timestamp,visitorid,event,itemid,transactionid"
REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)


def write(path: Path, *lines: str) -> Path:
    """A file of ``lines``; gzip-compressed when its name ends in .gz."""
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def instant(text: str) -> datetime:
    """A message timestamp as the instant it names (a zoneless time is UTC, as Segment reads it)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def message_ids(rows: list[Row]) -> list[str]:
    return [row.message["messageId"] for row in rows if row.message is not None]


# --- Segment JSONL -------------------------------------------------------------------------------


def test_segment_lines_are_read_as_messages(tmp_path: Path) -> None:
    first = {"type": "track", "userId": "u1", "event": "Product Viewed", "messageId": "m-1"}
    second = {"type": "identify", "anonymousId": "a-7", "traits": {"name": "Zoë"}}
    path = write(tmp_path / "export.jsonl", orjson.dumps(first).decode(), "", "  ")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(orjson.dumps(second).decode() + "\n")

    rows = list(read_segment(path))

    assert [row.line for row in rows] == [1, 4]  # blank lines are skipped, not counted twice
    assert rows[0].message == first  # a given messageId is kept
    assert rows[0].error is None
    assert rows[1].message is not None
    assert {k: v for k, v in rows[1].message.items() if k != "messageId"} == second
    assert rows[1].message["messageId"]


def test_segment_message_ids_come_from_the_line(tmp_path: Path) -> None:
    a = '{"type":"track","userId":"u1","event":"Product Viewed"}'
    b = '{"type":"track","userId":"u2","event":"Product Viewed"}'
    path = write(tmp_path / "export.jsonl", a, b, a)

    once, twice = message_ids(list(read_segment(path))), message_ids(list(read_segment(path)))

    assert once == twice  # replaying the file again stores nothing twice
    assert once[0] == once[2]  # the same line twice is the same message
    assert once[0] != once[1]


def test_segment_lines_that_are_not_json_are_errors_and_reading_goes_on(tmp_path: Path) -> None:
    path = write(
        tmp_path / "export.jsonl",
        '{"type":"track","userId":"u1","event":"A"}',
        '{"type":"track", oops',
        '{"type":"track","userId":"u1","event":"B"}',
    )

    rows = list(read_segment(path))

    assert [row.line for row in rows] == [1, 2, 3]
    assert rows[1].message is None
    assert rows[1].raw == '{"type":"track", oops'
    assert rows[1].error is not None
    assert rows[1].error.startswith("line 2:")
    assert "not JSON" in rows[1].error
    assert rows[2].message is not None
    assert rows[2].message["event"] == "B"


def test_segment_gzip_files_are_read(tmp_path: Path) -> None:
    path = write(tmp_path / "export.jsonl.gz", '{"type":"page","anonymousId":"a1","name":"Home"}')

    (row,) = read_segment(path)

    assert row.message is not None
    assert (row.message["type"], row.message["name"]) == ("page", "Home")


def test_a_segment_line_that_is_not_utf8_is_an_error_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(
        b'{"type":"track","userId":"u1","event":"A"}\n'
        b'{"type":"track","userId":"caf\xe9","event":"B"}\n'  # Latin-1, not UTF-8
        b'{"type":"track","userId":"u1","event":"C"}\n'
    )

    rows = list(read_segment(path))

    assert [row.line for row in rows] == [1, 2, 3]
    assert rows[1].message is None
    assert rows[1].error is not None
    assert "line 2" in rows[1].error


# --- RetailRocket --------------------------------------------------------------------------------


def test_retailrocket_rows_become_track_messages(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        RETAILROCKET_HEADER,
        "1433221332117,257597,view,355908,",
        "1433224214164,992329,addtocart,248676,",
        "1433193500981,121688,transaction,15335,11117",
    )

    view, cart, order = (row.message for row in read_retailrocket(path))

    assert view is not None
    assert cart is not None
    assert order is not None
    assert {k: v for k, v in view.items() if k != "messageId"} == {
        "type": "track",
        "userId": "257597",
        "event": "Product Viewed",
        "timestamp": view["timestamp"],
        "properties": {"product_id": "355908"},
    }
    # 1433221332117 ms after the epoch is 2015-06-02 05:02:12.117 UTC.
    assert instant(view["timestamp"]) == datetime(2015, 6, 2, 5, 2, 12, 117_000, tzinfo=UTC)
    assert (cart["event"], cart["userId"], cart["properties"]) == (
        "Product Added",
        "992329",
        {"product_id": "248676"},
    )
    assert instant(cart["timestamp"]) == datetime(2015, 6, 2, 5, 50, 14, 164_000, tzinfo=UTC)
    assert order["event"] == "Order Completed"
    assert order["properties"] == {"order_id": "11117", "products": [{"product_id": "15335"}]}
    assert instant(order["timestamp"]) == datetime(2015, 6, 1, 21, 18, 20, 981_000, tzinfo=UTC)


def test_retailrocket_rows_of_one_transaction_share_a_message_id(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        RETAILROCKET_HEADER,
        "1433193500981,121688,transaction,15335,11117",
        "1433193500981,121688,transaction,81345,11117",
        "1433193600000,121688,transaction,15335,11118",
    )

    first_item, second_item, other_order = message_ids(list(read_retailrocket(path)))

    assert first_item == second_item  # the order is one event; later items count as duplicates
    assert other_order != first_item


def test_retailrocket_message_ids_come_from_the_row(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        RETAILROCKET_HEADER,
        "1433221332117,257597,view,355908,",
        "1433221332117,257597,view,355909,",
        "1433221332118,257597,view,355908,",
        "1433221332117,257597,view,355908,",
    )

    once = message_ids(list(read_retailrocket(path)))

    assert once == message_ids(list(read_retailrocket(path)))
    assert len(set(once[:3])) == 3
    assert once[3] == once[0]


def test_retailrocket_bad_rows_are_errors_and_reading_goes_on(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        RETAILROCKET_HEADER,
        "1433221332117,257597,wishlist,355908,",  # an event RetailRocket does not have
        "yesterday,257597,view,355908,",
        "1433221332117,257597",  # cut short
        "1433221332117,257597,view,355908,",
    )

    rows = list(read_retailrocket(path))

    assert [row.line for row in rows] == [2, 3, 4, 5]
    for row in rows[:3]:
        assert row.message is None
        assert row.error is not None
        assert row.error.startswith(f"line {row.line}: ")
    assert rows[0].error is not None
    assert "wishlist" in rows[0].error
    assert rows[0].raw == "1433221332117,257597,wishlist,355908,"
    assert rows[3].message is not None
    assert rows[3].error is None


def test_retailrocket_gzip_files_are_read(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv.gz", RETAILROCKET_HEADER, "1433221332117,257597,view,1,")

    (row,) = read_retailrocket(path)

    assert row.message is not None
    assert (row.message["userId"], row.message["event"]) == ("257597", "Product Viewed")


def test_retailrocket_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        RETAILROCKET_HEADER,
        "1433221332117,257597,view,355908,",
        "",
        "1433221332117,257597,wishlist,355908,",
    )

    rows = list(read_retailrocket(path))

    assert rows[-1].line == 4
    assert rows[-1].error is not None
    assert rows[-1].error.startswith("line 4:")


# --- REES46 --------------------------------------------------------------------------------------


def test_rees46_rows_become_track_messages(tmp_path: Path) -> None:
    path = write(
        tmp_path / "2019-Oct.csv",
        REES46_HEADER,
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,"
        "72d76fde-8bb3-4e00-8c23-a032dfed738c",
        "2019-10-01 00:05:14 UTC,cart,5100816,2053013553375346967,electronics.smartphone,xiaomi,"
        "22.22,535871217,c7a7f9d1-4b1a-4e33-9b8a-eb3c7f5bc4a3",
        "2019-10-01 00:06:02 UTC,remove_from_cart,5100816,2053013553375346967,,,,535871217,",
        "2019-10-01 00:09:54 UTC,purchase,1004856,2053013555631882655,electronics.smartphone,"
        "samsung,130.76,543272936,8187d148-3c41-46d4-b0c0-9c08cd9dc564",
    )

    view, cart, removed, purchase = (row.message for row in read_rees46(path))

    assert view is not None
    assert cart is not None
    assert removed is not None
    assert purchase is not None
    assert {k: v for k, v in view.items() if k not in ("messageId", "timestamp")} == {
        "type": "track",
        "userId": "541312140",
        "event": "Product Viewed",
        "properties": {
            "product_id": "44600062",
            "category_id": "2103807459595387724",
            "category": None,
            "brand": "shiseido",
            "price": 35.79,
            "quantity": 1,
        },
        "context": {"session_id": "72d76fde-8bb3-4e00-8c23-a032dfed738c"},
    }
    assert instant(view["timestamp"]) == datetime(2019, 10, 1, tzinfo=UTC)
    assert cart["event"] == "Product Added"
    assert cart["properties"]["category"] == "electronics.smartphone"
    assert instant(cart["timestamp"]) == datetime(2019, 10, 1, 0, 5, 14, tzinfo=UTC)
    assert removed["event"] == "Product Removed"
    assert removed["properties"]["brand"] is None
    assert removed["properties"]["price"] is None
    assert removed["context"] == {"session_id": None}
    assert purchase["event"] == "Order Completed"
    assert purchase["properties"] == {
        "products": [
            {
                "product_id": "1004856",
                "category_id": "2053013555631882655",
                "category": "electronics.smartphone",
                "brand": "samsung",
                "price": 130.76,
                "quantity": 1,
            }
        ],
        "revenue": 130.76,
    }


def test_rees46_times_with_an_offset_keep_it(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        REES46_HEADER,
        "2019-10-01 02:00:00+02:00,view,1,2,,,1.00,7,s",
    )

    (row,) = read_rees46(path)

    assert row.message is not None
    assert instant(row.message["timestamp"]) == datetime(2019, 10, 1, tzinfo=UTC)


def test_rees46_message_ids_come_from_the_row(tmp_path: Path) -> None:
    row = "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,s1"
    other = "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312141,s1"
    path = write(tmp_path / "events.csv", REES46_HEADER, row, other, row)

    once = message_ids(list(read_rees46(path)))

    assert once == message_ids(list(read_rees46(path)))
    assert once[0] == once[2]  # REES46 repeats rows; the repeat is the same event
    assert once[0] != once[1]


def test_rees46_bad_rows_are_errors_and_reading_goes_on(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        REES46_HEADER,
        "2019-10-01 00:00:00 UTC,wishlist,1,2,,,1.00,7,s",
        "2019-10-01 00:00:00 UTC,view,1,2,,,cheap,7,s",
        "2019-10-01 00:00:00 UTC,view,1,2,,,1.00,7,s",
    )

    rows = list(read_rees46(path))

    assert [row.line for row in rows] == [2, 3, 4]
    assert rows[0].error is not None
    assert rows[0].error.startswith("line 2: ")
    assert "wishlist" in rows[0].error
    assert rows[1].error is not None
    assert rows[1].error.startswith("line 3: ")
    assert "cheap" in rows[1].error
    assert rows[0].message is None
    assert rows[1].message is None
    assert rows[2].message is not None


def test_rees46_gzip_files_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "2019-Nov.csv.gz", REES46_HEADER, "2019-11-01 00:00:00 UTC,cart,1,2,,,1,7,s"
    )

    (row,) = read_rees46(path)

    assert row.message is not None
    assert (row.message["userId"], row.message["event"]) == ("7", "Product Added")


# --- detect_format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["export.jsonl", "export.ndjson", "export.json", "export.jsonl.gz", "x.json.gz"]
)
def test_segment_files_are_known_by_their_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, '{"type":"track","userId":"u1","event":"A"}')

    assert detect_format(path) == "segment"


@pytest.mark.parametrize(
    ("name", "header", "expected"),
    [
        ("events.csv", RETAILROCKET_HEADER, "retailrocket"),
        ("events.csv", "visitorid, event ,ITEMID,timestamp", "retailrocket"),
        ("events.csv.gz", RETAILROCKET_HEADER, "retailrocket"),
        ("2019-Oct.csv", REES46_HEADER, "rees46"),
        ("2019-Oct.csv.gz", REES46_HEADER, "rees46"),
        ("data.txt", "user_id,event_type,event_time,product_id,price", "rees46"),
    ],
)
def test_csv_files_are_known_by_their_header(
    tmp_path: Path, name: str, header: str, expected: str
) -> None:
    assert detect_format(write(tmp_path / name, header)) == expected


@pytest.mark.parametrize("header", ["a,b,c", "visitorid,event", "", "event_time,event_type"])
def test_an_unknown_header_asks_for_the_format(tmp_path: Path, header: str) -> None:
    path = write(tmp_path / "mystery.csv", header)

    with pytest.raises(ReplayError, match="--format") as caught:
        detect_format(path)

    assert "mystery.csv" in str(caught.value)


def test_a_binary_file_asks_for_the_format(tmp_path: Path) -> None:
    path = tmp_path / "retailrocket.zip"
    path.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff\xfe\x00binary")

    with pytest.raises(ReplayError, match="--format"):
        detect_format(path)
