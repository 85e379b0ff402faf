"""Consumers load the champion in processes of their own: without Lepton installed, and beside their own packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from tests.conftest import make_workspace

pytestmark = pytest.mark.integration

QUICK = ["train.epochs=10", "train.hidden=[32]", "gate.bootstrap_samples=200"]
NAME = "wine"
# What a consumer's environment lacks: Lepton, and the libraries only its pipeline needs.
NOT_INSTALLED = ("lepton", "prefect", "dvc", "great_expectations", "typer", "rich")


def table() -> pd.DataFrame:
    """Wine with a text column and gaps, so loading runs the categorical and imputation code the model ships."""
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    frame["cultivar"] = frame["cultivar"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    frame["cellar"] = np.where(frame.index % 3 == 0, "north", np.where(frame.index % 3 == 1, "south", "east"))
    frame.loc[frame.index % 7 == 0, "magnesium"] = np.nan
    return frame


@pytest.fixture(scope="module")
def champion(tmp_path_factory, prefect_api):
    """A workspace whose champion learnt wine, the rows a consumer sends, and what the installed Lepton predicts for them."""
    from lepton.flows.continual import continual_training

    root = tmp_path_factory.mktemp("consumers")
    ws = make_workspace(root / "ws", "cultivar", NAME)
    path = root / "wine.parquet"
    table().to_parquet(path, index=False)
    assert continual_training(str(path), str(ws.root), QUICK).status == "promoted"
    rows = table().drop(columns=["cultivar"]).iloc[::5].reset_index(drop=True)
    rows.loc[0, "cellar"] = "a cellar never seen"
    rows_path = root / "rows.parquet"
    rows.to_parquet(rows_path, index=False)
    import mlflow

    mlflow.set_tracking_uri(ws.tracking_uri(None))
    expected = [str(v) for v in mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(rows)]
    return {"uri": ws.tracking_uri(None), "rows": rows_path, "expected": expected, "root": root}


CONSUMER = """
import json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model("models:/{name}@champion")
predicted = model.predict(pd.read_parquet(sys.argv[1]))
runtime = sys.modules["lepton_runtime"].__file__
print(json.dumps({{"predicted": [str(v) for v in predicted], "runtime": runtime, "modules": sorted(m.split(".")[0] for m in sys.modules)}}))
"""

NOT_HERE = """
import importlib.abc, sys
sys.path = [p for p in sys.path if "site-packages" not in p] + [{site!r}]

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def consume(script: str, champion: dict, cwd: Path, python: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYTHON"))}
    env["MLFLOW_TRACKING_URI"] = champion["uri"]
    result = subprocess.run([*python, "-c", script, str(champion["rows"])], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_champion_loads_and_predicts_where_lepton_is_not_installed(champion, tmp_path):
    """MLflow, torch, pandas and numpy only: the model's own runtime loads, and predicts what Lepton does."""
    # -S: site-packages without its .pth files, so Lepton's editable install is not on the path either.
    script = NOT_HERE.format(site=sysconfig.get_paths()["purelib"], blocked=NOT_INSTALLED) + CONSUMER.format(name=NAME)
    answer = consume(script, champion, tmp_path, [sys.executable, "-S"])
    assert answer["predicted"] == champion["expected"]
    assert Path(answer["runtime"]).is_relative_to(champion["root"])  # the artifact's copy, from the workspace's store
    assert not set(answer["modules"]) & set(NOT_INSTALLED), set(answer["modules"]) & set(NOT_INSTALLED)


def test_the_check_would_see_lepton(champion, tmp_path):
    """The blocking finder refuses an import of Lepton, so the test above cannot pass by importing it."""
    script = NOT_HERE.format(site=sysconfig.get_paths()["purelib"], blocked=NOT_INSTALLED) + "import lepton.config\n"
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "No module named 'lepton" in result.stderr


def test_champion_loads_inside_a_project_with_its_own_models_and_tasks(champion, tmp_path):
    """A consumer's own models/ and tasks/ packages, imported first, neither break loading nor are shadowed by it."""
    for package in ("models", "tasks"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("OWNER = 'consumer'\n")
    (tmp_path / "models" / "bundle.py").write_text("class Bundle:\n    owner = 'consumer'\n")
    script = (
        "import models, tasks, models.bundle\n"
        + CONSUMER.format(name=NAME)
        + "import importlib; assert importlib.import_module('models.bundle').Bundle.owner == 'consumer' and models.OWNER == tasks.OWNER == 'consumer'\n"
    )
    answer = consume(script, champion, tmp_path, [sys.executable])
    assert answer["predicted"] == champion["expected"]


def test_a_version_ships_its_runtime_and_requirements_only(champion):
    """The artifact's code is the lepton_runtime package (wrapper, network, preprocessing); its requirements name what loading needs."""
    import mlflow

    mlflow.set_tracking_uri(champion["uri"])
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(champion["root"] / "download")))
    code = sorted(str(p.relative_to(local / "code")) for p in (local / "code").rglob("*.py"))
    assert code == [
        "lepton_runtime/__init__.py", "lepton_runtime/models/__init__.py", "lepton_runtime/models/bundle.py",
        "lepton_runtime/models/columns.py", "lepton_runtime/models/network.py", "lepton_runtime/models/preprocessing.py",
        "lepton_runtime/serving.py",
    ]
    requirements = {line.split("==")[0] for line in (local / "requirements.txt").read_text().split() if line}
    assert requirements == {"mlflow", "torch", "pandas", "numpy"}
