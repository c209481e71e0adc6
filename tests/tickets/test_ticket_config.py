"""Ticket settings from [tickets], [smtp], [webhook]: defaults, secrets, clear errors."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from polyfleet.controller.config import load_config
from polyfleet.controller.settings.tickets import Secret, TicketConfigError, ticket_settings


def test_W7_defaults_desk_and_escalation_contacts() -> None:
    """With no sections: pomoc@ and escalation@myhezo.pl, English, no delivery channel."""
    settings = ticket_settings({})
    assert settings.desk_email == "pomoc@myhezo.pl"
    assert settings.escalation_email == "escalation@myhezo.pl"
    assert settings.language == "en"
    assert settings.smtp is None and settings.webhook is None


def test_W7_escalation_contact_is_configurable() -> None:
    """The escalation contact and the debounce times come from [tickets]."""
    settings = ticket_settings(
        {
            "tickets": {
                "escalation_email": "it-lead@firma.pl",
                "language": "pl",
                "min_duration_s": 120,
                "unreachable_min_duration_s": 900,
            }
        }
    )
    assert settings.escalation_email == "it-lead@firma.pl"
    assert settings.language == "pl"
    assert settings.policy.min_duration == timedelta(minutes=2)
    assert settings.policy.unreachable_min_duration == timedelta(minutes=15)


def test_secrets_from_file_and_env_never_show(tmp_path: Path) -> None:
    """Passwords come from a file or an environment variable and print as ***."""
    secret_file = tmp_path / "smtp.pass"
    secret_file.write_text("file-pass-123\n")
    settings = ticket_settings(
        {
            "smtp": {
                "host": "127.0.0.1",
                "from": "fleet@firma.pl",
                "username": "fleet",
                "password_file": "smtp.pass",
            },
            "webhook": {"url": "http://127.0.0.1:9/hook", "secret_env": "HOOK_SECRET"},
        },
        base=tmp_path,
        env={"HOOK_SECRET": "env-secret-456"},
    )
    assert settings.smtp is not None and settings.webhook is not None
    assert settings.smtp.password == Secret("file-pass-123")
    assert settings.webhook.secret.reveal() == "env-secret-456"
    shown = repr(settings) + str(settings.smtp) + str(settings.webhook)
    assert "file-pass-123" not in shown and "env-secret-456" not in shown


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"tickets": {"language": "de"}}, "tickets.language"),
        ({"tickets": {"min_reports": 0}}, "tickets.min_reports"),
        ({"tickets": {"min_duration_s": "5m"}}, "tickets.min_duration_s"),
        ({"tickets": {"codes": ["camera_on_fire"]}}, "tickets.codes: unknown problem codes"),
        ({"tickets": {"escalation": "x@y"}}, "tickets.escalation: unknown key"),
        ({"tickets": {"sent_retention_days": -1}}, "tickets.sent_retention_days"),
        ({"tickets": {"desk_email": "pomoc@myhezo.pl\r\nBcc: x@y"}}, "tickets.desk_email"),
        ({"tickets": {"escalation_email": "two@a.pl, three@b.pl"}}, "tickets.escalation_email"),
        ({"smtp": {"host": "h", "from": "polyfleet\n@fleet.pl"}}, "smtp.from"),
        ({"smtp": {"from": "a@b"}}, "smtp.host"),
        ({"smtp": {"host": "127.0.0.1"}}, "smtp.from"),
        ({"smtp": {"host": "127.0.0.1", "from": "a@b", "username": "u"}}, "smtp.username"),
        (
            {
                "smtp": {
                    "host": "h",
                    "from": "a@b",
                    "username": "u",
                    "password": "p",
                    "starttls": False,
                }
            },
            "smtp.starttls",
        ),
        (
            {"smtp": {"host": "h", "from": "a@b", "username": "u", "password_env": "NOPE_UNSET"}},
            "smtp.password_env: environment variable NOPE_UNSET is not set",
        ),
        ({"webhook": {"url": "ftp://x", "secret": "s"}}, "webhook.url"),
        ({"webhook": {"url": "http://127.0.0.1/h"}}, "webhook.secret"),
        ({"webhook": {"url": "http://127.0.0.1/h", "secret": "a", "secret_env": "B"}}, "only one"),
    ],
)
def test_bad_settings_name_the_key(sections: dict[str, Any], needle: str) -> None:
    """Every bad setting is refused with a message naming the key."""
    with pytest.raises(TicketConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        ticket_settings(sections, env={})


def test_password_value_is_not_in_error_messages() -> None:
    """An error about the SMTP table does not echo the password given in it."""
    with pytest.raises(TicketConfigError) as caught:
        ticket_settings(
            {"smtp": {"host": "h", "from": "a@b", "username": "u", "password": "hunter2-Secret",
                      "bogus": 1}},
            env={},
        )  # fmt: skip
    assert "hunter2-Secret" not in str(caught.value)
    assert "bogus" in str(caught.value)


def _known_keys(section: str, required: dict[str, Any]) -> list[str]:
    """The keys the parser reads in ``section``, as its unknown-key error lists them."""
    with pytest.raises(TicketConfigError) as caught:
        ticket_settings({section: {**required, "no_such_key": 1}})
    message = str(caught.value)
    assert "no_such_key" in message
    return message.partition("known keys: ")[2].split(", ")


def test_deploy_example_documents_every_key_and_loads() -> None:
    """deploy/controller.example.toml shows every ticket key, with defaults, and validates."""
    example = Path(__file__).resolve().parents[2] / "deploy" / "controller.example.toml"
    config = load_config(example)
    env = {"POLYFLEET_SMTP_PASSWORD": "from-env-1", "POLYFLEET_WEBHOOK_SECRET": "from-env-2"}
    settings = ticket_settings(config.sections, base=example.parent, env=env)
    defaults = ticket_settings({})
    assert dataclasses.replace(settings, smtp=None, webhook=None) == defaults
    assert settings.smtp is not None and settings.webhook is not None
    assert settings.smtp.host == "127.0.0.1" and settings.smtp.starttls
    assert settings.smtp.password == Secret("from-env-1")
    assert settings.webhook.url.startswith("https://127.0.0.1:")
    assert settings.webhook.secret == Secret("from-env-2")
    text = example.read_text(encoding="utf-8")
    for section, required in (
        ("tickets", {}),
        ("smtp", {"host": "127.0.0.1", "from": "a@b.pl"}),
        ("webhook", {"url": "http://127.0.0.1:1/", "secret": "s"}),
    ):
        body = text.partition(f"\n[{section}]\n")[2].partition("\n[")[0]
        for key in _known_keys(section, required):
            assert re.search(rf"^(# )?{key} = ", body, re.MULTILINE), f"{section}.{key}"
