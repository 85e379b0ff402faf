"""Your own feature layers: a factory named ``module:function`` in lepton.yaml, trained, warm-started, registered and
loaded by a consumer who does not have its module."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from lepton.config import StrategyConfig, TrainConfig
from lepton.models.bundle import Bundle
from lepton.models.network import MLP, NetworkError, build
from lepton.models.training import fine_tune
from tests.conftest import make_workspace

NETS = textwrap.dedent(
    '''
    """A user's networks: feature layers for Lepton to put a head on."""
    from torch import nn


    def no_inputs(width=8):
        return nn.Linear(width, width)


    def tanh_features(n_features, width=16, depth=1):
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(n_features, width), nn.Tanh()]
            n_features = width
        return nn.Sequential(*layers)


    class Residual(nn.Module):
        def __init__(self, n_features, width):
            super().__init__()
            self.inner = nn.Linear(n_features, width)
            self.skip = nn.Linear(n_features, width, bias=False)

        def forward(self, x):
            return self.inner(x).relu() + self.skip(x)


    def residual(n_features, width=8):
        return Residual(n_features, width)


    def not_a_module(n_features):
        return "layers"


    def flat(n_features):
        return nn.Flatten(0)
    '''
)


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("user_nets", None)


def frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame(x, columns=["a", "b", "c"]).assign(y=np.where(x[:, 0] + x[:, 1] > 0, "up", "down"))


def test_a_factory_gives_the_features_and_lepton_the_head(nets):
    network = MLP(n_features=5, n_classes=3, factory="user_nets:residual", factory_args={"width": 8})
    assert network.head.in_features == 8 and network.n_classes == 3 and network.name == "user_nets:residual"
    assert network.arch == {"n_features": 5, "n_classes": 3, "hidden": [], "classifier": "linear", "factory": "user_nets:residual", "factory_args": {"width": 8}}
    rebuilt = build(network.arch)
    rebuilt.load_state_dict(network.state_dict())
    x = torch.randn(4, 5)
    assert torch.equal(rebuilt(x), network(x))
    network.expand_head(5)
    assert network.n_classes == 5 and network.head.in_features == 8
    # Lepton's own MLP says so too, and stores no factory.
    assert MLP(n_features=5, n_classes=2).name == "mlp" and "factory" not in MLP(n_features=5, n_classes=2).arch


@pytest.mark.parametrize(
    ("spec", "args", "said"),
    [
        ("no_such_module:net", {}, "train.network='no_such_module:net': cannot import 'no_such_module'"),
        ("user_nets:nothing", {}, "train.network='user_nets:nothing': module 'user_nets' has no 'nothing'"),
        ("user_nets:not_a_module", {}, "it returned str, not a torch nn.Module"),
        ("user_nets:flat", {}, "its module must map (batch, 5) to (batch, width), not to (10,)"),
        ("user_nets:tanh_features", {"colour": "red"}, "train.network='user_nets:tanh_features' could not be called as factory(n_features=..., "
         "**train.network_args) with train.network_args={'colour': 'red'}: tanh_features() got an unexpected keyword argument 'colour'"),
        ("user_nets:no_inputs", {}, "train.network='user_nets:no_inputs' could not be called as factory(n_features=..., **train.network_args) "
         "with train.network_args={}: no_inputs() got an unexpected keyword argument 'n_features'"),
    ],
)
def test_a_factory_that_breaks_the_contract_is_refused_by_name(nets, spec, args, said):
    with pytest.raises(NetworkError) as caught:
        MLP(n_features=5, n_classes=2, factory=spec, factory_args=args)
    assert said in str(caught.value)


def test_a_new_network_starts_from_weights_in_a_local_file(nets, tmp_path):
    """train.network_weights: feature layers trained elsewhere (torch.save of a state_dict) start the first network, and
    fine-tuning moves them on; the version keeps its own weights, so it rebuilds once the file is gone. Weights of
    another shape are refused by the setting's name."""
    from torch import nn

    source = nn.Sequential(nn.Linear(6, 8), nn.ReLU())  # three numeric columns: a value and a missing indicator each
    torch.save(source.state_dict(), tmp_path / "backbone.pt")
    untrained = TrainConfig(epochs=1, lr=1e-12, hidden=[8], network_weights=str(tmp_path / "backbone.pt"))
    model, _ = fine_tune(None, frame(), label="y", train=untrained, strategy=StrategyConfig(name="naive"))
    assert torch.allclose(model.network.features[0].weight, source[0].weight)
    trained, _ = fine_tune(None, frame(), label="y", train=untrained.model_copy(update={"epochs": 5, "lr": 1e-2}), strategy=StrategyConfig(name="naive"))
    assert not torch.allclose(trained.network.features[0].weight, source[0].weight)
    trained.save(tmp_path / "bundle")
    (tmp_path / "backbone.pt").unlink()
    assert torch.equal(Bundle.load(tmp_path / "bundle").network.features[0].weight, trained.network.features[0].weight)

    torch.save(nn.Sequential(nn.Linear(6, 4)).state_dict(), tmp_path / "small.pt")
    with pytest.raises(NetworkError, match=r"train.network_weights='.*small.pt': they do not fit train.network's feature layers: size mismatch for 0.weight"):
        fine_tune(None, frame(), label="y", train=TrainConfig(epochs=1, hidden=[8], network_weights=str(tmp_path / "small.pt")), strategy=StrategyConfig(name="naive"))
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(NetworkError, match=r"train.network_weights='.*garbage.pt': not a state_dict saved with torch.save \(UnpicklingError\)"):
        fine_tune(None, frame(), label="y", train=TrainConfig(epochs=1, hidden=[8], network_weights=str(tmp_path / "garbage.pt")), strategy=StrategyConfig(name="naive"))


def test_fine_tune_builds_the_configured_network_and_a_warm_start_keeps_the_champions(nets, tmp_path):
    train = TrainConfig(epochs=30, network="user_nets:tanh_features", network_args={"width": 12, "depth": 2})
    champion, _ = fine_tune(None, frame(), label="y", train=train, strategy=StrategyConfig(name="replay"))
    assert champion.network.name == "user_nets:tanh_features" and champion.network.head.in_features == 12
    assert [m.out_features for m in champion.network.features if isinstance(m, torch.nn.Linear)] == [12, 12]
    # The config moved back to the MLP: the warm start still fine-tunes the champion's network.
    candidate, report = fine_tune(champion, frame(seed=1), label="y", train=TrainConfig(epochs=10), strategy=StrategyConfig(name="replay"))
    assert report.warm_start and candidate.network.arch == champion.network.arch
    accuracy = (candidate.predict(frame(seed=2)) == frame(seed=2)["y"].to_numpy()).mean()
    assert accuracy > 0.8
    saved = Bundle.load(candidate.save(tmp_path / "bundle"))
    assert saved.network.arch["factory"] == "user_nets:tanh_features"
    assert np.array_equal(saved.predict(frame(seed=3)), candidate.predict(frame(seed=3)))


CONSUMER = """
import importlib.util, json, sys
import mlflow.pyfunc, pandas as pd
before = importlib.util.find_spec("user_nets") is not None
model = mlflow.pyfunc.load_model("models:/nets@champion")
print(json.dumps({"before": before, "predicted": [str(v) for v in model.predict(pd.read_parquet(sys.argv[1]))],
                  "module": sys.modules["user_nets"].__file__}))
"""


@pytest.mark.integration
def test_a_workspace_network_trains_through_the_flow_and_ships_with_the_version(tmp_path, prefect_api):
    """The flow imports the factory from the workspace, registers a version that carries its file, and a consumer elsewhere loads it."""
    import mlflow

    from lepton.flows.continual import continual_training

    ws = make_workspace(tmp_path / "ws", "y", "nets")
    (ws.root / "user_nets.py").write_text(NETS)
    quick = ["train.epochs=5", "train.network=user_nets:residual", 'train.network_args={"width": 10}', "gate.bootstrap_samples=200"]
    try:
        for seed in (0, 1):
            path = tmp_path / f"part-{seed}.parquet"
            frame(200, seed).to_parquet(path, index=False)
            outcome = continual_training(str(path), str(ws.root), quick)
            assert outcome.status in ("promoted", "kept_out"), outcome.message
        mlflow.set_tracking_uri(ws.tracking_uri(None))
        version = mlflow.tracking.MlflowClient().get_model_version_by_alias("nets", "champion")
        model_dir = mlflow.artifacts.download_artifacts(f"models:/nets/{version.version}", dst_path=str(tmp_path / "model"))
        assert (tmp_path / "model" / "code" / "user_nets.py").read_text() == NETS
        rows = frame(30, 5).drop(columns=["y"])
        rows.to_parquet(tmp_path / "rows.parquet", index=False)
        expected = [str(v) for v in mlflow.pyfunc.load_model(model_dir).predict(rows)]
    finally:
        sys.modules.pop("user_nets", None)
        if str(ws.root) in sys.path:
            sys.path.remove(str(ws.root))
    elsewhere = tmp_path / "consumer"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", CONSUMER, str(tmp_path / "rows.parquet")], cwd=elsewhere, capture_output=True, text=True,
                          env={"MLFLOW_TRACKING_URI": ws.tracking_uri(None), "PATH": "/usr/bin:/bin"}, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["before"] is False  # the consumer has no user_nets of its own: it came with the version
    assert got["predicted"] == expected and "code" in got["module"]


@pytest.mark.integration
def test_a_factory_that_does_not_import_fails_the_run_before_any_work(tmp_path, prefect_api):
    from lepton.flows.continual import continual_training

    ws = make_workspace(tmp_path / "ws", "y", "nets")
    path = tmp_path / "part.parquet"
    frame().to_parquet(path, index=False)
    state = continual_training(str(path), str(ws.root), ["train.network=missing_nets:build"], return_state=True)
    assert state.is_failed()
    assert "train.network='missing_nets:build': cannot import 'missing_nets'" in str(state.result(raise_on_failure=False))
    assert not list((ws.root / "data").rglob("*.parquet"))  # nothing was ingested



def test_a_factory_called_with_arguments_it_does_not_take_fails_the_run_before_any_work(nets, tmp_path, prefect_api):
    """A misspelt train.network_args key is named with the setting before the increment is ingested."""
    from lepton.flows.continual import continual_training

    ws = make_workspace(tmp_path / "ws", "y", "nets")
    path = tmp_path / "part.parquet"
    frame().to_parquet(path, index=False)
    state = continual_training(str(path), str(ws.root), ["train.network=user_nets:tanh_features", 'train.network_args={"widht": 8}'], return_state=True)
    assert state.is_failed()
    said = str(state.result(raise_on_failure=False))
    assert "train.network='user_nets:tanh_features' could not be called as factory(n_features=..., **train.network_args)" in said
    assert "got an unexpected keyword argument 'widht'" in said
    assert not list((ws.root / "data").rglob("*.parquet"))  # nothing was ingested


def test_a_factory_network_trains_data_parallel(nets, one_thread):
    """Two DDP processes (gloo on the CPU) unpickle the factory's module from the same path and train its network."""
    train = TrainConfig(epochs=20, nproc=2, network="user_nets:residual", network_args={"width": 10})
    bundle, report = fine_tune(None, frame(200), label="y", train=train, strategy=StrategyConfig(name="replay"))
    assert report.train_samples > 0 and bundle.network.name == "user_nets:residual" and bundle.network.head.in_features == 10
    assert (bundle.predict(frame(100, 7)) == frame(100, 7)["y"].to_numpy()).mean() > 0.8


def test_network_weights_are_found_in_the_workspace_before_any_work(tmp_path):
    """A relative train.network_weights names a file in the workspace (the flow passes it on absolute); a missing one fails first."""
    from lepton.tasks.training import workspace_networks

    (tmp_path / "weights").mkdir()
    torch.save({}, tmp_path / "weights" / "backbone.pt")
    resolved = workspace_networks(tmp_path, TrainConfig(network_weights="weights/backbone.pt"))
    assert resolved.network_weights == str((tmp_path / "weights" / "backbone.pt").resolve())
    with pytest.raises(NetworkError, match=r"train.network_weights='gone.pt': no such file in the workspace"):
        workspace_networks(tmp_path, TrainConfig(network_weights="gone.pt"))
