"""Registry and firmware files as Polish spreadsheets save them, read by the CLI."""

from __future__ import annotations

from pathlib import Path

from cli_testkit import run_all

HEADER = (
    "serial;model;purchase_date;plan;contract_number;contract_start;contract_end;site;room;"
    "host_serial\r\n"
)
#: What Excel in a Polish locale writes for "CSV": `;` between cells, DD.MM.YYYY, CRLF,
#: Windows-1250 (Polish letters in a room name).
POLISH_REGISTRY = HEADER + (
    "PL1;Studio X50;10.01.2025;hezo_plus;HZ/2025/1;10.01.2025;09.01.2027;krakow;Sala Łódź;\r\n"
    "PL2;studio_x30;01.03.2024;;;;;krakow;Sala Wawel;\r\n"
)


def test_a_polish_excel_registry_was_refused(tmp_path: Path) -> None:
    """`;`, DD.MM.YYYY and Windows-1250 are read by import and check; the encoding is named."""
    registry = tmp_path / "rejestr.csv"
    registry.write_bytes(POLISH_REGISTRY.encode("cp1250"))
    firmware = tmp_path / "firmware.csv"
    # Excel's "CSV UTF-8" starts with a byte order mark.
    firmware.write_bytes("\ufeffserial;version\r\nPL1;4.1.0_00.180034\r\n".encode())
    dry, check = run_all(
        [
            ["controller", "assets", "import", str(registry), "--dry-run", "--json",
             "--data-dir", str(tmp_path / "data")],
            ["controller", "entitlement", "check", "--assets", str(registry),
             "--firmware", str(firmware), "--at", "2026-06-01", "--json"],
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert dry.status == 0, dry
    assert sorted(dry.json()["added"]) == ["PL1", "PL2"]
    assert check.status == 0, check
    verdicts = {v["serial"]: v for v in check.json()["assets"]}
    assert verdicts["PL1"]["warranty_until"] == "2027-01-09"
    assert verdicts["PL1"]["firmware"]["installed"] == "4.1.0_00.180034"
    for done in (dry, check):
        assert f"warning: {registry}: not UTF-8" in done.err, done
        assert "read as Windows-1250" in done.err
        assert str(firmware) not in done.err  # UTF-8 with a BOM needs no warning


def test_a_date_that_does_not_exist_said_expected_yyyy_mm_dd(tmp_path: Path) -> None:
    """A day that does not exist is named as such, in the file and on the command line."""
    rows = [
        "X1;studio_x50;2027-02-30;;;;;krakow;r;",
        "X2;studio_x50;31.04.2026;;;;;krakow;r;",
        "X3;studio_x50;2026-13-01;;;;;krakow;r;",
        "X4;studio_x50;02/03/2026;;;;;krakow;r;",
    ]
    registry = tmp_path / "bad.csv"
    registry.write_text(HEADER + "\r\n".join(rows) + "\r\n", encoding="utf-8")
    check, at, release = run_all(
        [
            ["controller", "entitlement", "check", "--assets", str(registry), "--json"],
            ["controller", "entitlement", "forecast", "--assets", str(registry),
             "--at", "2027-02-30"],
            ["controller", "releases", "add", "--version", "9.9.9", "--date", "2027-02-30",
             "--file", str(tmp_path / "releases.toml")],
        ],
        cwd=tmp_path,
    )  # fmt: skip
    assert check.status == 1, check
    messages = {p["line"]: p["message"] for p in check.json()["error"]["problems"]}
    assert messages == {
        2: "2027-02-30 is not a date: February 2027 has 28 days",
        3: "31.04.2026 is not a date: April 2026 has 30 days",
        4: "2026-13-01 is not a date: there is no month 13",
        5: "'02/03/2026' is not a date: write YYYY-MM-DD (or DD.MM.YYYY)",
    }
    assert at.status == 1 and "2027-02-30 is not a date: February 2027 has 28 days" in at.err
    assert release.status == 1, release
    assert "2027-02-30 is not a date: February 2027 has 28 days" in release.err


def test_a_file_in_an_unknown_encoding_was_not_named(tmp_path: Path) -> None:
    """Bytes that are neither UTF-8 nor Windows-1250 are refused, naming the encoding and fix."""
    registry = tmp_path / "utf32.csv"
    registry.write_bytes(b"serial,model\n\x81\x98\n")
    (done,) = run_all(
        [["controller", "entitlement", "check", "--assets", str(registry), "--json"]],
        cwd=tmp_path,
    )
    assert done.status == 1, done
    error = done.json()["error"]
    assert (error["code"], error["file"]) == ("file_unreadable", str(registry))
    assert "not UTF-8 text (byte 0x81 at position 13)" in error["message"]
    assert "save it as CSV UTF-8" in error["message"]
