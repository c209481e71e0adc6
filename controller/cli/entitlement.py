"""``polyfleet controller assets|entitlement|releases``: registry, verdicts, release catalogue."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from polyfleet.controller.cli.reach import ControllerClient, config_of, print_json, run
from polyfleet.controller.config import ConfigError, ControllerConfig, load_config
from polyfleet.controller.core import holds_store
from polyfleet.controller.domain.assets import (
    EncodingProblem,
    InstalledFirmware,
    RegistryImportError,
    decode_csv,
    parse_day,
    parse_installed_firmware,
    parse_registry,
    plan_import,
)
from polyfleet.controller.domain.calendar import WARSAW
from polyfleet.controller.domain.entitlement import judge, parse_moment
from polyfleet.controller.domain.forecast import MAX_FORECAST_DAYS, forecast
from polyfleet.controller.domain.plans import CatalogueError, PlanCatalogue
from polyfleet.controller.domain.releases import ReleaseCatalogue
from polyfleet.controller.services import entitlement as service
from polyfleet.shared.cli_errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    unreadable_file,
)

#: The input is wrong (every problem listed): the shared "could not do what was asked".
EXIT_BAD_INPUT = EXIT_FAILED


def parse_at(text: str | None) -> datetime:
    """``--at``: an ISO 8601 moment with an offset, or a date (its Warsaw midnight); default now."""
    if text is None:
        return datetime.now(WARSAW)
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--at {exc}") from None


def _fail(
    args: argparse.Namespace,
    message: str,
    problems: Sequence[Mapping[str, Any]] | None = None,
    *,
    file: str | None = None,
    code: str = "bad_input",
    field: str | None = None,
    exit_status: int = EXIT_BAD_INPUT,
) -> NoReturn:
    """Raise the shared error; a file's bad rows also keep their top-level keys for scripts."""
    rows = [dict(problem) for problem in problems or ()]
    raise CommandFailed(
        message,
        code="invalid_registry" if problems is not None else code,
        exit_status=exit_status,
        problems=rows,
        file=file,
        field=field,
        extra={"file": file, "problems": rows} if problems is not None else None,
    )


def _code_of(exc: Exception) -> str:
    """The shared error code of a failure caught around a command's inputs."""
    if isinstance(exc, CatalogueError):
        return "catalogue"
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, OSError):
        return "file_unreadable"
    return "bad_input"


def _read_text(path: Path) -> str:
    """A CSV file's text, as a spreadsheet may have saved it (UTF-8, or Polish Excel's)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unreadable_file(path, exc) from None
    try:
        decoded = decode_csv(data)
    except EncodingProblem as exc:
        raise CommandFailed(f"{path}: {exc}", code="file_unreadable", file=path) from None
    if decoded.note:
        print(f"warning: {path}: {decoded.note}", file=sys.stderr)
    return decoded.text


def _catalogue_paths(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """(plans, releases): the flags, else the config's [entitlement] table, else None (shipped)."""
    config = load_config(getattr(args, "config", None))
    plans, releases = service.catalogue_paths(config.section("entitlement"))
    return getattr(args, "plans", None) or plans, getattr(args, "releases", None) or releases


def _catalogues(args: argparse.Namespace) -> tuple[PlanCatalogue, ReleaseCatalogue]:
    plans, releases = _catalogue_paths(args)
    return service.load_plans(plans), service.load_releases(releases)


def _add_catalogue_flags(parser: argparse.ArgumentParser, *, releases: bool = True) -> None:
    parser.add_argument("--plans", type=Path, help="plan catalogue (default: from --config)")
    if releases:
        parser.add_argument("--releases", type=Path, help="release catalogue (default: ditto)")
    parser.add_argument(
        "--config", type=Path, help="controller.toml whose [entitlement] names the catalogues"
    )


def _add_data_dir_flag(parser: argparse.ArgumentParser) -> None:
    # Taken like every controller command takes it, so one set of flags fits them all: the
    # catalogue is a file the configuration names, not something the data directory holds.
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="controller data directory (the catalogue read is still the one --config names)",
    )


# -- entitlement check / forecast ------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    try:
        at = parse_at(args.at)
        plans, releases = _catalogues(args)
        assets_text = _read_text(args.assets)
        firmware_text = _read_text(args.firmware) if args.firmware else None
    except (argparse.ArgumentTypeError, CatalogueError, ConfigError, OSError) as exc:
        return _fail(args, str(exc), code=_code_of(exc))
    try:
        assets = parse_registry(assets_text, plans)
    except RegistryImportError as exc:
        return _fail(args, f"{args.assets}: bad rows", exc.problems, file=str(args.assets))
    installed: dict[str, InstalledFirmware] = {}
    if firmware_text is not None:
        try:
            installed = parse_installed_firmware(firmware_text)
        except RegistryImportError as exc:
            return _fail(args, f"{args.firmware}: bad rows", exc.problems, file=str(args.firmware))
    registered = {asset.serial for asset in assets}
    for serial in sorted(set(installed) - registered):
        print(
            f"warning: {args.firmware}: {serial} is not in {args.assets}; ignored", file=sys.stderr
        )
    verdicts = [
        judge(
            asset,
            plans,
            releases,
            at,
            installed=installed.get(asset.serial),
        )
        for asset in sorted(assets, key=lambda a: a.serial)
    ]
    if args.json:
        print_json({"at": at.isoformat(), "assets": [v.to_json() for v in verdicts]})
        return EXIT_OK
    print(f"entitlement at {at.isoformat()}")
    print(
        f"{'SERIAL':<16} {'PLAN':<18} {'WARRANTY':<10}  {'PATCHES':<10}  {'UPGRADES':<10}  "
        "FIRMWARE (INSTALLED -> NEXT)"
    )
    for v in verdicts:
        fw = v.firmware
        hop = (
            f"{fw.installed or '?'} -> {fw.next} ({fw.kind}, "
            + ("entitled)" if fw.entitled else "not entitled)")
            if fw.next
            else (fw.installed or "firmware unknown")
        )
        print(
            f"{v.serial:<16} {v.plan or '-':<18} {v.warranty_until or '-'!s:<10}  "
            f"{v.patches_until or '-'!s:<10}  {v.upgrades_until or '-'!s:<10}  {hop}"
        )
        if v.flags:
            print(f"{'':<16} flags: {', '.join(v.flags)}")
        for rule in v.ineligible_rules:
            print(f"{'':<16} contract not eligible: {plans.rule_text(rule)}")
    return EXIT_OK


def _forecast(args: argparse.Namespace) -> int:
    try:
        at = parse_at(args.at)
        plans = service.load_plans(_catalogue_paths(args)[0])
        assets = parse_registry(_read_text(args.assets), plans)
    except RegistryImportError as exc:
        return _fail(args, f"{args.assets}: bad rows", exc.problems, file=str(args.assets))
    except (argparse.ArgumentTypeError, CatalogueError, ConfigError, OSError) as exc:
        return _fail(args, str(exc), code=_code_of(exc))
    result = forecast(assets, plans, at, args.days)
    if args.json:
        print_json(result.to_json())
        return EXIT_OK
    print(f"what ends between {at.date()} and {result.to_json()['until']}")
    for site in result.sites:
        print(f"site {site.site}: {len(site.events)} event(s)")
        if site.events:
            print(f"  {'LAST DAY':<10} {'DAYS':>7} {'SERIAL':<16} WHAT")
        for event in site.events:
            plan = f" {event.plan}" if event.plan else ""
            print(
                f"  {event.last_day} ({event.days_left:>3} d) {event.serial:<16} {event.kind}{plan}"
            )
    return EXIT_OK


# -- releases --------------------------------------------------------------------------------


def _release_json(release: Any) -> dict[str, Any]:
    return {
        "version": release.text,
        "build": release.build or None,
        "date": release.released.isoformat(),
        "needs": release.needs_text,
    }


def _releases_list(args: argparse.Namespace) -> int:
    try:
        catalogue = service.load_releases(args.file or _catalogue_paths(args)[1])
    except (CatalogueError, ConfigError) as exc:
        return _fail(args, str(exc), code=_code_of(exc))
    if args.json:
        print_json(
            {
                "models": sorted(catalogue.models),
                "releases": [_release_json(r) for r in catalogue.releases],
            }
        )
        return EXIT_OK
    print(f"{'DATE':<10}  {'VERSION':<22}  NEEDS AT LEAST")
    for release in catalogue.releases:
        print(f"{release.released}  {release.text:<22}  {release.needs_text or '-'}")
    return EXIT_OK


def _releases_add(args: argparse.Namespace) -> int:
    try:
        released = parse_day(args.date)
    except ValueError as exc:
        return _fail(args, f"--date: {exc}", field="date")
    try:
        target = args.file or _catalogue_paths(args)[1]
    except (CatalogueError, ConfigError) as exc:
        return _fail(args, str(exc), code=_code_of(exc))
    shipped = service.DEFAULT_RELEASES_PATH
    start_here = (
        f"copy the shipped catalogue ({shipped}) to a file you own, e.g. "
        "cp {shipped} /etc/polyfleet/releases.toml, name it in controller.toml under "
        '[entitlement] as releases = "/etc/polyfleet/releases.toml", then run releases add '
        "with --config controller.toml (or --file /etc/polyfleet/releases.toml)"
    ).replace("{shipped}", str(shipped))
    if target is None or target.resolve() == shipped.resolve():
        # The installed package is replaced by the next upgrade, and the controller reads
        # the catalogue its configuration names: a release added there would be lost.
        where = "--config names no [entitlement] releases file" if args.config else "no --config"
        return _fail(
            args,
            f"releases add never changes the catalogue installed with polyfleet ({where}): "
            + start_here,
            code="usage",
            field="file" if args.file else "config",
            exit_status=EXIT_USAGE,
        )
    if not target.is_file():
        return _fail(
            args,
            f"release catalogue {target} does not exist: {start_here}",
            code="file_not_found",
            file=str(target),
        )
    try:
        release = service.add_release(args.version, released, args.needs, path=target)
    except (CatalogueError, OSError) as exc:
        return _fail(args, str(exc), code=_code_of(exc))
    if args.json:
        print_json({"added": _release_json(release)})
    else:
        print(f"added {release.text} ({release.released})")
    return EXIT_OK


# -- assets import ---------------------------------------------------------------------------


def _with_plans(config: ControllerConfig, plans: Path) -> ControllerConfig:
    """``config`` whose controller reads the plan catalogue ``--plans`` names."""
    entitlement = {**config.section("entitlement"), "plans": str(plans)}
    return dataclasses.replace(config, sections={**config.sections, "entitlement": entitlement})


def _print_import(
    args: argparse.Namespace, document: Mapping[str, Any], plans: PlanCatalogue, count: int
) -> None:
    """What an import did (or would do), as JSON or in words with broken rules explained."""
    if args.json:
        print_json(document)
        return
    verb = "would import" if args.dry_run else "imported"
    print(
        f"{verb} {count} device(s): {len(document['added'])} new, "
        f"{len(document['updated'])} changed, {len(document['unchanged'])} unchanged"
    )
    rules = document.get("ineligible_rules") or {}
    if document["ineligible"]:
        print(f"flagged ineligible (imported): {', '.join(document['ineligible'])}")
        for serial in document["ineligible"]:
            for rule in rules.get(serial, []):
                print(f"  {serial}: {plans.rule_text(rule)}")


def _assets_import(args: argparse.Namespace) -> int:
    """Check the file here, then import it through the controller (``reach``): the running
    server, or one served here on the store (made if need be, as ``site add`` does)."""
    config = config_of(args)
    try:
        plans_path = args.plans or service.catalogue_paths(config.section("entitlement"))[0]
        plans = service.load_plans(plans_path)
        text = _read_text(args.file)
    except (CatalogueError, OSError) as exc:
        return _fail(args, str(exc), code=_code_of(exc))
    if args.plans:
        config = _with_plans(config, args.plans)
    # Checked here first, with the catalogue this command's controller reads: a bad file is
    # refused naming every cell without reaching (or starting) a controller at all.
    try:
        assets = parse_registry(text, plans, today=datetime.now(WARSAW).date())
    except RegistryImportError as exc:
        return _fail(
            args,
            f"{args.file}: nothing imported, fix these rows",
            exc.problems,
            file=str(args.file),
        )
    dry_run = bool(args.dry_run)
    if dry_run and config.store_url is None and not holds_store(config.data_dir):
        # A dry run changes nothing, not even by making a store: all of it would be new.
        _print_import(
            args, {"dry_run": True, **plan_import({}, assets).to_json()}, plans, len(assets)
        )
        return EXIT_OK

    async def action(client: ControllerClient) -> int:
        answer = await client.call(
            "POST",
            "/api/v1/assets/import",
            params={"dry_run": "1" if dry_run else None},
            data=text.encode("utf-8"),
            headers={"Content-Type": "text/csv; charset=utf-8"},
        )
        _print_import(args, answer, plans, len(assets))
        return EXIT_OK

    try:
        # A dry run reads the registry, which must exist; an import makes a new store.
        return run(args, action, needs_store=dry_run, config=config)
    except CommandFailed as exc:
        if exc.code != "invalid_registry":
            raise
        # A running server's catalogue may refuse what this command's accepted.
        return _fail(
            args,
            f"server refused the import: {exc.message}",
            exc.problems,
            file=str(args.file),
        )


def register(commands: argparse._SubParsersAction[Any]) -> None:
    assets = commands.add_parser("assets", help="the asset registry (devices and contracts)")
    assets_commands = assets.add_subparsers(dest="assets_command", metavar="ACTION", required=True)
    imp = assets_commands.add_parser(
        "import",
        help="check a registry CSV whole and import it",
        description="Columns: serial,model,purchase_date,plan,contract_number,contract_start,"
        "contract_end,site,room,host_serial. Any bad row rejects the whole file.",
    )
    imp.add_argument("file", type=Path, metavar="FILE.csv")
    imp.add_argument("--dry-run", action="store_true", help="check and report, change nothing")
    imp.add_argument("--data-dir", type=Path, help="controller data directory")
    imp.add_argument(
        "--config", type=Path, help="controller.toml (data directory, [entitlement] catalogues)"
    )
    imp.add_argument("--json", action="store_true", help="machine-readable output")
    imp.add_argument("--plans", type=Path, help="plan catalogue (default: from --config)")
    imp.set_defaults(func=_assets_import)

    ent = commands.add_parser("entitlement", help="what devices may get: verdicts and forecast")
    ent_commands = ent.add_subparsers(dest="entitlement_command", metavar="ACTION", required=True)
    check = ent_commands.add_parser(
        "check", help="judge every asset of a registry CSV (no server needed)"
    )
    check.add_argument("--assets", type=Path, required=True, metavar="FILE.csv")
    check.add_argument(
        "--firmware", type=Path, metavar="FILE.csv", help="installed versions: serial,version"
    )
    check.add_argument("--at", help="ISO 8601 moment (default: now)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    _add_catalogue_flags(check)
    check.set_defaults(func=_check)
    fc = ent_commands.add_parser("forecast", help="what expires or closes when, per site")
    fc.add_argument("--assets", type=Path, required=True, metavar="FILE.csv")
    fc.add_argument("--days", type=_days, default=90, help="horizon in days (default 90)")
    fc.add_argument("--at", help="ISO 8601 moment (default: now)")
    fc.add_argument("--json", action="store_true", help="machine-readable output")
    _add_catalogue_flags(fc, releases=False)
    fc.set_defaults(func=_forecast)

    rel = commands.add_parser("releases", help="the firmware release catalogue")
    rel_commands = rel.add_subparsers(dest="releases_command", metavar="ACTION", required=True)
    add = rel_commands.add_parser("add", help="add a release once its publication date is known")
    add.add_argument("--version", required=True, help="as Poly prints it, e.g. 4.2.5.412345")
    add.add_argument("--date", required=True, help="publication date, YYYY-MM-DD")
    add.add_argument("--needs", help="oldest installed version that may step to it")
    add.add_argument("--file", type=Path, help="releases.toml to change (default: from --config)")
    add.add_argument("--config", type=Path, help="controller.toml naming [entitlement] releases")
    _add_data_dir_flag(add)
    add.add_argument("--json", action="store_true", help="machine-readable output")
    add.set_defaults(func=_releases_add)
    lst = rel_commands.add_parser("list", help="the catalogued releases, oldest first")
    lst.add_argument("--file", type=Path, help="releases.toml to read (default: from --config)")
    lst.add_argument("--config", type=Path, help="controller.toml naming [entitlement] releases")
    _add_data_dir_flag(lst)
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_releases_list)
    # Imported here: the rollout commands import this module's neighbours, not the other way.
    from polyfleet.controller.cli.rollout import register_packages

    register_packages(rel_commands)


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 0 <= days <= MAX_FORECAST_DAYS:
        raise argparse.ArgumentTypeError(f"{days} is outside 0..{MAX_FORECAST_DAYS}")
    return days
