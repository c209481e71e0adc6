"""Settings of security events: ``[security_webhook]``, where each is posted as signed JSON."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from polyfleet.controller.settings.tickets import (
    EMPTY_IS_ABSENT,
    WebhookSection,
    WebhookSettings,
    webhook_settings,
)
from polyfleet.shared.config import ConfigModel, check


class SecuritySections(ConfigModel):
    """The sections of ``controller.toml`` that security events read."""

    #: Every security event (an admin session from outside a site's admin networks), to the
    #: people who watch the network: not the service desk's webhook, nor its escalation one.
    security_webhook: Annotated[WebhookSection | None, EMPTY_IS_ABSENT] = None


def security_webhook(
    sections: Mapping[str, Mapping[str, Any]],
    *,
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
    source: str | Path | None = None,
) -> WebhookSettings | None:
    """The ``[security_webhook]`` table (of ``source``), checked; None when it is left out."""
    given = {name: sections[name] for name in SecuritySections.model_fields if name in sections}
    checked = check(SecuritySections, given, source=source, base=base)
    env = os.environ if env is None else env
    return webhook_settings(checked.security_webhook, env, source, "security_webhook")
