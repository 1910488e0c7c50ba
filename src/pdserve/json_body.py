"""JSON from bytes a client sent: every way it can fail is a ValueError with one line.

`json.loads` fails on malformed text with a ValueError, on bad UTF-8 with a
UnicodeDecodeError (a ValueError too), and on deep nesting with a RecursionError, which is
not one: 100k nested brackets came out of the EPP as a 500 "internal error". Each server of
ours reads bodies through here, so any body is a 400 at worst.
"""

from __future__ import annotations

import json
from typing import Any


def loads(raw: bytes | bytearray | str) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
