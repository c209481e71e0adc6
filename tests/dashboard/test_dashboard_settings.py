"""The [web] table of controller.toml: documented defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyfleet.controller.config import ConfigError, load_config
from polyfleet.controller.settings.web import WebSettings, web_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "controller.example.toml"


def test_the_example_config_documents_every_web_setting_with_its_default() -> None:
    """deploy/controller.example.toml's [web] table holds every key, at its default."""
    assert web_settings(load_config(EXAMPLE).section("web")) == WebSettings()
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in WebSettings.model_fields:
        assert f"\n{key} = " in text, key


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"session_ttl_s": 0}, "web.session_ttl_s"),
        ({"refresh_s": "15"}, "web.refresh_s"),
        ({"page_size": 5000}, "web.page_size"),
        ({"timezone": "Mars/Olympus"}, "web.timezone"),
        ({"sesion_ttl_s": 60}, "web.sesion_ttl_s"),
    ],
)
def test_a_bad_web_setting_names_its_key(table: dict[str, object], named: str) -> None:
    """Each wrong value or unknown key is refused with the key's name."""
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        web_settings(table)
