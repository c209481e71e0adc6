"""The agent's side of the controller protocol: enroll, post report batches, pull jobs, upload.

An agent may know several controllers (one active, the others standing by on the same
database). Every request goes to the one that last answered as active; when it does not
answer, or answers as a standby (503 ``not_active``), the request moves on: to the URL the
standby names in ``Polyfleet-Active-Controller`` when that is one of the agent's own, else
to the next URL in order. Moving a request is safe: reports are idempotent by their id.
The agent never sends its token to a URL it was not configured with.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from polyfleet.agent.transport.failures import http_failure_words
from polyfleet.shared.durable import write_atomically
from polyfleet.shared.errors import ConfigError, PolyfleetError, ProtocolError, os_error_words
from polyfleet.shared.schema import (
    ACTIVE_CONTROLLER_HEADER,
    NOT_ACTIVE_CODE,
    PROTOCOL_VERSION,
    EnrollRequest,
    EnrollResponse,
    JobList,
    JobProgress,
    JobResult,
    ReportBatch,
    ReportBatchAck,
    RoomCalendarBatch,
    RoomCalendarReport,
)

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)

DEFAULT_TIMEOUT_S = 30.0
_MAX_ANSWER_BYTES = 8 * 1024 * 1024


class ControllerUnavailable(PolyfleetError):
    """The controller did not answer (or answered 5xx): try again later."""


class ControllerNotActive(ControllerUnavailable):
    """A standby controller answered; ``active_url`` is where it says the active one is."""

    def __init__(self, message: str, active_url: str | None) -> None:
        super().__init__(message)
        self.active_url = active_url


class ControllerRefused(PolyfleetError):
    """The controller answered 4xx: ``code``/``message``/``field`` from its error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        where = f" (field {field})" if field else ""
        super().__init__(f"controller refused (HTTP {status}, {code}): {message}{where}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Credential:
    """What enrollment gave this agent; kept in a mode-0600 file, never logged."""

    controller_url: str
    agent_id: str
    site_id: str
    token: str
    poll_interval_s: int
    #: Every controller URL the agent was enrolled with (active and standbys).
    controller_urls: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return f"Credential(agent_id={self.agent_id!r}, site_id={self.site_id!r})"

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 from the first byte (the token is a secret)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        owner = None
        if os.geteuid() == 0:
            # Enrolled by root into the service's state folder: the service user must read it.
            folder = path.parent.stat()
            owner = (folder.st_uid, folder.st_gid)
        document = {
            "controller_url": self.controller_url,
            "agent_id": self.agent_id,
            "site_id": self.site_id,
            "token": self.token,
            "poll_interval_s": self.poll_interval_s,
            "controller_urls": list(self.controller_urls),
        }
        write_atomically(path, json.dumps(document), mode=0o600, owner=owner)

    @property
    def urls(self) -> tuple[str, ...]:
        """The controllers to try, the one enrolled with first."""
        return self.controller_urls or (self.controller_url,)

    @staticmethod
    def check_writable(path: Path) -> None:
        """Raise ConfigError naming ``path`` unless a credential can be written there."""
        probe = path.with_name(f".{path.name}.probe")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(
                f"cannot store the agent credential at {path}: {os_error_words(exc)}; "
                "give --credential-file PATH or a config whose controller.credential_file "
                "is writable (the enrollment code was not used)"
            ) from exc

    @classmethod
    def load(cls, path: Path) -> Credential:
        from polyfleet.agent.config import read_secret_file

        text = read_secret_file(path, origin="agent credential")
        try:
            raw = json.loads(text)
            return cls(
                controller_url=str(raw["controller_url"]),
                agent_id=str(raw["agent_id"]),
                site_id=str(raw["site_id"]),
                token=str(raw["token"]),
                poll_interval_s=int(raw.get("poll_interval_s", 60)),
                controller_urls=tuple(str(url) for url in raw.get("controller_urls", ())),
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: not an agent credential file (no {exc.args[0]})") from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not an agent credential file (not JSON)") from exc


def ssl_context_for(ca_file: Path | None) -> ssl.SSLContext | None:
    if ca_file is None:
        return None
    return ssl.create_default_context(cafile=str(ca_file))


class Uplink:
    """HTTP client for ``/api/v1/agent/...``; one ``_request`` turns failures into our errors.

    ``base_url`` is one controller URL or several (active and standbys, in order).
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        session: aiohttp.ClientSession,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.urls: tuple[str, ...] = tuple(dict.fromkeys(url.rstrip("/") for url in urls if url))
        if not self.urls:
            raise ConfigError("no controller URL (give --controller or controller.url)")
        self._current = 0
        self._told_unknown: set[str] = set()
        self._session = session
        self._token = token
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    @property
    def base_url(self) -> str:
        """The controller requests go to now (the one that last answered as active)."""
        return self.urls[self._current]

    async def _request(
        self,
        method: str,
        path: str,
        *,
        model: BaseModel | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> Any:
        """The request to the active controller, moving on from ones that do not answer."""
        index = self._current
        tried: set[int] = set()
        while True:
            tried.add(index)
            try:
                doc = await self._request_at(
                    self.urls[index],
                    method,
                    path,
                    model=model,
                    data=data,
                    content_type=content_type,
                )
            except ControllerNotActive as exc:
                failure: ControllerUnavailable = exc
                named = self._known(exc.active_url)
                if named is not None and named not in tried:
                    index = named
                    continue
            except ControllerUnavailable as exc:
                failure = exc
            else:
                if index != self._current:
                    log.info("controller %s answers as the active one", self.urls[index])
                    self._current = index
                return doc
            untried = [
                (index + step) % len(self.urls)
                for step in range(1, len(self.urls))
                if (index + step) % len(self.urls) not in tried
            ]
            if not untried:
                raise failure
            index = untried[0]

    def _known(self, url: str | None) -> int | None:
        """The index of ``url`` among ours; an unknown one is never sent the token."""
        if not url:
            return None
        url = url.rstrip("/")
        if url in self.urls:
            return self.urls.index(url)
        if url not in self._told_unknown:
            self._told_unknown.add(url)
            log.warning(
                "a standby names %s as the active controller, which is not among this "
                "agent's controller URLs (%s): add it to controller.urls to follow it",
                url,
                ", ".join(self.urls),
            )
        return None

    async def _request_at(
        self,
        base_url: str,
        method: str,
        path: str,
        *,
        model: BaseModel | None,
        data: bytes | None,
        content_type: str | None,
    ) -> Any:
        headers: dict[str, str] = {}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        body: bytes | None = data
        if model is not None:
            body = model.model_dump_json().encode()
            headers["Content-Type"] = "application/json"
        elif content_type is not None:
            headers["Content-Type"] = content_type
        url = base_url + path
        try:
            async with self._session.request(
                method, url, data=body, headers=headers, timeout=self._timeout, ssl=self._ssl
            ) as resp:
                raw = await resp.content.read(_MAX_ANSWER_BYTES + 1)
                status = resp.status
                active_url = resp.headers.get(ACTIVE_CONTROLLER_HEADER)
        except TimeoutError as exc:
            raise ControllerUnavailable(f"{method} {url}: no answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            # Never str(exc): aiohttp's names the ssl= argument (an SSLContext object).
            raise ControllerUnavailable(f"{method} {url}: {http_failure_words(exc)}") from exc
        if len(raw) > _MAX_ANSWER_BYTES:
            raise ProtocolError(f"{method} {url}: answer too large")
        if status == 503 and _error_code(raw) == NOT_ACTIVE_CODE:
            raise ControllerNotActive(
                f"{method} {url}: a standby controller (active: {active_url or 'none yet'})",
                active_url,
            )
        if status >= 500 or status in (408, 429):
            raise ControllerUnavailable(f"{method} {url}: HTTP {status}")
        try:
            doc = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise ProtocolError(f"{method} {url}: answer is not JSON (HTTP {status})") from exc
        if status >= 400:
            error = doc.get("error") if isinstance(doc, dict) else None
            error = error if isinstance(error, dict) else {}
            raise ControllerRefused(
                status,
                str(error.get("code", "error")),
                str(error.get("message", f"HTTP {status}")),
                error.get("field") if isinstance(error.get("field"), str) else None,
            )
        return doc

    async def enroll(self, code: str, *, agent_name: str = "") -> EnrollResponse:
        request = EnrollRequest(
            protocol_version=PROTOCOL_VERSION,
            code=code,
            agent_name=agent_name,
            hostname=socket.gethostname()[:256],
        )
        doc = await self._request("POST", "/api/v1/agent/enroll", model=request)
        return _parse(EnrollResponse, doc, "enroll answer")

    async def post_batch(self, batch: ReportBatch) -> ReportBatchAck:
        doc = await self._request("POST", "/api/v1/agent/reports", model=batch)
        return _parse(ReportBatchAck, doc, "report batch answer")

    async def pull_jobs(self) -> JobList:
        doc = await self._request("GET", "/api/v1/agent/jobs")
        return _parse(JobList, doc, "job list")

    async def upload_artifact(self, job_id: str, data: bytes) -> None:
        await self._request(
            "PUT",
            f"/api/v1/agent/jobs/{job_id}/artifact",
            data=data,
            content_type="application/octet-stream",
        )

    async def post_result(self, job_id: str, result: JobResult) -> None:
        """Post a job's result. Its ``code`` goes only when set; a controller from before
        codes refuses the field by name, and then gets the result again without it."""
        path = f"/api/v1/agent/jobs/{job_id}/result"
        without_code = result.model_dump_json(exclude={"code"}).encode()
        if result.code is None:
            # Byte for byte what agents sent before codes existed.
            await self._request("POST", path, data=without_code, content_type="application/json")
            return
        try:
            await self._request("POST", path, model=result)
        except ControllerRefused as exc:
            if exc.status != 422 or exc.field != "code":
                raise
            log.info(
                "job %s: the controller does not take failure codes (%s); result sent without",
                job_id,
                exc.message,
            )
            await self._request("POST", path, data=without_code, content_type="application/json")

    async def post_progress(self, job_id: str, progress: JobProgress) -> None:
        await self._request("POST", f"/api/v1/agent/jobs/{job_id}/progress", model=progress)

    async def post_calendars(self, calendars: list[RoomCalendarReport]) -> None:
        """What was read of the units' room calendars (meetings' start and end only)."""
        batch = RoomCalendarBatch(protocol_version=PROTOCOL_VERSION, calendars=calendars)
        await self._request("POST", "/api/v1/agent/calendars", model=batch)

    async def download_package(self, version: str, *, offset: int = 0) -> AsyncIterator[bytes]:
        """A release's package from the controller, from byte ``offset`` on (HTTP range)."""
        headers: dict[str, str] = {}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = f"{self.base_url}/api/v1/releases/{version}/package"
        # A package takes long: only a stalled connection counts as a failure.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        try:
            async with self._session.get(
                url, headers=headers, timeout=timeout, ssl=self._ssl
            ) as resp:
                if resp.status >= 500 or resp.status in (408, 429):
                    raise ControllerUnavailable(f"GET {url}: HTTP {resp.status}")
                if resp.status >= 400:
                    raise ControllerRefused(resp.status, "error", f"GET {url}: HTTP {resp.status}")
                if offset and resp.status != 206:
                    raise ControllerRefused(
                        resp.status, "error", f"GET {url}: the range from {offset} was not served"
                    )
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    yield chunk
        except TimeoutError as exc:
            raise ControllerUnavailable(f"GET {url}: stalled") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ControllerUnavailable(f"GET {url}: {http_failure_words(exc)}") from exc


def _error_code(raw: bytes) -> str | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _parse(model: type[_M], doc: Any, what: str) -> _M:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        field = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        raise ProtocolError(
            f"{what} does not match the schema at {field or '?'}", field=field
        ) from exc
