"""Rollback only to former champions, promotion by hand, outcomes an operator can see (named states, MLflow), and deployments that name their workspace."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest
import yaml

from lepton.history import champions, previous_champion
from tests.conftest import ROOT, make_workspace, run_cli
from tests.test_history import DIGITS, QUICK, moves, registry

# The third increment's candidate cannot gain a whole point of accuracy: the gate keeps it out.
KEEP_OUT = [*QUICK, "gate.policy=superior", "gate.min_improvement=1.0"]
DUMMY = {"path": "x.csv", "folder": "x"}  # the other required parameters of the deployments' flows


def test_a_rollback_to_a_former_champion_keeps_the_chain():
    """Rolling back, then forward to a former champion, then back again steps back along the chain, never forward."""
    history = moves(("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1), ("rollback", 1, 2))
    assert champions(history, 2) == [1, 2]
    assert previous_champion(history, 2) == 1  # was None: both versions counted as "rolled back from"
    history = moves(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3), ("rollback", 3, 1))
    assert champions(history, 1) == [1] and previous_champion(history, 1) is None  # not forward to 2
    # A record from before rollbacks were limited (to a version never champion) counts as a promotion.
    history = moves(("promote", None, 1), ("rollback", 1, 2))
    assert previous_champion(history, 2) == 1
    # A manual promotion is a promotion: the next rollback undoes it.
    history = moves(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3))
    assert previous_champion(history, 3) == 2


@pytest.fixture(scope="module")
def kept_out(tmp_path_factory, prefect_api):
    """A digits workspace with versions 1 and 2 promoted and version 3 kept out by the gate."""
    from lepton.flows.continual import continual_training
    from lepton.models.datasets import class_incremental

    root = tmp_path_factory.mktemp("promote-ws")
    ws = make_workspace(root / "ws", "digit", "digits", DIGITS)
    outcomes = []
    for i, frame in enumerate(class_incremental()[:3], start=1):
        path = root / f"day-{i}.parquet"
        frame.to_parquet(path, index=False)
        outcomes.append(continual_training(str(path), str(ws.root), KEEP_OUT if i == 3 else QUICK))
    assert [(o.status, o.version) for o in outcomes] == [("promoted", 1), ("promoted", 2), ("kept_out", 3)]
    yield ws
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration
def test_rollback_refuses_a_version_never_champion_and_promote_needs_force(kept_out, prefect_api):
    """`rollback --to` a kept-out version is refused and points at `promote`; `promote` refuses it unless --force, and records a manual promotion."""
    from lepton.config import load
    from lepton.flows.rollback import rollback
    from lepton.tasks.rollback import plan_rollback

    ws = str(kept_out.root)
    refused = run_cli(["rollback", "--to", "3", "--workspace", ws], api_url=prefect_api)
    assert refused.returncode == 1 and "version 3 of 'digits' was never champion" in refused.stderr
    assert "lepton promote 3 --reason" in refused.stderr and "Traceback" not in refused.stderr + refused.stdout
    assert registry(kept_out)[2] == 2 and len(registry(kept_out)[3]) == 2  # nothing moved, nothing recorded

    # Back to 1, forward to the former champion 2, and back again: the history is followed, not lost.
    assert (rollback(ws).to_version, rollback(ws, to=2, reason="labels fixed").to_version) == (1, 2)
    assert plan_rollback.fn(kept_out, load(kept_out.root).registry, None).target == 1

    gated = run_cli(["promote", "3", "--reason", "the superior policy was a mistake", "--workspace", ws], api_url=prefect_api)
    assert gated.returncode == 1, gated.stdout + gated.stderr
    assert "version 3 of 'digits' was kept out by the gate" in gated.stderr and "add --force" in gated.stderr
    missing = run_cli(["promote", "99", "--reason", "x", "--workspace", ws], api_url=prefect_api)
    assert missing.returncode == 1 and "has no version 99" in missing.stderr
    assert registry(kept_out)[2] == 2

    forced = run_cli(["promote", "3", "--reason", "the superior policy was a mistake", "--force", "--workspace", ws], api_url=prefect_api)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "champion moved from version 2 to version 3 by hand" in forced.stdout
    _, _, champion, history = registry(kept_out)
    last = history[-1]
    assert champion == 3
    assert (last.kind, last.manual, last.from_version, last.to_version) == ("promote", True, 2, 3)
    assert last.reason.startswith("the superior policy was a mistake [forced past the gate: ") and last.flow_run_name
    assert not any(m.manual for m in history[:-1])
    table = run_cli(["history", "--workspace", ws], api_url=None)
    assert "promote (manual)" in table.stdout
    assert json.loads(run_cli(["history", "--json", "--workspace", ws], api_url=None).stdout)[-1]["manual"] is True
    # Rolling back undoes the promotion by hand.
    assert (rollback(ws).from_version, registry(kept_out)[2]) == (3, 2)


@pytest.mark.integration
def test_a_rejection_is_a_named_state_with_the_champion_and_a_tracking_run(kept_out, prefect_api, tmp_path):
    """A rejected increment ends Completed named Rejected, names the champion, and leaves a tracking run with its verdict and no model."""
    from lepton.config import ConfigOverrides, load
    from lepton.flows.continual import continual_training
    from lepton.flows.deployments import run_pending
    from lepton.flows.handback import result_of
    from lepton.landing import land
    from lepton.tasks.tracking import connect

    champion = registry(kept_out)[2]
    bad = tmp_path / "bad.csv"
    bad.write_text("pixel_0,digit\n1,0\n")
    state = continual_training(str(bad), str(kept_out.root), QUICK, return_state=True)
    outcome = result_of(state)
    assert (state.type.value, state.name, outcome.status) == ("COMPLETED", "Rejected", "rejected")
    assert state.message == outcome.message and outcome.champion_version == champion is not None

    config = load(kept_out.root).registry
    client, experiment = connect(kept_out, config)
    runs = client.search_runs([experiment], f"tags.`lepton.increment_id` = '{outcome.increment_id}'")
    assert [(r.info.status, r.data.tags["lepton.verdict"], r.info.run_name) for r in runs] == [("FINISHED", "rejected", f"increment-{outcome.increment_id}-rejected")]
    assert json.loads(runs[0].data.tags["lepton.reasons"]) == outcome.reasons
    assert client.list_artifacts(runs[0].info.run_id) == []  # no model
    assert client.search_model_versions(f"tags.`lepton.increment_id` = '{outcome.increment_id}'") == []

    # The nightly series ends Rejected too, and names the file.
    other = tmp_path / "other.csv"
    other.write_text("pixel_0,digit\n2,1\n")
    land(other, kept_out.root / ".lepton" / "inbox")
    series = run_pending(str(kept_out.root), ConfigOverrides(), return_state=True)
    report = series.result()
    assert (series.type.value, series.name) == ("COMPLETED", "Rejected")
    assert report.rejected == [report.processed[0].file] and f"rejected: {report.processed[0].file}" in series.message
    assert report.processed[0].outcome.champion_version == champion


def test_deployments_name_their_workspace(monkeypatch):
    """No deployment runs on the worker's working directory: workspace is required and absolute, and deploying without LEPTON_WORKSPACE is refused."""
    from prefect.deployments.steps.core import StepExecutionError, run_steps
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.templating import apply_values

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        assert deployment["parameters"]["workspace"] == "{{ $LEPTON_WORKSPACE }}"
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        schema = parameter_schema(flow)
        assert "workspace" in schema.required and schema.properties["workspace"]["pattern"] == "^/"
        for bad in (".", "srv/churn", "{{ $LEPTON_WORKSPACE }}"):
            with pytest.raises(ParameterTypeError, match="absolute path of a Lepton workspace"):
                flow.validate_parameters({**{k: DUMMY[k] for k in schema.required if k != "workspace"}, "workspace": bad})

    def build(workspace: str | None):
        # What `prefect deploy` does with the build steps: fill {{ $VAR }} from the environment, run them.
        if workspace is None:
            monkeypatch.delenv("LEPTON_WORKSPACE", raising=False)
        else:
            monkeypatch.setenv("LEPTON_WORKSPACE", workspace)
        return asyncio.run(run_steps(apply_values(config["build"], dict(os.environ), remove_notset=False), {}))

    for workspace in (None, "."):
        with pytest.raises(StepExecutionError) as refused:
            build(workspace)
        assert "LEPTON_WORKSPACE must name the workspace the deployments run on" in str(refused.value.__cause__)
    assert build("/srv/churn")["workspace-named"]["stderr"] == ""
