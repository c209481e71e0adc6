"""Who the desk contacts at a site (W2) and where replacement hardware goes (P3, RMA)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from polyfleet.controller.domain.admin_input import (
    AdminInputError,
    display_name,
    email_address,
    phone_number,
    printable_text,
)

#: The authorised reporter's fields, as a site stores them.
CONTACT_FIELDS = ("name", "phone", "email")
#: The RMA delivery address's fields, as a site stores them.
ADDRESS_FIELDS = ("street", "postal_code", "city", "country")
#: How a ticket names each of them when it lacks it (``missing``), and the key that fills it
#: (``PATCH /api/v1/tickets/{id}``, ``tickets fill --contact-name``...).
CONTACT_KEYS = tuple(f"contact_{name}" for name in CONTACT_FIELDS)
ADDRESS_KEYS = tuple(f"address_{name}" for name in ADDRESS_FIELDS)
#: Longest street line, postal code, city and country an address takes.
_ADDRESS_MAX = {"street": 200, "postal_code": 16, "city": 100, "country": 64}


class SiteContact(BaseModel):
    """The site's authorised reporter: the desk's engineer contacts this person (W2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    phone: str = ""
    email: str = ""

    def missing(self) -> list[str]:
        """The ticket keys (``contact_name``...) this contact lacks."""
        return [f"contact_{name}" for name in CONTACT_FIELDS if not getattr(self, name)]

    def merged(self, other: SiteContact | None) -> SiteContact:
        """These fields, with ``other``'s where these are empty."""
        if other is None:
            return self
        return SiteContact(**{k: getattr(self, k) or getattr(other, k) for k in CONTACT_FIELDS})


class DeliveryAddress(BaseModel):
    """Where replacement hardware is delivered (the RMA address)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    street: str = ""
    postal_code: str = ""
    city: str = ""
    country: str = ""

    def missing(self) -> list[str]:
        """The ticket keys (``address_street``...) this address lacks."""
        return [f"address_{name}" for name in ADDRESS_FIELDS if not getattr(self, name)]

    def merged(self, other: DeliveryAddress | None) -> DeliveryAddress:
        if other is None:
            return self
        return DeliveryAddress(**{k: getattr(self, k) or getattr(other, k) for k in ADDRESS_FIELDS})

    def one_line(self) -> str:
        """``street, postal code city, country``, leaving out what is not known."""
        town = " ".join(part for part in (self.postal_code, self.city) if part)
        return ", ".join(part for part in (self.street, town, self.country) if part)


def checked_contact_field(name: str, value: str, *, field: str) -> str:
    """One contact field through the admin input checks; "" clears it."""
    if not value.strip():
        return printable_text(value, field=field, allow_empty=True)
    if name == "phone":
        return phone_number(value, field=field)
    if name == "email":
        return email_address(value, field=field)
    return display_name(value, field=field)


def checked_address_field(name: str, value: str, *, field: str) -> str:
    """One address field through the admin input checks; "" clears it."""
    return printable_text(value, field=field, max_chars=_ADDRESS_MAX[name], allow_empty=True)


def contact_changes(values: Mapping[str, Any], *, prefix: str = "contact.") -> dict[str, str]:
    """Contact fields given (name -> text), checked; unknown names are refused."""
    return _changes(values, CONTACT_FIELDS, checked_contact_field, prefix)


def address_changes(
    values: Mapping[str, Any], *, prefix: str = "delivery_address."
) -> dict[str, str]:
    """Address fields given (name -> text), checked; unknown names are refused."""
    return _changes(values, ADDRESS_FIELDS, checked_address_field, prefix)


def _changes(
    values: Mapping[str, Any], known: tuple[str, ...], check: Any, prefix: str
) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in values.items():
        field = f"{prefix}{name}"
        if name not in known:
            raise AdminInputError(field, f"is not a field; use {', '.join(known)}")
        if value is None:
            continue
        if not isinstance(value, str):
            raise AdminInputError(field, f"expected text, got {type(value).__name__}")
        found[name] = check(name, value, field=field)
    return found


def site_contact(site: Mapping[str, Any] | None) -> SiteContact | None:
    """The contact a stored site document holds, or None."""
    stored = None if site is None else site.get("contact")
    return SiteContact.model_validate(stored) if isinstance(stored, dict) else None


def site_address(site: Mapping[str, Any] | None) -> DeliveryAddress | None:
    """The delivery address a stored site document holds, or None."""
    stored = None if site is None else site.get("delivery_address")
    return DeliveryAddress.model_validate(stored) if isinstance(stored, dict) else None
