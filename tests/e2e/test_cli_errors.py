"""Every failing command reports the same error object, the documented exit status, no rule ids."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cli_testkit import ERROR_KEYS, Run, closed_port, run_all

ROOT = Path(__file__).resolve().parents[2]
HEADER = (
    "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,"
    "site,room,host_serial\n"
)
#: A renewal with a gap (E5) and a model that does not exist.
BAD_REGISTRY = HEADER + (
    "S1,studio_x50,2023-03-01,partner_poly_plus,A,2023-03-01,2024-02-29,krakow,r,\n"
    "S1,studio_x50,2023-03-01,partner_poly_plus,B,2024-03-05,2027-03-04,krakow,r,\n"
    "S2,studio_x99,2023-03-01,,,,,krakow,r,\n"
)
RULE_ID = re.compile(r"\b[CDEHPSW]\d{1,2}\b")


def _assert_one_error_object(run: Run, status: int, code: str) -> dict[str, object]:
    assert run.status == status, run
    document = run.json()
    error = document["error"]
    assert set(error) == ERROR_KEYS, run
    assert error["code"] == code, run
    assert isinstance(error["problems"], list)
    # The same sentence reaches people on standard error.
    assert str(error["message"]) in run.err, run
    assert isinstance(error, dict)
    return error


def test_json_errors_came_in_a_different_shape_from_each_command(tmp_path: Path) -> None:
    """Failing --json commands of every group print one error object and the documented status."""
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_REGISTRY, encoding="utf-8")
    password = tmp_path / "pw"
    password.write_text("secret\n", encoding="utf-8")
    os.chmod(password, 0o600)
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    cases: list[tuple[list[str], int, str]] = [
        (["controller", "devices", "--data-dir", str(tmp_path / "typo"), "--json"], 1, "no_store"),
        (
            ["controller", "entitlement", "check", "--assets", str(bad), "--json"],
            1,
            "invalid_registry",
        ),
        (
            ["controller", "sla", "--plan", "hezo_plus", "--submitted", "2025-11-24T10:00",
             "--json"],
            2,
            "bad_input",
        ),
        (
            ["controller", "tickets", "show", "PF-1", "--url", url, "--token", "t", "--json"],
            1,
            "unreachable",
        ),
        (
            ["agent", "enroll", "--controller", url, "--code", "ABCD-EFGH-JKLM-NPQR", "--json",
             "--credential-file", str(tmp_path / "credential")],
            1,
            "unreachable",
        ),
        (
            ["agent", "probe", "127.0.0.1", "--rest-port", str(port), "--user", "admin",
             "--password-file", str(password), "--insecure", "--timeout", "3", "--json"],
            3,
            "device_unreachable",
        ),
        (["sim", "--fleet", str(tmp_path / "missing.toml"), "--json"], 2, "config"),
        (["controller", "site", "list", "--no-such-flag", "--json"], 2, "usage"),
    ]  # fmt: skip
    runs = run_all([argv for argv, _status, _code in cases], cwd=tmp_path)
    for run, (_argv, status, code) in zip(runs, cases, strict=True):
        _assert_one_error_object(run, status, code)
    registry = runs[1].json()
    problems = registry["error"]["problems"]
    assert [(p["line"], p["column"]) for p in problems] == [(3, "contract_start"), (4, "model")]
    assert registry["error"]["file"] == str(bad)
    # Kept for scripts written against the earlier shape of this command.
    assert registry["problems"] == problems and registry["file"] == str(bad)
    usage = runs[-1]
    assert usage.err.startswith("usage: polyfleet")
    assert "unrecognized arguments: --no-such-flag" in usage.json()["error"]["message"]
    assert runs[2].json()["error"]["field"] == "submitted"


def test_rule_ids_were_in_messages_meant_for_people(tmp_path: Path) -> None:
    """Rule ids stay out of stderr and messages; the JSON carries them in its rule fields."""
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_REGISTRY, encoding="utf-8")
    naive, registry, text = run_all(
        [
            [
                "controller",
                "sla",
                "--plan",
                "hezo_plus",
                "--submitted",
                "2025-11-24T10:00",
                "--json",
            ],
            ["controller", "entitlement", "check", "--assets", str(bad), "--json"],
            ["controller", "entitlement", "check", "--assets", str(bad)],
        ],
        cwd=tmp_path,
    )
    error = _assert_one_error_object(naive, 2, "bad_input")
    assert error["rule"] == "C2"
    assert "offset" in str(error["message"])
    problems = _assert_one_error_object(registry, 1, "invalid_registry")["problems"]
    assert isinstance(problems, list)
    assert [p["rule"] for p in problems] == ["E5", None]
    assert "gap after the contract on line 2" in problems[0]["message"]
    for run in (naive, registry, text):
        assert not RULE_ID.search(run.err), run.err
    for problem in problems:
        assert not RULE_ID.search(problem["message"]), problem
    assert "line 3, column contract_start: gap after the contract on line 2" in text.err


def test_error_codes_the_commands_use_were_undocumented() -> None:
    """Every error code a command can raise is listed in docs/cli.md."""
    sources = [
        *ROOT.glob("controller/cli/*.py"),
        # What a command refuses before it reaches a controller (a data directory with no store).
        ROOT / "controller" / "core.py",
        ROOT / "agent" / "cli.py",
        ROOT / "simulator" / "cli.py",
        ROOT / "polyfleet" / "cli.py",
        ROOT / "polyfleet" / "demo.py",
        ROOT / "shared" / "cli_errors.py",
    ]
    codes: set[str] = set()
    for path in sources:
        text = path.read_text(encoding="utf-8")
        codes |= set(re.findall(r"\b(?:code|kind)=\"([a-z_]+)\"", text))
        codes |= set(re.findall(r"\"code\": \"([a-z_]+)\"", text))
    assert {"no_store", "invalid_registry", "unreachable", "usage"} <= codes
    documented = set(re.findall(r"`([a-z_]+)`", (ROOT / "docs" / "cli.md").read_text("utf-8")))
    assert codes <= documented, sorted(codes - documented)
