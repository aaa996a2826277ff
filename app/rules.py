"""Pure rules for names, ids and text that the API and the archive worker both enforce."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Iterator

from ulid import ULID

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
# Group names and topics become routing-key words: no dots, no wildcards (case C14).
GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,63}$")
TOPIC_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SUBSCRIBER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_SURROGATE_OR_NUL_RE = re.compile("[\x00\ud800-\udfff]")


class RuleError(ValueError):
    """Input breaks a rule; ``code`` is the stable machine-readable name."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def is_username(value: object) -> bool:
    """Return whether ``value`` is a well-formed username."""
    return isinstance(value, str) and USERNAME_RE.fullmatch(value) is not None


def is_group_name(value: object) -> bool:
    """Return whether ``value`` is a well-formed group name."""
    return isinstance(value, str) and GROUP_RE.fullmatch(value) is not None


def is_topic(value: object) -> bool:
    """Return whether ``value`` is a well-formed topic."""
    return isinstance(value, str) and TOPIC_RE.fullmatch(value) is not None


def is_subscriber_id(value: object) -> bool:
    """Return whether ``value`` is a well-formed subscriber id."""
    return isinstance(value, str) and SUBSCRIBER_ID_RE.fullmatch(value) is not None


def new_message_id() -> str:
    """Return a new time-ordered message id (a ULID)."""
    return str(ULID())


def canonical_message_id(value: str) -> str:
    """Return the canonical spelling of a client-chosen ULID or UUID, or raise RuleError."""
    if isinstance(value, str) and len(value) == 26:
        try:
            return str(ULID.from_str(value.upper()))
        except ValueError:
            pass
    if isinstance(value, str) and len(value) == 36:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise RuleError("invalid_message_id", "a message id is a ULID (26 characters) or a UUID (36)")


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield path + "/" + str(key).encode("utf-8", "backslashreplace").decode(), key
            yield from _strings(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}/{index}")


def check_characters(document: Any) -> None:
    """Raise RuleError if any string (or key) in a parsed JSON document holds NUL or a lone surrogate."""
    for path, text in _strings(document):
        if _SURROGATE_OR_NUL_RE.search(text):
            where = path.encode("utf-8", "backslashreplace").decode() or "/"
            raise RuleError(
                "invalid_character",
                f"{where}: text must be valid Unicode without U+0000 or lone surrogates",
            )


def utf8_length(text: str) -> int:
    """Return the length of ``text`` in UTF-8 bytes."""
    return len(text.encode("utf-8"))


def parse_json(raw: bytes) -> Any:
    """Parse UTF-8 JSON text whose strings are all valid Unicode without NUL.

    Raises RuleError ``invalid_encoding``, ``invalid_json`` (also for nesting too deep for
    the parser) or ``invalid_character``; the API and the workers read JSON with this.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleError("invalid_encoding", f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(text)
    except RecursionError:
        raise RuleError("invalid_json", "the JSON is nested too deeply") from None
    except ValueError as exc:
        raise RuleError("invalid_json", f"the body is not valid JSON: {exc}") from None
    check_characters(document)
    return document
