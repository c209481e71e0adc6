"""The controller's refusals: one typed tree that the API, the dashboard and the CLI each render.

Refused                      a use case cannot do what was asked (code, HTTP status, field)
├── BadRequest        400    a value that cannot be read (a date, a number, a filter)
│   └── InvalidInput  400    a field the inventory refuses (a room name, a time zone)
├── NotAllowed        403    the caller's role (or scope) does not allow it
├── NotFound          404    a site, device, token, agent, job, ticket or rollout that is not there
├── Conflict          409    the state does not allow it now (a job pending, a rollout running,
│                            a ticket already sent)
├── Invalid           422    a request field the checks refuse (``field`` names it)
└── Unavailable       503    a part of the controller is not ready (starting, a standby)

Services raise their own subclasses (``UnknownDevice(NotFound, KeyError)``, ``SiteExists``,
``TicketError(Conflict)``, ``RegistryImportError(Invalid)``...), so a face needs one
``except Refused`` and renders ``code``, ``message``, ``field`` and ``problems``: JSON for the
API (``{"error": {"code", "message", "field"}}``, with ``"problems"`` beside ``error`` when
there are any), an HTML page with a way back for a browser, and for the CLI a line on
standard error (one more per problem) with exit status 1 (``polyfleet.cli.main``).
The ``code`` words are contracts: scripts read them (docs/cli.md lists them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class Refused(Exception):
    """A use case refused; ``status`` is its HTTP status, ``code`` a stable word for scripts."""

    status: int = 400
    default_code: ClassVar[str] = "refused"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        status: int | None = None,
        problems: Sequence[Mapping[str, Any]] = (),
        rule: str | None = None,
        headers: Mapping[str, str] | None = None,
        template: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: The message as an English text with ``{name}`` fields, and their values: a face
        #: that speaks another language translates the text and fills the fields (the
        #: dashboard's catalogue is keyed by these texts). Without them: the message itself.
        self.template = template if template is not None else message
        self.params: dict[str, Any] = dict(params or {})
        self.code = code or self.default_code
        self.field = field
        if status is not None:
            self.status = status
        #: Every single thing wrong, each a mapping with ``message`` and ``line``, ``column``,
        #: ``field`` or ``rule`` where they apply (the API answers them beside ``error``).
        self.problems: Sequence[Mapping[str, Any]] = [dict(problem) for problem in problems]
        self.rule = rule
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return self.message


class BadRequest(Refused):
    status = 400
    default_code = "invalid"


class InvalidInput(BadRequest, ValueError):
    """A field's value is refused; ``field`` names it, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)


class NotAllowed(Refused):
    status = 403
    default_code = "forbidden"


class NotFound(Refused):
    status = 404
    default_code = "not_found"


class Conflict(Refused):
    status = 409
    default_code = "conflict"


class Invalid(Refused):
    status = 422
    default_code = "invalid"


class Unavailable(Refused):
    status = 503
    default_code = "unavailable"
