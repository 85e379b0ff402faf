"""Commands about the model's versions and its champion: status, data checkout, rollback, promote, history, versions, compare."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lepton.cli.common import (
    JsonOption,
    WorkspaceOption,
    console,
    fail,
    flag,
    in_warm_worker,
    no_tracebacks,
    open_workspace,
    percent,
    quiet_libraries,
    shown,
)
from lepton.lineage import LEFT_OUT_WHY
from lepton.secrets import credentials_out_of_uri, redact, redacted
from lepton.workspace import Workspace


LEFT_OUT = f"accepted, then left out of training and judgement: its {LEFT_OUT_WHY}"


def _retried(record: Any) -> list[str]:
    """An accepted increment's earlier rejections, said: accepted on a later attempt, it would read as never refused."""
    refused = [a for a in record.attempts[:-1] if a.verdict == "rejected"]
    if record.state != "accepted" or not refused:
        return []
    return [f"accepted at attempt {len(record.attempts)}; rejected {len(refused)} time(s) before: {'; '.join(refused[-1].reasons)}"]


def gather_status(ws: Workspace) -> dict[str, Any]:
    from lepton.config import load
    from lepton.tasks.tracking import describe

    config = load(ws.root)
    info = describe(ws, config.registry)
    increments = [
        {"id": r.id, "file": r.file, "state": r.state, "source": r.source, "reasons": r.reasons or _retried(r)} for r in ws.read_manifest().increments
    ]
    by_id = {r["id"]: r for r in increments}
    # What the champion neither learnt nor was judged on, its labels unlike the rest: accepted, and out of the model.
    left_out = json.loads((info["champion"] or {}).get("lineage", {}).get("left_out", "[]"))
    verdicts = info.pop("verdicts", None) or {}
    for item in increments:
        if item["state"] == "accepted" and item["id"] in left_out:
            item["state"] = "left out"
            item["reasons"] = [LEFT_OUT]
        verdict = verdicts.get(item["id"]) if item["state"] != "duplicate" else None
        # What became of the model trained on it: a version the gate promoted or kept out (none yet: a run under way, or failed).
        item["version"] = verdict["version"] if verdict else None
        item["gate"] = ("passed" if verdict["gate_passed"] else "kept out") if verdict else None
    for entry in ws.read_duplicates():
        original = by_id.get(entry["id"], {})
        increments.append({"id": entry["id"], "file": original.get("file"), "state": "duplicate", "source": entry["source"], "reasons": []})
    info["increments"] = increments
    if not info["versions"]:
        from lepton.tasks.tracking import registry_key_of, registry_lost

        lost = ws.registered_before(registry_key_of(ws, config.registry))
        if lost:
            info["warning"] = registry_lost(lost, config.registry.model_name)
    schema = ws.read_schema()
    info["columns"] = (
        {"label": schema["label"], "task": schema.get("task", "classification"), "kinds": schema.get("kinds", {}), "why": schema.get("why", {})}
        if schema else None
    )
    return info


def status(
    workspace: WorkspaceOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """The registered model, the champion with its lineage and metrics, and the increments seen."""
    ws = open_workspace(workspace, check="config", quiet=True)
    _unless_kept(ws, "describe")
    try:
        info = redacted(gather_status(ws))
    except Exception as error:  # a tracking server that is down, a locked database, a full disk
        raise fail(f"could not read the registry: {error}") from None
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    console.print(f"model [bold]{info['model_name']}[/bold] at {redact(info['tracking_uri'])}: {info['versions']} version(s) (each one: `lepton versions`)")
    champion = info["champion"]
    if info.get("warning"):
        console.print(f"[yellow]warning:[/yellow] {info['warning']}")
    if champion is None:
        console.print("no champion yet")
    else:
        table = Table("", "", title=f"champion: version {champion['version']}", show_header=False, title_justify="left")
        for key, value in champion["lineage"].items():
            if key == "gate_reasons":
                notes = set(json.loads(champion["lineage"].get("gate_notes", "[]")))
                for reason in json.loads(value):
                    table.add_row("gate note" if reason in notes else "gate check", f"· {reason}" if reason in notes else f"[green]✓[/green] {reason}")
            elif key == "gate_notes":
                continue
            elif key == "left_out":
                table.add_row("left out", ", ".join(json.loads(value)))
            elif key == "increment_file":  # from where the command ran, as the increments table shows files
                table.add_row("increment file", shown(ws, value))
            elif key != "config":
                table.add_row(key.replace("_", " "), str(value))
        for key, value in champion["metrics"].items():
            table.add_row(key.replace("_", " "), f"{value:.1%}" if "accuracy" in key or "forgetting" in key else f"{value:.4g}")
        console.print(table)
    columns = info["columns"]
    if columns and columns["kinds"]:
        kinds = Table("column", "kind", "why", title=f"columns (label {columns['label']!r}: {columns['task']})", title_justify="left")
        for column, kind in columns["kinds"].items():
            kinds.add_row(column, kind, columns["why"].get(column, ""))
        console.print(kinds)
    states = {"accepted": "green", "rejected": "red", "duplicate": "dim", "left out": "yellow"}
    table = Table("id", "state", "model", "file", "arrived as", "why", title="increments", title_justify="left")
    for item in info["increments"]:
        colour = states.get(item["state"], "white")
        model = "" if item.get("version") is None else (
            f"version {item['version']}" + (" (champion)" if champion and item["version"] == champion["version"] else f", gate {item['gate']}")
        )
        table.add_row(item["id"], f"[{colour}]{item['state']}[/{colour}]", model, shown(ws, item["file"]), item["source"], "; ".join(item["reasons"]))
    console.print(table)


def data_checkout(
    model_version: Annotated[int, typer.Option("--model-version", help="Registered model version whose training data to restore.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Restore data/ to exactly what a model version was trained at, from its tags alone."""
    ws = open_workspace(workspace, quiet=True)
    from mlflow.exceptions import MlflowException

    from lepton.config import load
    from lepton.lineage import TAG
    from lepton.tasks.tracking import version_tags
    from lepton.tasks.versioning import restore

    config = load(ws.root)
    try:
        tags = version_tags(ws, config.registry, model_version)
    except MlflowException:
        raise fail(f"model {config.registry.model_name!r} has no version {model_version}") from None
    digest = tags.get(TAG + "data_hash")
    if not digest:
        raise fail(f"version {model_version} carries no {TAG}data_hash tag")
    try:
        restore(ws, digest, config.dvc)
    except Exception as error:
        raise fail(f"could not restore data version {digest}: {error}") from None
    console.print(f"data/ restored to {digest} (model version {model_version}, increment {tags.get(TAG + 'increment_id')})")


def _move_champion(move_flow: Any, ws: Workspace, args: tuple, what: str) -> Any:
    """Run a rollback or promotion flow; its move (None: nothing moved), or a one-line failure (refused or failed)."""
    from lepton.cli.progress import to_log_file

    quiet_libraries()
    no_tracebacks()
    undo = to_log_file(ws.run_log)  # its refusal is said below, once
    try:
        state = move_flow(str(ws.root), *args, return_state=True)
    finally:
        for step in reversed(undo):
            step()
    from lepton.flows.handback import result_of

    result = result_of(state)
    if state.is_failed() or isinstance(result, BaseException):
        detail = result if isinstance(result, BaseException) else state.message
        raise fail(f"{what} refused: {state.message}" if state.name == "Refused" else f"{what} failed: {detail}")
    return result


def rollback(
    to: Annotated[int | None, typer.Option("--to", min=1, help="Former champion to make champion again.", show_default="the previous champion in the history")] = None,
    reason: Annotated[str, typer.Option(help="Why; kept in the history on the registered model.")] = "rolled back by hand",
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Move the champion back to a former champion (a Prefect flow) and record why; any other version takes `lepton promote`."""
    ws = open_workspace(workspace)
    if not reason.strip():
        raise fail("--reason is empty: say why the champion moves back")
    from lepton.flows.rollback import rollback as rollback_flow

    result = _move_champion(rollback_flow, ws, (to, reason), "rollback")
    if result is None:
        console.print(f"version {to} is already the champion: nothing moved")
        return
    back = "back " if result.from_version is None or result.to_version < result.from_version else ""  # to a later version: not back
    console.print(f"champion moved {back}from version {result.from_version} to version {result.to_version} ({result.reason})")


def promote(
    version: Annotated[int, typer.Argument(min=1, help="Model version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the history as a promotion by hand.")],
    force: Annotated[bool, flag("--force", help="Promote a version the gate kept out.")] = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Make a version champion by hand (a Prefect flow), recorded as a manual promotion; refused if the gate kept it out, unless --force."""
    ws = open_workspace(workspace)
    if not reason.strip():
        raise fail("--reason is empty: say why this version becomes champion")
    from lepton.flows.rollback import promote as promote_flow

    result = _move_champion(promote_flow, ws, (version, reason, force), "promotion")
    if result is None:
        console.print(f"version {version} is already the champion: nothing moved")
        return
    was = f"version {result.from_version}" if result.from_version is not None else "none"
    console.print(f"champion moved from {was} to version {result.to_version} by hand ({result.reason})", soft_wrap=True)


def _unless_kept(ws: Workspace, what: str) -> None:
    """An answer to read from the registry, not from the workspace's cache, is read in the warm worker when it is up:
    MLflow is imported there already."""
    from lepton.config import load
    from lepton.tasks.tracking import is_kept

    if not is_kept(ws, load(ws.root).registry, what):
        in_warm_worker(ws)


def history(
    workspace: WorkspaceOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Every move of the champion: from which version to which, when, by which run, and why."""
    ws = open_workspace(workspace, check="config", quiet=True)
    from lepton.config import load
    from lepton.history import applied
    from lepton.tasks.tracking import describe
    from lepton.tasks.tracking import history as champion_moves

    config = load(ws.root)
    _unless_kept(ws, "history")
    try:
        moves = champion_moves(ws, config.registry)
        current = describe(ws, config.registry)["champion_version"] if moves else None
    except Exception as error:  # a tracking server that is down, say
        raise fail(f"could not read the history of {config.registry.model_name!r}: {error}") from None
    done = applied(moves, current)
    if as_json:
        print(json.dumps([m.model_dump(mode="json") | {"applied": ok} for m, ok in zip(moves, done, strict=True)], indent=2))
        return
    if not moves:
        console.print(f"no champion moves recorded for {config.registry.model_name!r} yet")
        return
    table = Table("#", "when (UTC)", "kind", "from", "to", "by", "reason", title=f"champion history of {config.registry.model_name}")
    for m, ok in zip(moves, done, strict=True):
        by = " ".join(filter(None, [m.flow_run_name, f"({m.user})" if m.user else None])) or "-"
        kind = m.kind + (" (manual)" if m.manual else "") + ("" if ok else " [yellow](not applied: its run stopped before the alias moved)[/yellow]")
        table.add_row(
            str(m.seq), f"{m.at:%Y-%m-%d %H:%M:%S}", kind, "-" if m.from_version is None else f"v{m.from_version}",
            f"v{m.to_version}", by, m.reason,
        )
    console.print(table)


# `versions` and `compare` only read the registry: they talk to MLflow directly, without
# tasks.registry, whose Prefect import would cost them more than their whole work.
def _read_registry(ws: Workspace) -> tuple[Any, str]:
    """An MLflow client on the workspace's registry and the model's name."""
    from mlflow import MlflowClient

    from lepton.config import load

    config = load(ws.root).registry
    uri = credentials_out_of_uri(ws.tracking_uri(config.tracking_uri), os.environ)
    if uri.startswith("sqlite:"):
        ws.state.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), config.model_name


def _version_record(version: Any, current: int | None, moves: list[Any]) -> dict[str, Any]:
    """One model version as plain data: gate verdict, key metrics, lineage and its part in the champion history."""
    from lepton.history import was_champion
    from lepton.lineage import TAG, Lineage

    tags, number = dict(version.tags), int(version.version)
    lineage = Lineage.from_tags(tags)
    # A tag that is missing (a version registered by hand) shows as null, the verdict too.
    return {
        "version": number,
        "increment_id": tags.get(TAG + "increment_id"),
        "increment_file": tags.get(TAG + "increment_file"),
        "parent_version": lineage.parent_version,
        "new_network": lineage.new_network,  # gated against its parent, but trained from scratch rather than from its weights
        "transferred_from": lineage.transferred_from or None,  # a first model started from another's feature layers
        "gate_passed": lineage.gate_passed if TAG + "gate_passed" in tags else None,
        "gate_reasons": list(lineage.gate_reasons),
        "champion": "current" if number == current else "former" if was_champion(moves, current, number) else "never",
        "metrics": lineage.metrics,
        "strategy": tags.get(TAG + "strategy"),
        "data_hash": tags.get(TAG + "data_hash"),
        "git_commit": tags.get(TAG + "git_commit"),
        "superseded_by": tags.get(TAG + "superseded_by"),
        "archived": json.loads(tags[TAG + "archived"]) if TAG + "archived" in tags else None,
        "run_id": version.run_id,
        "registered_at": datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
        "config": lineage.config,
    }


def _versions(ws: Workspace) -> tuple[str, list[dict[str, Any]], Any]:
    """The model's name, every version of it oldest first, and the client that read them."""
    from mlflow.exceptions import MlflowException

    from lepton.history import parse

    client, name = _read_registry(ws)
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return name, [], client
        raise
    current = model.aliases.get("champion")
    current = int(current) if current is not None else None
    moves = parse(model.tags, "champion")
    found = client.search_model_versions(f"name='{name}'")
    return name, sorted((_version_record(v, current, moves) for v in found), key=lambda r: r["version"]), client


def _parent(record: dict[str, Any]) -> str:
    """The version it was trained from (or, for a new network, gated against), or the other model's a first version started from (lepton init --from)."""
    if record["parent_version"] is not None:
        return f"new, vs v{record['parent_version']}" if record.get("new_network") else f"v{record['parent_version']}"
    return f"from {record['transferred_from']}" if record.get("transferred_from") else "-"


def _score(metrics: dict[str, float], which: str) -> str:
    """``candidate_new``, say, as accuracy in percent or as MAE, whichever the version was judged by."""
    if f"{which}_mae" in metrics:
        return f"MAE {metrics[f'{which}_mae']:.4g}"
    return percent(metrics.get(f"{which}_accuracy"))


def versions(
    workspace: WorkspaceOption = Path("."),
    as_json: JsonOption = False,
    all_: Annotated[bool, flag("--all", help="Archived versions too (`lepton archive`).")] = False,
) -> None:
    """Every model version: its gate verdict, key metrics, increment, parent, and whether it is or was champion."""
    ws = open_workspace(workspace, check="config")
    in_warm_worker(ws)  # it reads the registry each time: MLflow is imported there already
    try:
        name, records, _ = _versions(ws)
    except Exception as error:  # a tracking server that is down, a locked database
        raise fail(f"could not read the registry: {error}") from None
    hidden = [r for r in records if r["archived"]] if not all_ else []
    records = [r for r in records if all_ or not r["archived"]]
    if as_json:
        print(json.dumps(redacted([{k: v for k, v in r.items() if k != "config"} for r in records]), indent=2))
        return
    if not records and not hidden:
        console.print(f"model {name!r} has no versions yet: run an increment first")
        return
    gate = {True: "[green]passed[/green]", False: "[yellow]kept out[/yellow]", None: "-"}
    champion = {"current": "[bold green]champion[/bold green]", "former": "former", "never": "-"}
    table = Table("version", "increment", "parent", "gate", "new holdout", "earlier holdouts", "champion", "registered (UTC)", title=f"versions of {name}", title_justify="left")
    for r in records:
        table.add_row(
            f"v{r['version']}" + (" (archived)" if r["archived"] else ""), r["increment_id"] or "-",
            _parent(r), gate[r["gate_passed"]],
            _score(r["metrics"], "candidate_new"), _score(r["metrics"], "candidate_old"), champion[r["champion"]], r["registered_at"][:19].replace("T", " "),
        )
    console.print(table)
    if hidden:
        console.print(f"{len(hidden)} archived version(s) not shown (--all shows them)")
    console.print(f"side by side: lepton compare A B --workspace {workspace}", soft_wrap=True)


def archive_targets(records: list[dict[str, Any]], chosen: list[int], kept_out: bool) -> tuple[list[int], list[str]]:
    """The versions to archive, and why any asked for cannot be: the champion and former champions stay (a rollback needs them)."""
    by_number = {r["version"]: r for r in records}
    problems = [f"there is no version {v}" for v in chosen if v not in by_number]
    picked = [by_number[v] for v in chosen if v in by_number]
    if kept_out:
        picked += [r for r in records if r["gate_passed"] is False and r["champion"] == "never" and r["version"] not in chosen]
    for r in picked:
        if r["champion"] != "never":
            problems.append(f"version {r['version']} is {'the champion' if r['champion'] == 'current' else 'a former champion'}: a rollback may need it")
    targets = [r["version"] for r in picked if r["champion"] == "never" and not r["archived"]]
    return sorted(set(targets)), problems


def archive(
    version: Annotated[list[int] | None, typer.Argument(metavar="VERSION", help="Versions to archive.", show_default=False)] = None,
    kept_out: Annotated[bool, flag("--kept-out", help="Every version the gate kept out that never was champion.")] = False,
    reason: Annotated[str, typer.Option(help="Why; kept on each version.")] = "archived by hand",
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Mark versions archived: `lepton versions` no longer lists them. Nothing is deleted (the version, its run, data and artifacts stay)."""
    ws = open_workspace(workspace, check="config")
    chosen = list(version or [])
    if not chosen and not kept_out:
        raise fail("name the versions to archive, or --kept-out for every version the gate kept out")
    if not reason.strip():
        raise fail("--reason is empty: say why")
    try:
        name, records, client = _versions(ws)
    except Exception as error:
        raise fail(f"could not read the registry: {error}") from None
    targets, problems = archive_targets(records, chosen, kept_out)
    if problems:
        raise fail("; ".join(problems) + ": nothing archived")
    if not targets:
        console.print("nothing to archive")
        return
    stamp = json.dumps({"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reason": reason})
    for number in targets:
        client.set_model_version_tag(name, str(number), "lepton.archived", stamp)
    console.print(f"archived version(s) {', '.join(str(v) for v in targets)} of {name} ({reason}); `lepton versions --all` still lists them", soft_wrap=True)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"gate": {"policy": ...}}`` as ``{"gate.policy": ...}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def comparison(a: dict[str, Any], b: dict[str, Any], run_metrics: tuple[dict[str, float], dict[str, float]]) -> dict[str, Any]:
    """Two version records side by side: each value as ``[a, b]``; configuration keys only where they differ."""
    lineage = ("increment_id", "increment_file", "data_hash", "parent_version", "new_network", "strategy", "git_commit", "gate_passed", "champion")
    holdout = re.compile(r"holdout_(\d+)_candidate_(\w+)")
    holdouts: dict[str, list[float | None]] = {}
    for i, metrics in enumerate(run_metrics):
        for key, value in metrics.items():
            match = holdout.fullmatch(key)
            if match:
                holdouts.setdefault(f"holdout {match[1]} {match[2]}", [None, None])[i] = value
    summary = sorted(set(a["metrics"]) | set(b["metrics"]))
    config_a, config_b = _flatten(a["config"]), _flatten(b["config"])
    return {
        "versions": [a["version"], b["version"]],
        "lineage": {k: [a[k], b[k]] for k in lineage},
        "metrics": {k: [a["metrics"].get(k), b["metrics"].get(k)] for k in summary},
        "holdouts": dict(sorted(holdouts.items(), key=lambda item: int(item[0].split()[1]))),
        "config_differences": {k: [config_a.get(k), config_b.get(k)] for k in sorted(set(config_a) | set(config_b)) if config_a.get(k) != config_b.get(k)},
    }


def compare(
    a: Annotated[int, typer.Argument(metavar="A", help="A model version.")],
    b: Annotated[int, typer.Argument(metavar="B", help="Another model version.")],
    workspace: WorkspaceOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Two model versions side by side: metrics per holdout, configuration differences, and lineage."""
    ws = open_workspace(workspace, check="config")
    in_warm_worker(ws)
    try:
        name, records, client = _versions(ws)
        by_number = {r["version"]: r for r in records}
        missing = [v for v in (a, b) if v not in by_number]
        if missing:
            raise fail(f"model {name!r} has no version {missing[0]} (it has {', '.join(map(str, by_number)) or 'none yet'}: see `lepton versions`)")
        pair = by_number[a], by_number[b]
        run_metrics = tuple(client.get_run(r["run_id"]).data.metrics if r["run_id"] else {} for r in pair)
    except typer.Exit:
        raise
    except Exception as error:
        raise fail(f"could not read the registry: {error}") from None
    result = redacted(comparison(*pair, run_metrics))
    if as_json:
        print(json.dumps(result, indent=2))
        return

    def show(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1%}" if "accuracy" in key or "forgetting" in key else f"{value:.4g}"
        return json.dumps(value) if isinstance(value, list | dict) else str(value)

    titles = {"lineage": "lineage", "metrics": "metrics", "holdouts": "per holdout, oldest first", "config_differences": "configuration differences"}
    for rows, title in titles.items():
        if not result[rows]:
            console.print(f"{title}: none" if rows == "config_differences" else f"{title}: not recorded")
            continue
        table = Table("", f"v{a}", f"v{b}", title=title, title_justify="left")
        for key, (left, right) in result[rows].items():
            marker = "" if left == right or rows == "config_differences" else "[yellow]*[/yellow] "
            table.add_row(marker + (key if rows == "config_differences" else key.replace("_", " ")), show(key, left), show(key, right))
        console.print(table)
    console.print("* differs", style="dim")
