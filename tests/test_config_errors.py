"""The controller's, the agent's and the lab's config files word each kind of mistake alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from polyfleet.agent.config import load_config as load_agent_config
from polyfleet.controller.config import load_config as load_controller_config
from polyfleet.shared.errors import ConfigError
from polyfleet.simulator.fleet import load_fleet

AGENT = '[agent]\ndata_dir = "state"\n'
FLEET = (
    '[[sites]]\nid = "s"\n[[sites.rooms]]\nid = "r"\n[[sites.rooms.devices]]\n'
    'serial = "AAA0001"\nmodel = "g7500"\naddress = "127.44.0.1"\n'
)

#: (loader, file name, a file with ``{extra}`` where a key of the table under test goes,
#: that table's key path)
FILES: list[tuple[Callable[[Path], Any], str, str, str]] = [
    (load_controller_config, "controller.toml", "[agents]\n{extra}", "agents"),
    (load_agent_config, "agent.toml", AGENT + "{extra}", "agent"),
    (load_fleet, "fleet.toml", FLEET + "{extra}", "sites[0].rooms[0].devices[0]"),
]
IDS = ["controller", "agent", "lab"]


def _error(tmp_path: Path, loader: Callable[[Path], Any], name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        loader(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(("loader", "name", "text", "table"), FILES, ids=IDS)
def test_an_unknown_key_is_named_with_the_keys_known(
    tmp_path: Path, loader: Callable[[Path], Any], name: str, text: str, table: str
) -> None:
    """A misspelt key: ``FILE: TABLE.KEY: unknown key; known keys: ...`` in every file."""
    message = _error(tmp_path, loader, name, text.format(extra="colour = 1\n"))
    assert message.startswith(f"{table}.colour: unknown key; known keys: "), message


@pytest.mark.parametrize(("loader", "name", "text", "table"), FILES, ids=IDS)
def test_a_value_of_the_wrong_type_is_named_with_the_type_wanted(
    tmp_path: Path, loader: Callable[[Path], Any], name: str, text: str, table: str
) -> None:
    """A text where a number goes: ``FILE: TABLE.KEY must be a ..., not '...'`` everywhere."""
    key = {"agents": "poll_interval_s", "agent": "concurrency"}.get(table, "session_limit")
    message = _error(tmp_path, loader, name, text.format(extra=f'{key} = "many"\n'))
    assert message == f"{table}.{key} must be a whole number, not 'many'", message


def test_a_secret_given_wrongly_is_not_repeated_in_the_error(tmp_path: Path) -> None:
    """A password of the wrong type is refused without its value showing."""
    text = '[smtp]\nhost = "h"\nfrom = "a@b.pl"\nusername = "u"\npassword = 123456789\n'
    message = _error(tmp_path, load_controller_config, "controller.toml", text)
    assert message == "smtp.password must be a string, not ***", message
