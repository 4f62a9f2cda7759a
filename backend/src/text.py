"""Small text helpers shared by the domains."""

import re


def one_line(value: str, limit: int = 200) -> str:
    """User text fit for a header or a title: whitespace runs (CR/LF included) become one space,
    and anything past `limit` characters becomes an ellipsis."""
    flat = re.sub(r"\s+", " ", value).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
