"""Input types shared by the API: ids the databases can hold and text fit to store.

Out-of-range numbers and control characters would otherwise reach the database and fail there (a
500, or a NUL PostgreSQL refuses); declared here, they are a 422 that says what is wrong.
"""

import re
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, Field, StringConstraints

MAX_ID = 2**31 - 1  # PostgreSQL `integer`
MAX_SEQ = 2**63 - 1  # PostgreSQL `bigint`: notification seqs, stream positions
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls but tab, LF, CR; and DEL


def _no_control_characters(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


Id = Annotated[int, Field(ge=1, le=MAX_ID)]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
QueryId = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Text = Annotated[str, AfterValidator(_no_control_characters)]
# A name or title: surrounding whitespace is dropped before its length is checked.
Line = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_no_control_characters)]
