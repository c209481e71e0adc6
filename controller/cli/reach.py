"""How an admin command reaches its controller: one way for every command.

A command speaks the admin API, whatever runs:

- a server holds the store (its data directory's lock, or the PostgreSQL database's advisory
  lock): the command goes through its local control socket (``<data dir>/controller.json``
  says where; admin rights by file permission), or, when that server is a standby or runs on
  another host, to the active controller's URL over HTTPS with an admin token
  (``POLYFLEET_TOKEN``; ``POLYFLEET_CA_FILE`` for a private CA);
- no server runs: the command takes the store's lock and serves the same application here,
  on a private socket, for as long as it runs (``create_app(..., command=True)``: the API
  without the scheduled work). Its actions are audited as done on this machine, by its OS user.

So a command always meets the same use cases, checks and audit records as the API and the
dashboard do; it only turns its flags into requests and the answers into lines or JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from polyfleet.controller.active import ACTIVE_HEADER
from polyfleet.controller.app import create_app, read_runtime
from polyfleet.controller.config import ConfigError, ControllerConfig, load_config
from polyfleet.controller.core import Controller, build_controller, require_store
from polyfleet.controller.errors import Refused
from polyfleet.controller.store.base import StoreError, StoreLocked
from polyfleet.controller.store.postgres import PostgresStore
from polyfleet.shared.cli_errors import CommandFailed

#: An admin token for commands sent to the active controller over HTTPS.
TOKEN_ENV = "POLYFLEET_TOKEN"  # noqa: S105  # the variable's name, not a secret
#: A CA certificate file to trust for the active controller's https URL.
CA_FILE_ENV = "POLYFLEET_CA_FILE"
#: How long a command waits for a starting server to publish its control socket.
SERVER_WAIT_S = 15.0
#: A command's requests may take this long to be answered (a large import, a rollout plan).
READ_TIMEOUT_S = 300.0

Action = Callable[["ControllerClient"], Awaitable[int]]


class CommandError(CommandFailed):
    """A command failed for a reason the user can act on (the shared error shape)."""


class NotActive(CommandError):
    """The controller asked is a standby; ``active_url`` is where the active one is (if any)."""

    def __init__(self, message: str, active_url: str | None) -> None:
        super().__init__(message, code="not_active")
        self.active_url = active_url


def config_of(args: argparse.Namespace) -> ControllerConfig:
    """The configuration a command runs with: ``--config``, then ``--data-dir`` and
    ``--store-url`` over it (``--listen`` for ``serve``)."""
    try:
        config = load_config(Path(args.config) if getattr(args, "config", None) else None)
        data_dir = getattr(args, "data_dir", None)
        return config.with_overrides(
            data_dir=Path(data_dir) if data_dir else None,
            listen=getattr(args, "listen", None),
            store_url=getattr(args, "store_url", None),
        )
    except ConfigError as exc:
        raise CommandError(str(exc), code="config") from None


def controller_flags(
    parser: argparse.ArgumentParser, *, json_flag: bool = True, nested: bool = False
) -> None:
    """The flags that pick the controller a command speaks to (``config_of``), and ``--json``.

    ``nested``: an action below another (devices export/move) must not reset what was given
    before its name.
    """
    default = argparse.SUPPRESS if nested else None
    parser.add_argument("--config", default=default, help="controller.toml (default: built-in)")
    parser.add_argument("--data-dir", default=default, help="data directory (overrides config)")
    parser.add_argument(
        "--store-url",
        default=default,
        help="PostgreSQL store, postgresql://USER@HOST/DB (overrides config [store] url)",
    )
    if json_flag:
        parser.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS if nested else False,
            help="machine-readable output",
        )


def print_json(document: Any) -> None:
    """A command's answer as JSON on stdout, indented, its text as it is (not escaped)."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def server_refused(status: int, body: Any) -> CommandError:
    """The controller's error answer in the shared shape: its code, message and field."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return CommandError(f"the controller answered HTTP {status}", code="refused")
    return CommandError(
        str(error.get("message") or f"the controller answered HTTP {status}"),
        code=str(error.get("code") or "refused"),
        field=error.get("field"),
        problems=body.get("problems") or error.get("problems") or (),
    )


class ControllerClient:
    """The admin API as a command calls it: JSON answers, refusals as ``CommandError``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str = "http://controller",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.http = session
        self.base_url = base_url
        self._headers = dict(headers or {})

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str | None] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The answer of ``method path`` (a JSON body, or the text of another one)."""
        query = {key: value for key, value in (params or {}).items() if value}
        async with self.http.request(
            method,
            f"{self.base_url}{path}",
            json=body,
            data=data,
            params=query,
            headers={**self._headers, **(headers or {})},
        ) as response:
            self.warn_of(response)
            if response.content_type == "application/json":
                answer = await response.json()
            else:
                answer = await response.text()
            if response.status >= 400:
                refused = server_refused(response.status, answer)
                if response.status == 503 and refused.code == "not_active":
                    raise NotActive(refused.message, response.headers.get(ACTIVE_HEADER))
                raise refused
            return answer

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A request whose answer is read as it comes (a backup, an artifact)."""
        kwargs["headers"] = {**self._headers, **kwargs.get("headers", {})}
        async with self.http.request(method, f"{self.base_url}{path}", **kwargs) as response:
            self.warn_of(response)
            if response.status >= 400:
                if response.content_type == "application/json":
                    raise server_refused(response.status, await response.json())
                raise server_refused(response.status, None)
            yield response

    @staticmethod
    def warn_of(response: aiohttp.ClientResponse) -> None:
        warning = response.headers.get("Warning")
        if warning:
            # The server's storage is failing: what it shows may not be saved.
            text = warning.partition(' "')[2].rstrip('"') or warning
            print(f"warning: {text}", file=sys.stderr)


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_read=READ_TIMEOUT_S)


async def _through_socket(socket: str, action: Action) -> int:
    connector = aiohttp.UnixConnector(path=socket)
    async with aiohttp.ClientSession(connector=connector, timeout=_timeout()) as session:
        return await action(ControllerClient(session))


async def _at_active(url: str, action: Action) -> int:
    """Run ``action`` against the active controller's API, with an admin token."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise CommandError(
            f"this controller is a standby; the active controller is {url}: run the command "
            f"on its host, or set {TOKEN_ENV} to an admin token to send it there",
            code="not_active",
        )
    ca_file = os.environ.get(CA_FILE_ENV)
    context: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    connector = aiohttp.TCPConnector(ssl=context)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        ) as session:
            return await action(ControllerClient(session, url.rstrip("/"), headers))
    except aiohttp.ClientError as exc:
        raise CommandError(
            f"cannot reach the active controller at {url}: {exc}", code="unreachable"
        ) from None


async def _here(controller: Controller, action: Action) -> int:
    """Serve the API on the store this command holds, on a private socket, for ``action``."""
    app = create_app(controller.config, controller=controller, command=True)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        with tempfile.TemporaryDirectory(prefix="polyfleet-") as folder:
            socket = str(Path(folder) / "command.sock")
            await web.UnixSite(runner, socket).start()
            return await _through_socket(socket, action)
    finally:
        await runner.cleanup()


def store_name(config: ControllerConfig) -> str:
    if config.store_url is not None:
        return PostgresStore(config.store_url).shown_url
    return str(config.data_dir)


async def _active_url(store: PostgresStore) -> str | None:
    try:
        leader = await store.leader()
    finally:
        await store.close()
    return leader.url if leader is not None and leader.held else None


async def reach(config: ControllerConfig, action: Action, *, needs_store: bool = False) -> int:
    """Run ``action`` against the controller of ``config``: the running one, or one here.

    ``needs_store``: a command that reads, or changes something that must exist, refuses a
    data directory that holds no store (creating nothing) instead of making an empty one.
    """
    if needs_store:
        await asyncio.to_thread(require_store, config)
    deadline = time.monotonic() + SERVER_WAIT_S
    while True:
        controller = build_controller(config)
        try:
            await controller.store.open()
        except StoreLocked:
            active_url: str | None = None
            runtime = await asyncio.to_thread(read_runtime, config.data_dir)
            socket = runtime.get("control_socket") if runtime else None
            if socket:
                try:
                    return await _through_socket(socket, action)
                except NotActive as exc:
                    active_url = exc.active_url
                except aiohttp.ClientConnectionError:
                    pass  # the server is starting or stopping: try again
            elif isinstance(controller.store, PostgresStore):
                # No server here: the database is held by a controller on another host.
                active_url = await _active_url(controller.store)
            if active_url is not None:
                return await _at_active(active_url, action)
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{store_name(config)} is locked by another process but no controller "
                    "answers as the active one",
                    code="store_locked",
                ) from None
            await asyncio.sleep(0.2)  # waits-for: a starting server to publish its socket
            continue
        except StoreError as exc:
            raise CommandError(str(exc), code="store_error") from None
        return await _here(controller, action)


def run(
    args: argparse.Namespace,
    action: Action,
    *,
    needs_store: bool = False,
    fields: Mapping[str, str] | None = None,
    config: ControllerConfig | None = None,
) -> int:
    """Run a command's ``action`` (see ``reach``); every failure in the shared shape.

    ``fields``: the names the command's flags give to API fields (``expires_at`` is
    ``--expires`` here), so an error's ``field`` names what the user typed. ``config``: the
    configuration to run with when the command adjusted it (default ``config_of(args)``).
    """
    config = config if config is not None else config_of(args)
    renamed = dict(fields or {})
    try:
        return asyncio.run(reach(config, action, needs_store=needs_store))
    except CommandFailed as exc:
        if exc.field in renamed:
            exc.field = renamed[exc.field]
        raise
    except Refused as exc:
        raise CommandError(
            exc.message,
            code=exc.code,
            field=renamed.get(exc.field or "", exc.field),
            problems=exc.problems,
            rule=exc.rule,
        ) from None
    except ConfigError as exc:
        raise CommandError(str(exc), code="config") from None
    except aiohttp.ClientError as exc:
        raise CommandError(
            f"the controller could not be reached: {exc}", code="unreachable"
        ) from None
