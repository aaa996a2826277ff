"""Pure rules: usernames, message ids (ULID/UUID) and the characters text may hold."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from ulid import ULID

from app import rules

VALID_USERNAMES = [
    "ab",  # the shortest: 2 characters
    "a" * 32,  # the longest
    "alice",
    "0day",
    "a.b",
    "a_b",
    "a-b",
    "bob.smith-jr_2",
    "a.",  # dots may end a name; only the first character is restricted
]

INVALID_USERNAMES = [
    "",
    "a",  # too short
    "a" * 33,  # too long
    "Alice",  # uppercase
    "alicE",
    ".alice",  # leading dot
    "_alice",
    "-alice",
    "al ice",
    "alice!",
    "al/ice",
    "al*ce",
    "älice",  # not ASCII
    "alİce",
    "alice\n",  # `$` must not match before a trailing newline
    "\nalice",
    "alice\x00",
]


@pytest.mark.parametrize("name", VALID_USERNAMES)
def test_valid_usernames(name):
    assert rules.is_username(name)


@pytest.mark.parametrize("name", INVALID_USERNAMES, ids=repr)
def test_invalid_usernames(name):
    assert not rules.is_username(name)


@pytest.mark.parametrize("value", [None, 42, b"alice", ["alice"]], ids=repr)
def test_non_strings_are_not_usernames(value):
    assert not rules.is_username(value)


def test_new_message_id_is_a_canonical_ulid_of_now():
    first, second = rules.new_message_id(), rules.new_message_id()
    assert first != second
    for message_id in (first, second):
        assert len(message_id) == 26
        assert rules.canonical_message_id(message_id) == message_id
        assert abs(ULID.from_str(message_id).timestamp - time.time()) < 5


@pytest.mark.parametrize(
    "given, canonical",
    [
        ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        ("01arz3ndektsv4rrffq69g5fav", "01ARZ3NDEKTSV4RRFFQ69G5FAV"),  # ULIDs are case-insensitive
        ("01ArZ3NdEkTsV4RrFfQ69G5FaV", "01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        ("7ZZZZZZZZZZZZZZZZZZZZZZZZZ", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"),  # the largest ULID
        ("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
        ("6BA7B810-9DAD-11D1-80B4-00C04FD430C8", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
    ],
)
def test_canonical_message_id(given, canonical):
    assert rules.canonical_message_id(given) == canonical


def test_canonical_message_id_of_any_uuid_version():
    for made in (uuid.uuid1(), uuid.uuid4(), uuid.uuid5(uuid.NAMESPACE_DNS, "postroom")):
        assert rules.canonical_message_id(str(made).upper()) == str(made)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-an-id",
        "01ARZ3NDEKTSV4RRFFQ69G5FA",  # 25 characters
        "01ARZ3NDEKTSV4RRFFQ69G5FAVX",  # 27
        "01ARZ3NDEKTSV4RRFFQ69G5FAI",  # I, L, O and U are not Crockford base32
        "01ARZ3NDEKTSV4RRFFQ69G5FAU",
        "81ARZ3NDEKTSV4RRFFQ69G5FAV",  # more than 128 bits
        "01ARZ3NDEKTSV4RRFFQ69G5FA!",
        " 1ARZ3NDEKTSV4RRFFQ69G5FAV",
        "01ARZ3NDEKTSV4RRFFQ69G5FA\u0660",  # a non-ASCII digit
        "6ba7b8109dad11d180b400c04fd430c8",  # a UUID without hyphens
        "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
        "urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "6ba7b810-9dad-11d1-80b4-00c04fd430cg",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8 ",
    ],
    ids=repr,
)
def test_malformed_message_ids(value):
    with pytest.raises(rules.RuleError) as caught:
        rules.canonical_message_id(value)
    assert caught.value.code == "invalid_message_id"
    assert caught.value.detail


@pytest.mark.parametrize("value", [None, 42, b"01ARZ3NDEKTSV4RRFFQ69G5FAV"], ids=repr)
def test_non_string_message_ids(value):
    with pytest.raises(rules.RuleError) as caught:
        rules.canonical_message_id(value)
    assert caught.value.code == "invalid_message_id"


@pytest.mark.parametrize(
    "document",
    [
        "plain text",
        "",
        "tab\tnewline\nCR\r del\x7f \x01 controls other than NUL are text",
        "emoji 🌍, astral 𝔘, CJK 漢字, RTL עברית, combining e\u0301, BOM \ufeff, \uffff",
        json.loads('"\\ud83c\\udf0d"'),  # a surrogate *pair* of escapes is one character
        {"to": ["bob", "carol"], "subject": "s", "n": 1, "f": 1.5, "t": True, "none": None},
        [[["deep", {"k": ["v"]}]]],
        42,
        None,
    ],
    ids=repr,
)
def test_check_characters_accepts_valid_unicode(document):
    rules.check_characters(document)


@pytest.mark.parametrize(
    "document, where",
    [
        ("a\x00b", "/"),
        ("\x00", "/"),
        ("lone high \ud800", "/"),
        ("lone low \udfff", "/"),
        ("reversed pair \udc00\ud800", "/"),
        ({"subject": "s", "body": "x\x00y"}, "/body"),
        ({"to": ["bob", "car\ud800ol"]}, "/to/1"),
        ({"nested": [{"deeper": ["\x00"]}]}, "/nested/0/deeper/0"),
        ({"key\x00": "value"}, "/key"),  # keys are text too
        ({"\udfff": 1}, "/"),
    ],
    ids=repr,
)
def test_check_characters_refuses_nul_and_lone_surrogates(document, where):
    with pytest.raises(rules.RuleError) as caught:
        rules.check_characters(document)
    assert caught.value.code == "invalid_character"
    # The detail says where, and can itself be sent as UTF-8 (no lone surrogate in it).
    assert caught.value.detail.startswith(where)
    caught.value.detail.encode("utf-8")


@pytest.mark.parametrize("text, length", [("", 0), ("abc", 3), ("é", 2), ("€", 3), ("🌍", 4), ("a€🌍", 8)])
def test_utf8_length(text, length):
    assert rules.utf8_length(text) == length
