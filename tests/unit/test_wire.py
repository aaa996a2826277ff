"""The version-1 mail wire schema: encode/decode round trip and every reason a body is refused."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from app import wire

ULID_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
UUID_ID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
SENT_AT = datetime(2026, 12, 3, 17, 26, 41, 822470, tzinfo=timezone.utc)
#: A field value meaning "leave this field out".
DROP = object()


def make_mail(**changes) -> wire.Mail:
    """Return a valid mail, with ``changes`` applied."""
    fields = dict(id=ULID_ID, sender="alice", to=("bob",), cc=("carol",), bcc=("dave",),
                  subject="Lunch?", body="Noon.", in_reply_to=None, sent_at=SENT_AT)
    fields.update(changes)
    return wire.Mail(**fields)


def document(**changes) -> dict:
    """Return a valid version-1 JSON document with ``changes`` applied (DROP leaves a field out)."""
    doc = json.loads(wire.encode_mail(make_mail()))
    doc.update(changes)
    return {key: value for key, value in doc.items() if value is not DROP}


def encoded(**changes) -> bytes:
    """Return a version-1 body built from :func:`document`."""
    return json.dumps(document(**changes)).encode("utf-8")


def refused(body: bytes, limits: wire.Limits = wire.Limits()) -> wire.WireError:
    """Decode ``body``, expecting a WireError; return it."""
    with pytest.raises(wire.WireError) as caught:
        wire.decode_mail(body, limits)
    assert caught.value.detail
    return caught.value


# -- encoding and the round trip -------------------------------------------------------------


def test_encode_writes_the_documented_fields():
    body = wire.encode_mail(make_mail(in_reply_to=UUID_ID))
    assert json.loads(body) == {
        "v": 1,
        "kind": "mail",
        "id": ULID_ID,
        "from": "alice",
        "to": ["bob"],
        "cc": ["carol"],
        "bcc": ["dave"],
        "subject": "Lunch?",
        "body": "Noon.",
        "in_reply_to": UUID_ID,
        "sent_at": "2026-12-03T17:26:41.822470Z",
    }
    assert wire.MAIL_TYPE == "postroom.mail.v1" and wire.CONTENT_TYPE == "application/json"


@pytest.mark.parametrize(
    "mail",
    [
        make_mail(),
        make_mail(id=UUID_ID, cc=(), bcc=(), in_reply_to=ULID_ID),
        make_mail(to=(), cc=(), bcc=("carol",)),
        make_mail(subject="", body=""),
        make_mail(subject="Grüße 🌍 \u200b", body="tab\t CRLF\r\n \\ \" ' </script> \u2028 ＡＢＣ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x7f"),
        make_mail(sent_at=datetime(2026, 1, 1, tzinfo=timezone.utc)),
    ],
    ids=["plain", "uuid-and-reply", "bcc-only", "empty-text", "unicode", "whole-second"],
)
def test_round_trip(mail):
    body = wire.encode_mail(mail)
    body.decode("utf-8")
    assert wire.decode_mail(body) == mail


def test_encoding_is_utf8_not_ascii_escapes():
    body = wire.encode_mail(make_mail(body="🌍 é"))
    assert "🌍 é".encode("utf-8") in body


def test_sent_at_in_another_zone_is_converted_to_utc():
    paris = timezone(timedelta(hours=1))
    mail = make_mail(sent_at=datetime(2026, 12, 3, 18, 26, 41, 822470, tzinfo=paris))
    assert json.loads(wire.encode_mail(mail))["sent_at"] == "2026-12-03T17:26:41.822470Z"
    assert wire.decode_mail(encoded(sent_at="2026-12-03T18:26:41.822470+01:00")).sent_at == SENT_AT


def test_decode_canonicalizes_ids():
    mail = wire.decode_mail(encoded(id=ULID_ID.lower(), in_reply_to=UUID_ID.upper()))
    assert mail.id == ULID_ID and mail.in_reply_to == UUID_ID


def test_decode_treats_missing_optional_fields_as_empty():
    mail = wire.decode_mail(encoded(cc=DROP, bcc=DROP, subject=DROP, body=DROP, in_reply_to=DROP))
    assert (mail.cc, mail.bcc, mail.subject, mail.body, mail.in_reply_to) == ((), (), "", "", None)


def test_decode_drops_repeated_recipients():
    mail = wire.decode_mail(encoded(to=["bob", "carol", "bob"], cc=["carol", "dave"], bcc=["bob", "erin", "dave"]))
    assert (mail.to, mail.cc, mail.bcc) == (("bob", "carol"), ("dave",), ("erin",))


def test_exactly_at_every_limit_is_accepted():
    limits = wire.Limits(max_body_bytes=8, max_subject_chars=3, max_recipients=3)
    mail = wire.decode_mail(encoded(to=["bob", "carol"], cc=["dave"], bcc=["bob"], subject="𝔘𝔘𝔘", body="🌍🌍"), limits)
    assert mail.recipients() == ["bob", "carol", "dave"] and mail.body == "🌍🌍"
    wire.decode_mail(encoded(body="x" * 262144, subject="s" * 998, to=[f"u{i}" for i in range(100)], cc=[], bcc=[]))


# -- every reason a body is refused --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"\xff", encoded(subject="x").replace(b'"x"', b'"\xc3"'), b'{"v":1,"subject":"\xed\xa0\x80"}', b"\xc0\xaf"],
    ids=["ff", "truncated-sequence", "encoded-surrogate", "overlong"],
)
def test_invalid_encoding(body):
    assert refused(body).code == "invalid_encoding"


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"{'v': 1}", b'{"v":1,}', encoded()[:-1], encoded() + b"x", b"[" * 100000, b'{"a":' * 100000],
    ids=["empty", "open-brace", "single-quotes", "trailing-comma", "truncated", "trailing-data", "deep-lists",
         "deep-objects"],
)
def test_invalid_json(body):
    assert refused(body).code == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"mail"',
        b"1",
        b"null",
        encoded(id=DROP),
        encoded(id=1),
        encoded(**{"from": DROP}),
        encoded(**{"from": "Alice"}),
        encoded(**{"from": ["alice"]}),
        encoded(to="bob"),
        encoded(to=["bob", 1]),
        encoded(cc={"bob": True}),
        encoded(bcc=[None]),
        encoded(subject=5),
        encoded(body={"text": "x"}),
        encoded(in_reply_to=5),
        encoded(sent_at=DROP),
        encoded(sent_at=1700000000),
        encoded(sent_at="yesterday"),
        encoded(sent_at="2026-12-03T17:26:41"),  # no time zone
        encoded(sent_at="2026-13-03T17:26:41Z"),
    ],
    ids=lambda b: b.decode()[:60],
)
def test_invalid_schema(body):
    assert refused(body).code == "invalid_schema"


@pytest.mark.parametrize(
    "changes",
    [{"v": 2}, {"v": 0}, {"v": "1"}, {"v": DROP}, {"kind": "post"}, {"kind": DROP}, {"kind": "Mail"}],
    ids=repr,
)
def test_unsupported_version(changes):
    assert refused(encoded(**changes)).code == "unsupported_version"


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "a\x00b"},
        {"body": "\x00"},
        {"body": "lone \ud800"},
        {"subject": "lone \udfff"},
        {"body": "reversed \udc00\ud800"},
        {"to": ["bob\x00"]},
        {"in_reply_to": "\ud800"},
        {"extra\x00": 1},
    ],
    ids=repr,
)
def test_invalid_character(changes):
    # json.dumps writes NUL and lone surrogates as \u escapes, as a client would.
    assert refused(encoded(**changes)).code == "invalid_character"


@pytest.mark.parametrize(
    "changes",
    [{"to": [], "cc": [], "bcc": []}, {"to": DROP, "cc": DROP, "bcc": DROP}],
    ids=["empty-lists", "absent-lists"],
)
def test_no_recipients(changes):
    assert refused(encoded(**changes)).code == "no_recipients"


def test_too_many_recipients():
    limits = wire.Limits(max_recipients=3)
    assert refused(encoded(to=["a1", "a2"], cc=["a3"], bcc=["a4"]), limits).code == "too_many_recipients"
    # Counted after repeats are dropped.
    wire.decode_mail(encoded(to=["a1", "a2"], cc=["a3"], bcc=["a1", "a2"]), limits)
    many = [f"user{i}" for i in range(101)]
    assert refused(encoded(to=many, cc=[], bcc=[])).code == "too_many_recipients"


def test_payload_too_large_counts_utf8_bytes():
    assert refused(encoded(body="x" * (256 * 1024 + 1))).code == "payload_too_large"
    # 100k characters are fewer than 256 Ki characters, but 300 000 bytes of UTF-8.
    assert refused(encoded(body="€" * 100_000)).code == "payload_too_large"
    limits = wire.Limits(max_body_bytes=8)
    assert refused(encoded(body="🌍🌍x"), limits).code == "payload_too_large"


def test_subject_too_long_counts_characters():
    assert refused(encoded(subject="s" * 999)).code == "subject_too_long"
    limits = wire.Limits(max_subject_chars=3)
    assert refused(encoded(subject="𝔘𝔘𝔘𝔘"), limits).code == "subject_too_long"


@pytest.mark.parametrize(
    "changes",
    [{"id": "not-an-id"}, {"id": ""}, {"id": ULID_ID + "X"}, {"in_reply_to": "not-an-id"}, {"in_reply_to": ""}],
    ids=repr,
)
def test_invalid_message_id(changes):
    assert refused(encoded(**changes)).code == "invalid_message_id"


def test_wire_errors_are_rule_errors():
    assert issubclass(wire.WireError, wire.rules.RuleError)


# -- recipients, content hash, times -----------------------------------------------------------


def test_normalize_recipients_keeps_the_first_mention_in_order():
    assert wire.normalize_recipients(["b", "a", "b"], ["c", "a"], ["d", "c", "e"]) == (("b", "a"), ("c",), ("d", "e"))
    assert wire.normalize_recipients([], [], []) == ((), (), ())


def test_recipients_lists_each_once_in_to_cc_bcc_order():
    assert make_mail(to=("bob", "carol"), cc=("bob", "dave"), bcc=("erin", "carol")).recipients() == [
        "bob", "carol", "dave", "erin"]


def test_content_hash_ignores_id_and_time_but_not_content():
    base = make_mail().content_hash()
    assert make_mail(id=UUID_ID, sent_at=SENT_AT + timedelta(days=1)).content_hash() == base
    for changes in ({"sender": "erin"}, {"to": ("carol",)}, {"cc": ()}, {"bcc": ("bob",)},
                    {"subject": "Lunch"}, {"body": "Noon"}, {"in_reply_to": UUID_ID}):
        assert make_mail(**changes).content_hash() != base, changes
    # Moving a name between lists is a different mail.
    assert make_mail(to=("bob", "carol"), cc=()).content_hash() != make_mail(to=("bob",), cc=("carol",)).content_hash()


def test_time_format_and_parse():
    assert wire.format_time(SENT_AT) == "2026-12-03T17:26:41.822470Z"
    assert wire.parse_time("2026-12-03T17:26:41.822470Z") == SENT_AT
    assert wire.parse_time("2026-12-03T19:26:41.822470+02:00") == SENT_AT
    with pytest.raises(ValueError):
        wire.parse_time("2026-12-03T17:26:41")
