"""The report of a run: written by the real flow, logged to MLflow, found by `lepton report`, rendered by headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import stat
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton import report as pages
from tests.conftest import FAST, make_workspace, run_cli

DIGITS = {"data": {"bounds": {"*": [0, 16]}}}


SVG = "{http://www.w3.org/2000/svg}"


def _svg(path: Path):
    """A plot's SVG, parsed: it must be well-formed XML for a browser to draw it."""
    import xml.etree.ElementTree as ET

    return ET.parse(path).getroot()


def _data(**changes) -> pages.ReportData:
    """A small report's data, as the task would gather it."""
    base = dict(
        status="promoted", message="promoted as version 1 (first champion)", created=datetime(2026, 1, 2, tzinfo=timezone.utc),
        model_name="m", increment_id="abc123", file="data/increments/abc123.csv", model_version=1, champion_version=1,
        data_hash="f00.dir", git_commit="none",
        holdouts=[pages.HoldoutRow(increment_id="abc123", rows=10, new=True, candidate_accuracy=0.9, candidate_macro_f1=0.88)],
    )
    return pages.ReportData(**{**base, **changes})


def test_the_accuracy_heatmap_draws_the_most_recent_cells_only(tmp_path):
    """After many increments the heatmap shows the last models and holdouts, at the size of a full HEATMAP_CELLS-square one; the JSON keeps all."""
    from lepton.report.plots import HEATMAP_CELLS, heatmap

    def matrix(n):
        return {"rows": np.full((n, n), 0.9).tolist(), "columns": [f"c{i:07d}" for i in range(n)], "trained": [f"t{i:07d}" for i in range(n)]}

    def drawn(path):  # the image's size, and the cells it draws (each a rect with a value written on it)
        svg = _svg(path)
        return (svg.get("width"), svg.get("height")), len([t for t in svg.iter(f"{SVG}text") if re.fullmatch(r"\d\.\d\d", t.text or "")])

    full, cells = drawn(heatmap(matrix(HEATMAP_CELLS), tmp_path / "full.svg"))
    assert cells == HEATMAP_CELLS**2
    assert drawn(heatmap(matrix(30), tmp_path / "thirty.svg")) == (full, HEATMAP_CELLS**2)
    three, cells = drawn(heatmap(matrix(3), tmp_path / "three.svg"))
    assert int(three[0]) < int(full[0]) and cells == 9


def test_values_from_data_and_file_names_are_escaped(tmp_path):
    """A file name or a problem carrying HTML shows as text: nothing from the data becomes markup."""
    hostile = "<script>alert('x')</script>"
    data = _data(
        status="rejected", model_version=None, champion_version=None, holdouts=[], message=f"rejected because {hostile}",
        source=f"{hostile}.csv", file=f"data/quarantine/{hostile}.csv",
        validation=pages.ValidationSummary(passed=False, rows=3, expectations=5, failed=1, problems=[f"column {hostile!r} is missing"]),
        drift=[pages.DriftRow(feature='<img src=x onerror="alert(1)">', test="ks", statistic=0.5, p_value=0.01, drifted=True)],
    )
    page = pages.write(data, tmp_path / "r", tmp_path)
    text = page.read_text()
    assert "<script>" not in text and "<img src=x" not in text
    assert f"{hostile}.csv" in html.unescape(text)  # shown as text
    assert "&lt;img src=x onerror=" in text
    assert "Rejected: increment abc123 quarantined" in text


def test_drift_section_shows_each_feature_or_says_it_was_not_measured(tmp_path):
    """Drift rows list the test, statistic, p-value and verdict (drifted first); without drift, the page says so."""
    drift = [
        {"feature": "age", "test": "ks", "statistic": 0.0312, "p_value": 0.8123, "drifted": False},
        {"feature": "colour", "test": "chi2", "statistic": 41.5, "p_value": 0.00001234, "drifted": True},
        {"feature": "income", "test": "psi", "statistic": 0.31, "p_value": None, "drifted": True},
    ]
    text = pages.render_html(_data(drift=[pages.DriftRow.model_validate(d) for d in drift], drift_action="warn"), {})
    section = text[text.index("<h2>Drift</h2>") : text.index("<h2>Lineage</h2>")]
    assert "2 of 3 feature(s) drifted; action: <strong>warn</strong>" in section
    assert section.index("colour") < section.index("income") < section.index("age")
    assert "41.5000" in section and "1.234e-05" in section and "0.8123" in section
    none = pages.render_html(_data(), {})
    assert "Drift was not measured for this run." in none
    # The label's test is the label's, not a feature's; a run that could test the label alone says no feature was.
    label = {"feature": "price", "test": "ks", "statistic": 0.468, "p_value": 0.0001, "drifted": True, "label": True}
    with_label = pages.render_html(_data(drift=[pages.DriftRow.model_validate(d) for d in [*drift, label]], drift_action="warn"), {})
    assert "2 of 3 feature(s) drifted; the label drifted; action" in with_label
    alone = pages.render_html(_data(drift=[pages.DriftRow.model_validate({**label, "drifted": False})]), {})
    assert "No feature tested (too few history rows to compare with, or none of the increment's classes); the label did not drift." in alone


def test_a_numeric_target_reads_as_r2_and_mae_not_accuracy(tmp_path):
    """R² as a number (0.829, not 82.9%), its change as a difference, MAE beside it, and the matrix named for R²."""
    holdouts = [pages.HoldoutRow(increment_id="abc123", rows=10, new=True, candidate_accuracy=0.829, champion_accuracy=0.807,
                                 candidate_mae=3.2, champion_mae=3.4)]
    data = _data(holdouts=holdouts, summary={"candidate_new_mae": 3.2, "champion_new_mae": 3.4},
                 matrix={"ids": ["abc123"], "rows": [[0.829]]}, lineage_metrics={"average_accuracy": 0.829, "forgetting": 0.0, "bwt": 0.0})
    text = pages.render_html(data, {})
    section = text[text.index("Candidate vs champion") : text.index("</section>", text.index("Candidate vs champion"))]
    assert "0.8290" in section and "0.8070" in section and "+0.022" in section and "3.2000" in section and ">MAE<" in section
    assert "%" not in section and "pts" not in section and "macro-F1" not in section


def test_training_section_says_which_network_went_to_the_gate(tmp_path):
    """drift.action=compete and gate.fallback=retrain: the Training section names the network the gate judged, with both scores."""
    note = "drift.action=compete: a new network trained on all 588 accepted training rows competes with the fine-tuned candidate: the fine-tuned candidate goes to the gate (accuracy 80.0% against the retrained network's 75.0%)"
    training = pages.TrainingSummary(losses=[1.0, 0.5], seconds=1.0, device="cpu", strategy="der+nme", new_samples=10, memory_samples=2, warm_start=True)
    text = pages.render_html(_data(training=training, training_note=note), {})
    section = text[text.index("<h2>Training</h2>") : text.index("<h2>Validation</h2>")]
    assert note in html.unescape(section)
    assert "which network" not in pages.render_html(_data(training=training), {})


def test_a_new_network_is_shown_as_gated_against_the_champion_not_trained_from_it():
    """A network retrained from scratch (gate.fallback, drift.action=compete) had the champion only as its rival at the gate."""
    def summary(warm: bool) -> pages.TrainingSummary:
        return pages.TrainingSummary(losses=[1.0], seconds=1.0, device="cpu", strategy="der+nme", new_samples=10, memory_samples=0, warm_start=warm)

    def parent(**changes) -> str:
        return html.unescape(pages.render_html(_data(model_version=3, parent_version=2, **changes), {}))

    assert "none: a new network, gated against version 2" in parent(training=summary(False))
    assert "new network" not in parent(training=summary(True))


def test_find_latest_and_by_version(tmp_path):
    """`find` gives the newest run's page, or the asked version's; a missing one names what exists."""
    state = tmp_path / ".lepton"
    with pytest.raises(pages.ReportNotFound, match="no report in .* yet"):
        pages.find(state)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    runs = [
        _data(model_version=1, increment_id="a1", created=start),
        _data(status="rejected", model_version=None, increment_id="b2", created=start + timedelta(hours=1), holdouts=[]),
        _data(model_version=2, increment_id="c3", created=start + timedelta(hours=2)),
    ]
    for data in runs:
        pages.write(data, pages.reports_root(state) / data.folder_name())
    assert pages.find(state) == pages.reports_root(state) / "v2-c3" / "report.html"
    assert pages.find(state, 1) == pages.reports_root(state) / "v1-a1" / "report.html"
    with pytest.raises(pages.ReportNotFound, match=r"no report for model version 7; versions with a report: 1, 2"):
        pages.find(state, 7)
    # A rejected run is the latest when it came last.
    later = _data(status="rejected", model_version=None, increment_id="d4", created=start + timedelta(hours=3), holdouts=[])
    pages.write(later, pages.reports_root(state) / later.folder_name())
    assert pages.find(state).parent.name == "rejected-d4"


# --- real runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_api, increments, one_thread):
    """Two digits increments through the real flow (first champion, then a promotion) and a broken one (rejected)."""
    from lepton.flows.continual import continual_training

    root = tmp_path_factory.mktemp("report-ws")
    ws = make_workspace(root, "digit", "digits", DIGITS)
    broken = tmp_path_factory.mktemp("broken") / "broken <export>.parquet"
    pd.read_parquet(increments[1]).drop(columns=["pixel_10"]).head(80).to_parquet(broken, index=False)
    outcomes = [continual_training(str(path), str(ws.root), FAST) for path in (increments[0], broken, increments[1])]
    yield ws, outcomes
    shutil.rmtree(root, ignore_errors=True)


def _registry(ws):
    from lepton.config import load
    from lepton.tasks.tracking import connect

    config = load(ws.root)
    client, _ = connect(ws, config.registry)
    return client, config.registry.model_name


def test_every_run_writes_a_report(runs):
    """Promoted and rejected runs each leave a page in .lepton/reports/ and note it in their outcome."""
    ws, outcomes = runs
    assert [o.status for o in outcomes] == ["promoted", "rejected", "promoted"]
    for outcome in outcomes:
        assert outcome.report is not None
        assert (ws.root / outcome.report).is_file()
        assert outcome.report.startswith(".lepton/reports/")
        data = json.loads((ws.root / outcome.report).with_name("report.json").read_text())
        assert (data["status"], data["increment_id"], data["model_version"]) == (outcome.status, outcome.increment_id, outcome.version)
    # The workspace's git ignores the reports and the GX folder with them.
    assert ".lepton/" in (ws.root / ".gitignore").read_text().splitlines()


def test_report_holds_the_numbers_the_registry_recorded(runs):
    """The page shows the model version, the data hash, the gate's reasons and, per holdout, the accuracies MLflow tracked."""
    ws, outcomes = runs
    outcome = outcomes[2]
    client, name = _registry(ws)
    version = client.get_model_version(name, str(outcome.version))
    tags, metrics = version.tags, client.get_run(version.run_id).data.metrics
    text = (ws.root / outcome.report).read_text()

    assert f"Promoted: version {outcome.version} is the champion" in text
    assert f"{name} version {outcome.version}" in text
    assert tags["lepton.data_hash"] == outcome.data_hash and outcome.data_hash in text
    assert tags["lepton.git_commit"] in text and version.run_id in text
    for reason in json.loads(tags["lepton.gate_reasons"]):
        assert html.escape(reason) in text
    for key in ("candidate_new_accuracy", "champion_new_accuracy", "candidate_old_accuracy", "champion_old_accuracy"):
        assert f"{outcome.metrics[key]:.1%}" in text
    # Each holdout's row carries the candidate's and the champion's accuracy as tracked.
    holdout_ids = [outcomes[0].increment_id, outcome.increment_id]
    for i, increment_id in enumerate(holdout_ids):
        row = re.search(rf"<code>{increment_id}</code>.*?</tr>", text, re.S).group(0)
        assert f"{metrics[f'holdout_{i}_candidate_accuracy']:.1%}" in row
        assert f"{metrics[f'holdout_{i}_champion_accuracy']:.1%}" in row
    # Training curve: one loss per epoch, falling, as the run's final loss says.
    data = json.loads((ws.root / outcome.report).with_name("report.json").read_text())
    losses = data["training"]["losses"]
    assert len(losses) == 15 and losses[-1] < losses[0]
    assert losses[-1] == pytest.approx(metrics["final_train_loss"])
    # Plots are embedded (the page stands alone) and written beside it.
    folder = (ws.root / outcome.report).parent
    assert text.count('src="data:image/svg+xml;base64,') == 3
    for plot in ("training_loss.svg", "holdouts.svg", "accuracy_matrix.svg"):
        assert _svg(folder / plot).tag == f"{SVG}svg"
    # The loss curve draws a point per epoch; the bars, the candidate's accuracy on each holdout.
    assert len(list(_svg(folder / "training_loss.svg").iter(f"{SVG}circle"))) == 15
    bars = [float(t.text) for r in _svg(folder / "holdouts.svg").iter(f"{SVG}rect") if r.get("class") == "candidate" for t in r]
    assert bars == pytest.approx([metrics[f"holdout_{i}_candidate_accuracy"] for i in range(len(holdout_ids))], abs=5e-4)


def test_report_is_logged_to_the_tracking_run(runs):
    """The registered version's run carries the page, its data and plots under report/, next to the accuracy matrix."""
    ws, outcomes = runs
    client, name = _registry(ws)
    run_id = client.get_model_version(name, str(outcomes[2].version)).run_id
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {f"report/{f}" for f in ("report.html", "report.json", "training_loss.svg", "holdouts.svg", "accuracy_matrix.svg", "accuracy_matrix.json")} <= logged
    page = Path(client.download_artifacts(run_id, "report/report.html"))
    assert page.read_text() == (ws.root / outcomes[2].report).read_text()


def test_validation_and_data_docs(runs):
    """The page states rows and expectations passed/failed, and a rejection's links the GX Data Docs page of that validation
    (data.data_docs=rejected: increments that pass get none)."""
    ws, outcomes = runs
    for outcome in outcomes:
        data = json.loads((ws.root / outcome.report).with_name("report.json").read_text())
        validation = data["validation"]
        if outcome.status != "rejected":
            assert validation["data_docs"] is None and validation["passed"]
            continue
        docs = ws.root / validation["data_docs"]
        assert docs.is_file() and validation["data_docs"].startswith(".lepton/gx/uncommitted/data_docs/")
        assert outcome.increment_id in docs.name
        text = (ws.root / outcome.report).read_text()
        assert html.escape(validation["data_docs"]) in text
        # The link is relative to the page, so it resolves wherever the workspace is.
        href = re.search(r'<a href="([^"]+)"><code>', text).group(1)
        assert ((ws.root / outcome.report).parent / href).resolve() == docs.resolve()
        if outcome.status == "rejected":
            assert validation["failed"] >= 1 and validation["rows"] == 80
            assert "missing column(s) &#39;pixel_10&#39;" in text
            assert outcome.file in text and "Quarantine" in text
            assert "pixel_10" in docs.read_text()
        else:
            assert validation["failed"] == 0 and validation["expectations"] > 0


def test_rejected_report_has_no_model_sections(runs):
    """A rejected increment's page leads with the validation: no gate, no training, no model version."""
    ws, outcomes = runs
    text = (ws.root / outcomes[1].report).read_text()
    assert "Rejected: increment" in text and "<h2>Gate" not in text and "<h2>Training</h2>" not in text
    assert "none (no model was trained)" in text
    assert "broken_export_.parquet" in text  # the name it arrived under, made safe at ingest


def _pixels(png: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.skipif(pages.browser_binary() is None, reason="needs headless Chromium (apt-get install chromium)")
def test_chromium_renders_the_page(runs, tmp_path):
    """Headless Chromium turns a real run's page into a full-width, non-blank PNG with the verdict's colour on top."""
    ws, outcomes = runs
    png = pages.screenshot(ws.root / outcomes[2].report, tmp_path / "promoted.png")
    pixels = _pixels(png)
    height, width, _ = pixels.shape
    assert width == pages.WIDTH
    # The whole page, cropped below the content: taller than a screen, far shorter than the 4000 px window.
    assert 1500 < height < 4000
    assert pixels.std() > 20
    # The verdict banner (top right, clear of its text) is green for a promotion, red for a rejection:
    # the stylesheet was applied, not just the text drawn.
    assert tuple(pixels[40, width - 90]) == (0x15, 0x80, 0x3D)
    rejected = _pixels(pages.screenshot(ws.root / outcomes[1].report, tmp_path / "rejected.png"))
    assert tuple(rejected[40, width - 90]) == (0xB9, 0x1C, 0x1C)
    assert rejected.shape[0] < height  # no model sections


def test_screenshot_times_out_and_kills_the_browser(tmp_path, monkeypatch):
    """A browser that hangs is stopped after the timeout, with its process group, and the error says so."""
    hang = tmp_path / "fake-chromium"
    pid_file = tmp_path / "child.pid"
    hang.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pid_file}\nwait\n")
    hang.chmod(hang.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("LEPTON_CHROMIUM", str(hang))
    page = tmp_path / "p.html"
    page.write_text("<p>x</p>")
    with pytest.raises(pages.RenderError, match="did not render .* within 2s"):
        pages.screenshot(page, tmp_path / "p.png", timeout=2)
    # The helper the browser started went with its process group.
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# --- lepton report ---------------------------------------------------------------------------------


def test_cli_prints_the_latest_or_a_versions_report(runs, tmp_path):
    """`lepton report` prints the latest run's page; --model-version picks one; --open hands it to the browser."""
    ws, outcomes = runs
    latest = run_cli(["report", "--workspace", str(ws.root)], api_url=None)
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout.strip() == str(ws.root / outcomes[2].report)
    first = run_cli(["report", "--model-version", "1", "--workspace", str(ws.root)], api_url=None)
    assert first.returncode == 0 and first.stdout.strip() == str(ws.root / outcomes[0].report)

    missing = run_cli(["report", "--model-version", "9", "--workspace", str(ws.root)], api_url=None)
    assert missing.returncode == 1 and "no report for model version 9; versions with a report: 1, 2" in missing.stderr
    assert "Traceback" not in missing.stderr

    # $BROWSER is how Python's webbrowser finds a browser: this one records what it was asked to open.
    opened = tmp_path / "opened.txt"
    recorder = tmp_path / "browser"
    recorder.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    env_browser = os.environ.get("BROWSER")
    os.environ["BROWSER"] = str(recorder)
    try:
        result = run_cli(["report", "--open", "--workspace", str(ws.root)], api_url=None)
    finally:
        if env_browser is None:
            os.environ.pop("BROWSER")
        else:
            os.environ["BROWSER"] = env_browser
    assert result.returncode == 0, result.stderr
    assert opened.read_text().strip() == (ws.root / outcomes[2].report).as_uri()


def test_cli_says_when_there_is_no_report_yet(clean_dir):
    """A workspace with no run yet: exit 1 and a sentence, not a traceback."""
    ws = make_workspace(clean_dir / "empty", "y", "m")
    result = run_cli(["report", "--workspace", str(ws.root)], api_url=None)
    assert result.returncode == 1
    assert "no report in" in result.stderr and "yet" in result.stderr and "Traceback" not in result.stderr


def test_a_command_run_outside_a_workspace_names_the_option(clean_dir):
    """A cron job that forgot --workspace ran in / and was told to make / a workspace: it is told of --workspace too."""
    result = run_cli(["status"], api_url=None, cwd=clean_dir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is not a Lepton workspace (the folder the command ran in, nor one above it, is; pass --workspace PATH for another)" in " ".join(result.stderr.split())


def test_a_command_run_inside_a_workspace_finds_it(clean_dir):
    """From a workspace's data/ folder, `lepton status` said it was no workspace and to `lepton init .` there: a workspace
    inside the workspace. The nearest folder above that is one is the workspace, as git finds its repository."""
    ws = make_workspace(clean_dir / "ws", "y", "m")
    inside = ws.root / "data" / "increments"
    inside.mkdir(parents=True, exist_ok=True)
    result = run_cli(["status", "--json"], api_url=None, cwd=inside)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tracking_uri"] == f"sqlite:///{ws.root.resolve() / '.lepton' / 'mlflow.db'}"


def test_the_holdout_bars_draw_the_most_recent_holdouts_only(tmp_path):
    """Beyond HOLDOUT_BARS holdouts the bars show the last ones: 28 old holdouts at 90% and 12 recent at 10% draw no tall bar."""
    from lepton.report.plots import HOLDOUT_BARS, holdout_bars

    def rows(accuracies):
        return [pages.HoldoutRow(increment_id=f"{i:016d}", rows=20, new=i == len(accuracies) - 1, candidate_accuracy=a) for i, a in enumerate(accuracies)]

    def heights(path):  # the candidate's bars, left to right
        return [float(r.get("height")) for r in _svg(path).iter(f"{SVG}rect") if r.get("class") == "candidate"]

    low = heights(holdout_bars(rows([0.1] * HOLDOUT_BARS), tmp_path / "low.svg"))
    tall = heights(holdout_bars(rows([0.9] * HOLDOUT_BARS), tmp_path / "tall.svg"))
    mixed = heights(holdout_bars(rows([0.9] * 28 + [0.1] * HOLDOUT_BARS), tmp_path / "mixed.svg"))
    assert len(low) == len(tall) == HOLDOUT_BARS
    assert tall[0] == pytest.approx(9 * low[0], rel=0.01)  # a bar's height is the accuracy
    assert mixed == low  # the 28 older, taller bars are not drawn
