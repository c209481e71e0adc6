"""Config files: TOML read once, checked by frozen pydantic models, one error naming file and key.

Every config file polyfleet reads (``controller.toml``, ``agent.toml``, a lab's fleet file)
goes the same way: :func:`read_toml` parses it, :func:`check` validates the document with a
tree of :class:`ConfigModel` tables, and any mistake becomes one :class:`ConfigError` whose
message is ``FILE: KEY PATH: PROBLEM``, e.g.::

    controller.toml: tickets.escalation_email: 'a, b' is not one e-mail address (like ...)
    controller.toml: web.refresh: unknown key; known keys: session_ttl_s, ..., timezone
    agent.toml: devices[1].rest_port must be between 1 and 65535, not 70000

The key path names the section (``tickets``, ``devices[1]``) and the key in it, written the
way TOML's dotted keys would address it.
"""

from __future__ import annotations

import re
import tomllib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from polyfleet.shared.errors import ConfigError, os_error_words

__all__ = [
    "ConfigError",
    "ConfigModel",
    "ConfigPath",
    "KeyProblem",
    "at_least",
    "between",
    "check",
    "config_error",
    "key_path",
    "one_of",
    "positive",
    "read_toml",
]

Model = TypeVar("Model", bound=BaseModel)
Number = TypeVar("Number", int, float)

#: Values of keys with these words in their names are never repeated in an error message:
#: messages end up in logs and terminals, secrets must not.
_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)


class ConfigModel(BaseModel):
    """One table of a config file: unknown keys refused, types strict (``"60"`` is not 60)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class KeyProblem(ValueError):
    """Raised in a table's validator about one of its keys: the error then names that key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def read_toml(path: Path, *, what: str = "") -> dict[str, Any]:
    """The parsed TOML document at ``path`` (``what`` it is, for the error when unreadable)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        read = f"cannot read {what}" if what else "cannot read"
        raise ConfigError(f"{path}: {read}: {os_error_words(exc)}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def check(
    model: type[Model],
    raw: Mapping[str, Any],
    *,
    source: str | Path | None,
    base: Path | None = None,
    loc: Sequence[str | int] = (),
) -> Model:
    """``raw`` validated as ``model``; a mistake as a ConfigError naming its key.

    ``source`` names the file in the message (None: no file, the key path alone); relative
    :data:`ConfigPath` values resolve against ``base``; ``loc`` is where ``raw`` sits in its
    file when it is not the whole document (``("tickets",)``).
    """
    try:
        return model.model_validate(_plain(raw), context={"base": base or Path()})
    except ValidationError as exc:
        raise _first_error(model, exc.errors(), source, tuple(loc)) from None


def _plain(value: Any) -> Any:
    """Tables as dicts: strict validation takes a table only as a dict, not any mapping."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def config_error(source: str | Path | None, loc: Sequence[str | int], problem: str) -> ConfigError:
    """The one way a config mistake is worded: ``FILE: KEY PATH: PROBLEM``.

    A problem that starts with ``must`` reads on from the key (``agents.poll_interval_s must
    be positive``); any other follows a colon.
    """
    where = key_path(loc)
    text = problem
    if where:
        text = f"{where}{' ' if problem.startswith('must ') else ': '}{problem}"
    return ConfigError(f"{source}: {text}" if source is not None else text)


def key_path(loc: Sequence[str | int]) -> str:
    """``("devices", 1, "host")`` -> ``devices[1].host``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


# -- value types and bounds, worded the same everywhere ---------------------------------------


def _resolve_path(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str):
        return value
    if not value.strip():
        raise ValueError("must be a path, not an empty string")
    path = Path(value).expanduser()
    base = (info.context or {}).get("base", Path())
    return path if path.is_absolute() else base / path


#: A file or folder: a string in the file, relative to the file's folder unless absolute.
ConfigPath = Annotated[Path, BeforeValidator(_resolve_path)]


def positive() -> AfterValidator:
    """A number above zero."""

    def check_value(value: Number) -> Number:
        if value <= 0:
            raise ValueError(f"must be positive, not {value!r}")
        return value

    return AfterValidator(check_value)


def at_least(minimum: float) -> AfterValidator:
    """A number no smaller than ``minimum``."""

    def check_value(value: Number) -> Number:
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}, not {value!r}")
        return value

    return AfterValidator(check_value)


def one_of(choices: Sequence[Any]) -> AfterValidator:
    """One of ``choices`` (names of models, modes, kinds...)."""

    def check_value(value: Any) -> Any:
        if value not in choices:
            raise ValueError(
                f"must be one of {', '.join(str(choice) for choice in choices)}, not {value!r}"
            )
        return value

    return AfterValidator(check_value)


def between(minimum: int, maximum: int) -> AfterValidator:
    """A whole number from ``minimum`` to ``maximum``."""

    def check_value(value: int) -> int:
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, not {value!r}")
        return value

    return AfterValidator(check_value)


# -- pydantic's errors in our words -------------------------------------------------------------

_KINDS = {
    "string_type": "a string",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dict_type": "a table",
    "dataclass_type": "a table",
    "path_type": "a path",
}


def _first_error(
    model: type[BaseModel],
    errors: list[ErrorDetails],
    source: str | Path | None,
    prefix: tuple[str | int, ...],
) -> ConfigError:
    # The deepest mistake first: a table header misplaced in a file leaves the table above it
    # missing keys, and the keys that follow the header are what was really wrong.
    error = max(errors, key=_depth)
    loc: tuple[str | int, ...] = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    key = next((part for part in reversed(loc) if isinstance(part, str)), "")
    shown = "***" if _SECRET_KEY.search(key) else repr(value)
    problem: str
    if kind == "missing":
        hint = _field(model, loc)
        described = hint.description if hint is not None else None
        problem = f"missing ({described})" if described else "missing"
    elif kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        if len(loc) == 1 and not prefix and isinstance(value, dict):
            problem = f"unknown section [{loc[0]}]; known sections: {', '.join(known)}"
            loc = ()
        else:
            problem = f"unknown key; known keys: {', '.join(known)}"
    elif kind in ("value_error", "assertion_error"):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, KeyProblem):
            loc = (*loc, cause.key)
        problem = str(cause) if cause is not None else error["msg"]
    elif kind == "literal_error":
        expected = str((error.get("ctx") or {}).get("expected", ""))
        choices = expected.replace("'", "").replace(" or ", ", ")
        problem = f"must be one of {choices}, not {shown}"
    elif kind in _KINDS:
        problem = f"must be {_KINDS[kind]}, not {shown}"
    else:
        problem = error["msg"][:1].lower() + error["msg"][1:]
    return config_error(source, (*prefix, *loc), problem)


def _depth(error: ErrorDetails) -> int:
    cause = (error.get("ctx") or {}).get("error")
    return len(error["loc"]) + (1 if isinstance(cause, KeyProblem) else 0)


def _fields(model: Any) -> dict[str, FieldInfo]:
    fields: dict[str, FieldInfo] = getattr(model, "__pydantic_fields__", {})
    return fields


def _table_of(annotation: Any) -> Any:
    """The table type inside ``annotation`` (``X | None``, ``list[X]``, ``Annotated[X, ...]``)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _table_of(get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, tuple):
        for arg in get_args(annotation):
            found = _table_of(arg)
            if found is not None:
                return found
        return None
    return annotation if _fields(annotation) else None


def _model_at(model: Any, loc: Sequence[str | int]) -> Any:
    """The table type at ``loc`` below ``model`` (None when it cannot be told)."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = _by_key(current, part)
        if field is None:
            return None
        current = _table_of(field.annotation)
        if current is None:
            return None
    return current


def _by_key(model: Any, key: str) -> FieldInfo | None:
    for name, field in _fields(model).items():
        if (field.alias or name) == key:
            return field
    return None


def _field(model: Any, loc: Sequence[str | int]) -> FieldInfo | None:
    table = _model_at(model, loc[:-1])
    last = loc[-1] if loc else None
    return _by_key(table, last) if table is not None and isinstance(last, str) else None


def _known_keys(model: Any, loc: Sequence[str | int]) -> list[str]:
    table = _model_at(model, loc)
    if table is None:
        return []
    return [field.alias or name for name, field in _fields(table).items()]
