"""One place that turns a pydantic validation failure into rtl's one-line error (the first problem only:
a user fixes one field at a time, and a traceback listing five is what rtl promises not to print)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from rtl.errors import ConfigError, RtlError

M = TypeVar("M", bound=BaseModel)


def validated(cls: type[M], data: Any, line: Callable[[str, str], str], *, empty_loc: str = "?",
              error: type[RtlError] = ConfigError) -> M:
    """`cls.model_validate(data)` (an instance of `cls` passes through); on failure raise
    `error(line(loc, msg))` for the first problem, `loc` dotted ("" -> `empty_loc`), pydantic's
    "Value error, " prefix dropped from `msg`."""
    if isinstance(data, cls):
        return data
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or empty_loc
        raise error(line(loc, err["msg"].removeprefix("Value error, "))) from None
