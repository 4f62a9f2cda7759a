"""Small text helpers shared by the domains."""

import re

# Bidi embeddings, overrides, isolates and marks, and zero-width characters: invisible, they can
# reverse or hide what a reader sees ("invoice‮fdp.exe") in a subject, a sender or a title.
_INVISIBLE = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\u200b-\u200d\u2060\ufeff]")


def visible(value: str) -> str:
    """`value` without invisible formatting characters."""
    return _INVISIBLE.sub("", value)


def one_line(value: str, limit: int = 200) -> str:
    """User text fit for a header, a title or one line of an email: invisible formatting characters
    removed, whitespace runs (CR/LF included) made one space, anything past `limit` characters an
    ellipsis."""
    flat = re.sub(r"\s+", " ", visible(value)).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
