"""The one codec for arguments and results: strict JSON, never pickle."""

from __future__ import annotations

import json
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_decoder = json.JSONDecoder()
#: the C encoder behind ``_encoder``, made once (``JSONEncoder.encode`` makes one per call,
#: which costs more than encoding the few arguments of most jobs); it skips the check for
#: cycles, which end in RecursionError instead: ``_encoder`` then says what is wrong
_c_encode: Any = None
if c_make_encoder is not None and c_encode_basestring is not None:
    _c_encode = c_make_encoder(None, _encoder.default, c_encode_basestring, None, ":", ",",
                               False, False, False)


class NotSerializable(TypeError):
    """The value cannot be written as strict JSON."""


def dumps(value: Any) -> str:
    """Encode ``value`` as compact JSON text; raise :class:`NotSerializable` if it is not JSON."""
    # the commonest values (no result, no arguments) without the encoder's machinery
    if value is None:
        return "null"
    if not value and (type(value) is list or type(value) is dict):
        return "[]" if type(value) is list else "{}"
    try:
        if _c_encode is not None:
            try:
                return "".join(_c_encode(value, 0))
            except RecursionError:  # a cycle, or nesting too deep: told apart below
                pass
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise NotSerializable(str(exc)) from None


def loads(text: str | bytes | None) -> Any:
    """Decode JSON text (``None`` stays ``None``)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode()
    return _decoder.decode(text)


def is_utf8(text: str) -> bool:
    """True when ``text`` can be written as UTF-8 (it holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def storable(text: str | None) -> str | None:
    """Text as a store takes it: characters UTF-8 cannot encode (lone surrogates, as from
    undecodable file names in an error message) become backslash escapes."""
    if not text or is_utf8(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode()
