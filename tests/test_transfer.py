"""A first model started from another registered model's feature layers (train.transfer_from), or from scratch when that is better."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from lepton.config import StrategyConfig, TrainConfig
from lepton.models.datasets import LABEL
from lepton.models.network import NetworkError
from lepton.models.preprocessing import Encoding
from lepton.models.training import choose_transfer, fine_tune, transfer_fixed
from tests.conftest import make_workspace, run_cli


def digits(classes, per_class: int | None = None, seed: int = 0, shuffle_labels: bool = False) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(np.isin(data.target, list(classes)))
    if per_class is not None:
        rows = np.concatenate([rng.choice(np.flatnonzero(data.target == c), per_class, replace=False) for c in classes])
    frame = pd.DataFrame(data.data[rows] / 16.0, columns=[f"pixel_{i}" for i in range(64)])
    frame[LABEL] = rng.permutation(data.target[rows]) if shuffle_labels else data.target[rows]
    return frame


QUICK = TrainConfig(epochs=10, hidden=[64, 64])


@pytest.fixture(scope="module")
def source():
    model, _ = fine_tune(None, digits(range(5)), label=LABEL, train=QUICK, strategy=StrategyConfig(name="naive"))
    return model


def test_the_new_network_takes_the_sources_feature_layers_under_a_fresh_head(source):
    target = digits(range(5, 10), per_class=20)
    frozen, _ = fine_tune(None, target, label=LABEL, train=QUICK, strategy=StrategyConfig(name="naive"), source=source, transfer="frozen")
    assert frozen.preprocessor.classes == [5, 6, 7, 8, 9] and frozen.network.n_classes == 5
    for name, weight in frozen.network.features.state_dict().items():
        assert torch.equal(weight, source.network.features.state_dict()[name]), name  # frozen: not one step
    partial, _ = fine_tune(None, target, label=LABEL, train=QUICK, strategy=StrategyConfig(name="naive"), source=source, transfer="partial")
    assert torch.equal(partial.network.features[0].weight, source.network.features[0].weight)
    assert not torch.equal(partial.network.features[2].weight, source.network.features[2].weight)  # the last layer learns
    assert transfer_fixed(partial.network, "full") == set()
    assert transfer_fixed(partial.network, "partial") == {"features.0.weight", "features.0.bias"}


def test_a_source_that_reads_other_columns_is_refused_by_name(source):
    table = pd.DataFrame({"a": np.arange(40.0), LABEL: [0, 1] * 20})
    with pytest.raises(NetworkError, match=r"other columns than this table's: pixel_0 \(numeric\) missing here; .*; and \d+ more"):
        fine_tune(None, table, label=LABEL, train=QUICK, strategy=StrategyConfig(name="naive"), source=source,
                  encoding=Encoding.infer(table, LABEL))


def test_the_choice_keeps_scratch_when_the_source_learnt_nothing_useful():
    """Features learnt on shuffled labels fit nothing: frozen on them scores far below a network from scratch, and is not kept."""
    useless, _ = fine_tune(None, digits(range(5), shuffle_labels=True), label=LABEL, train=QUICK, strategy=StrategyConfig(name="naive"))
    choice = choose_transfer(useless, digits(range(5), per_class=20, seed=1), label=LABEL, train=QUICK, strategy=StrategyConfig(name="naive"))
    assert set(choice.scores) == {"scratch", "full", "partial", "frozen"} and choice.validation_rows == 100
    assert choice.scores["frozen"] < choice.scores["scratch"] - 0.1
    assert choice.chosen in ("scratch", "full") and choice.scores[choice.chosen] == max(choice.scores.values())


@pytest.mark.integration
def test_init_from_another_workspaces_champion_through_the_flow(tmp_path, prefect_api):
    """`lepton init --from models:/A@champion --from-registry A's database`: B's first run loads A's champion by version,
    trains from it as configured (full), records where it came from in the version's tags; auto says what it tried."""
    import mlflow

    from lepton.flows.continual import continual_training
    from lepton.server import in_process_flows

    quick = ["train.epochs=10", "train.hidden=[64, 64]", "gate.bootstrap_samples=200"]
    a = make_workspace(tmp_path / "a", LABEL, "a")
    digits(range(5)).to_parquet(tmp_path / "a.parquet", index=False)
    with in_process_flows():
        assert continual_training(str(tmp_path / "a.parquet"), str(a.root), quick).status == "promoted"

    made = run_cli(["init", str(tmp_path / "b"), "--label", LABEL, "--name", "b", "--from", "models:/a@champion",
                    "--from-registry", f"sqlite:///{a.mlflow_db}"], api_url=prefect_api)
    assert made.returncode == 0, made.stderr
    refused = run_cli(["init", str(tmp_path / "c"), "--label", LABEL, "--from", "a@champion"], api_url=prefect_api)
    assert refused.returncode == 1 and "is not a registered model: give models:/NAME@ALIAS" in refused.stdout + refused.stderr
    assert not (tmp_path / "c").exists()

    digits(range(5, 10), per_class=20).to_parquet(tmp_path / "b.parquet", index=False)
    with in_process_flows():
        full = continual_training(str(tmp_path / "b.parquet"), str(tmp_path / "b"), [*quick, "train.transfer=full"])
        shutil.rmtree(tmp_path / "b" / ".lepton" / "finished")
    assert full.status == "promoted", full.message
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'b' / '.lepton' / 'mlflow.db'}")
    tags = client.get_model_version("b", "1").tags
    assert tags["lepton.transferred_from"] == "models:/a/1 (full)" and tags["lepton.transfer"] == "models:/a/1: full (train.transfer=full)"
    assert json.loads(tags["lepton.config"])["train"]["transfer_from"] == "models:/a@champion"
    listed = run_cli(["versions", "--workspace", str(tmp_path / "b"), "--json"], api_url=prefect_api)
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["transferred_from"] == "models:/a/1 (full)"
    shown = run_cli(["versions", "--workspace", str(tmp_path / "b")], api_url=prefect_api)
    assert "from models:/a/1 (full)" in " ".join(shown.stdout.split())

    c = make_workspace(tmp_path / "c2", LABEL, "c", {"train": {"transfer_from": "models:/a/1", "transfer_registry": f"sqlite:///{a.mlflow_db}"}})
    with in_process_flows():
        auto = continual_training(str(tmp_path / "b.parquet"), str(c.root), quick)
    assert auto.status == "promoted", auto.message
    from lepton.config import load
    from lepton.tasks.registry import load_champion

    told = load_champion.fn(c, load(c.root).registry).bundle.meta["transfer"]
    assert told["source"] == "models:/a/1" and set(told["scores"]) == {"scratch", "full", "partial", "frozen"}
    assert told["scores"][told["kept"]] == max(told["scores"].values())
    kept = mlflow.MlflowClient(f"sqlite:///{c.mlflow_db}").get_model_version("c", "1").tags.get("lepton.transferred_from", "")
    assert kept == ("" if told["kept"] == "scratch" else f"models:/a/1 ({told['kept']})")
    summary = mlflow.MlflowClient(f"sqlite:///{c.mlflow_db}").get_model_version("c", "1").tags["lepton.transfer"]
    assert summary.startswith(f"models:/a/1: kept {told['kept']} (train.transfer=auto, scored on ")  # scratch kept is said too

    # A source that is not there, or a registry path that is not, fails a first run before anything is ingested (and makes no database).
    d = make_workspace(tmp_path / "d", LABEL, "d", {"train": {"transfer_from": "models:/nothing@champion", "transfer_registry": f"sqlite:///{a.mlflow_db}"}})
    with in_process_flows(), pytest.raises(Exception, match=r"train.transfer_from='models:/nothing@champion': not found"):
        continual_training(str(tmp_path / "b.parquet"), str(d.root), quick)
    assert d.read_manifest().increments == []
    with in_process_flows(), pytest.raises(Exception, match=r"train.transfer_registry='sqlite:///.*nowhere/mlflow.db': no registry there"):
        continual_training(str(tmp_path / "b.parquet"), str(d.root), [*quick, f"train.transfer_registry=sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"])
    assert not (tmp_path / "nowhere").exists() and d.read_manifest().increments == []
    shutil.rmtree(tmp_path, ignore_errors=True)
