"""This installation's own random id, kept in the store: it makes ticket ids its own.

Two controllers installed apart (two customers of one desk, or a reinstall) file tickets for
the same serial and fault; the desk must see two tickets, so every id names the installation.
The id is made once, the first time it is needed, and travels with the store (backup,
restore, transfer), so ids stay stable for as long as the installation's data does.
"""

from __future__ import annotations

import base64
import secrets

from polyfleet.controller.store.base import META, Store

#: The document in ``meta`` that holds the id.
INSTALLATION = "installation"
#: Random bytes of an id: 80 bits, so two installations never draw the same one.
ID_BYTES = 10


def new_installation_id() -> str:
    """A fresh random id: 16 base32 letters and digits (upper case, no padding)."""
    return base64.b32encode(secrets.token_bytes(ID_BYTES)).decode("ascii").rstrip("=")


class Installation:
    """Reads, and makes once, the installation id of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def stored_id(self) -> str | None:
        """The id the store holds, or None while none was made."""
        doc = self.store.get(META, INSTALLATION)
        found = None if doc is None else doc.get("id")
        return found if isinstance(found, str) and found else None

    def id(self) -> str:
        """The store's id, made now when it has none yet.

        The change is applied at once (reads see it) and becomes durable with, or before,
        the first change that uses it: a ticket saved with ``wait_durable`` carries it along,
        since the store makes its changes durable in order.
        """
        found = self.stored_id()
        if found is not None:
            return found
        made = new_installation_id()
        self.store.apply({META: {INSTALLATION: {"id": made}}})
        return made
