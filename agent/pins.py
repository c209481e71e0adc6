"""Pinned device certificates and SSH host keys: trust on first use, changes wait for an admin."""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from polyfleet.shared.durable import write_atomically
from polyfleet.shared.errors import ConfigError, os_error_words

PINS_FILE = "pins.json"
_LOCK_FILE = "pins.lock"


@dataclass(frozen=True)
class PinRecord:
    """What is trusted for one configured device (``host:rest_port``), and what waits for review."""

    key: str
    serial: str = ""
    tls: str | None = None
    ssh: str | None = None
    #: A certificate/host key seen that differs from the pin: not trusted until accepted.
    pending_tls: str | None = None
    pending_ssh: str | None = None
    #: ``tofu`` (first contact), ``config`` (given in the config), ``admin`` (accepted).
    source: str = "tofu"
    config_tls: str | None = None
    config_ssh: str | None = None

    @property
    def host(self) -> str:
        return self.key.rsplit(":", 1)[0]


@dataclass
class _Cache:
    stamp: tuple[int, int] | None = None
    records: dict[str, PinRecord] = field(default_factory=dict)


class PinStore:
    """``<data_dir>/pins.json``, shared by the running agent and ``polyfleet agent pins``.

    Every change is a locked read-modify-write with an atomic replace, so the
    admin command and the service never lose each other's updates. Blocking:
    call from a thread when on the event loop.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / PINS_FILE
        self._lock_path = data_dir / _LOCK_FILE
        self._cache = _Cache()
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(self._lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, PinRecord]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (info.st_mtime_ns, info.st_size)
        if self._cache.stamp == stamp:
            return self._cache.records
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{self.path}: unreadable pin store ({os_error_words(exc)})") from exc
        except ValueError as exc:
            raise ConfigError(f"{self.path}: unreadable pin store (not JSON: {exc})") from exc
        records: dict[str, PinRecord] = {}
        for key, item in dict(raw.get("devices", {})).items():
            if isinstance(item, dict):
                known = {k: v for k, v in item.items() if k in PinRecord.__dataclass_fields__}
                known["key"] = key
                records[key] = PinRecord(**known)
        self._cache = _Cache(stamp=stamp, records=records)
        return records

    def _write(self, records: dict[str, PinRecord]) -> None:
        doc: dict[str, Any] = {
            "devices": {
                k: {f: v for f, v in asdict(r).items() if f != "key"}
                for k, r in sorted(records.items())
            }
        }
        write_atomically(self.path, json.dumps(doc, indent=2))

    def get(self, key: str) -> PinRecord:
        with self._thread_lock:
            self._read()
            return self._cache.records.get(key) or PinRecord(key=key)

    def all(self) -> list[PinRecord]:
        with self._thread_lock:
            return sorted(self._read().values(), key=lambda r: r.key)

    def update(self, key: str, **changes: Any) -> PinRecord:
        """Change one record under the lock; returns the new record."""
        with self._locked():
            records = dict(self._read())
            record = replace(records.get(key, PinRecord(key=key)), **changes)
            records[key] = record
            self._write(records)
            return record

    def update_many(self, changes: dict[str, dict[str, Any]]) -> None:
        """Apply several records' changes in one locked rewrite (first contact of a whole site)."""
        with self._locked():
            records = dict(self._read())
            for key, fields in changes.items():
                records[key] = replace(records.get(key, PinRecord(key=key)), **fields)
            self._write(records)

    def apply_config(self, key: str, tls: str | None, ssh: str | None) -> PinRecord:
        """Pins given in the config win over first-use pins, unless an admin accepted newer ones."""
        return self.apply_config_many({key: (tls, ssh)})[key]

    def apply_config_many(
        self, given: dict[str, tuple[str | None, str | None]]
    ) -> dict[str, PinRecord]:
        """:meth:`apply_config` for many devices in one locked rewrite."""
        with self._locked():
            records = dict(self._read())
            result: dict[str, PinRecord] = {}
            changed = False
            for key, (tls, ssh) in given.items():
                record = records.get(key, PinRecord(key=key))
                if tls is not None and tls != record.config_tls:
                    record = replace(
                        record, tls=tls, config_tls=tls, pending_tls=None, source="config"
                    )
                    changed = True
                if ssh is not None and ssh != record.config_ssh:
                    record = replace(
                        record, ssh=ssh, config_ssh=ssh, pending_ssh=None, source="config"
                    )
                    changed = True
                records[key] = record
                result[key] = record
            if changed:
                self._write(records)
            return result

    def accept(self, selector: str) -> list[PinRecord]:
        """Trust the pending certificate/host key of devices matching serial, host or host:port."""
        with self._locked():
            records = dict(self._read())
            chosen = [r for r in records.values() if selector in (r.serial, r.key, r.host)]
            if not chosen:
                raise ConfigError(
                    f"no device with serial or host {selector!r} in {self.path} "
                    "(see: polyfleet agent pins list)"
                )
            accepted = []
            for record in chosen:
                new = replace(
                    record,
                    tls=record.pending_tls or record.tls,
                    ssh=record.pending_ssh or record.ssh,
                    pending_tls=None,
                    pending_ssh=None,
                    source="admin",
                )
                records[record.key] = new
                accepted.append(new)
            self._write(records)
            return accepted
