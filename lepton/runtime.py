"""What a model version carries so that it loads without Lepton: its runtime, a package of five files.

A consumer needs MLflow, torch, pandas and numpy, nothing else: not Prefect, DVC, Great
Expectations, typer or rich, and not Lepton. So each version ships, as its MLflow
``code_paths``, the network, the preprocessing and the pyfunc wrapper, copied into a package
named ``lepton_runtime``: a name no consumer's project uses, unlike ``models`` or ``tasks``,
and not ``lepton``, whose partial copy would shadow an installed Lepton in the consumer's
process. The files import each other relatively, so the copy works under that name. The
pickled wrapper refers to ``lepton_runtime.serving``, which MLflow finds on the path it puts
first when loading; a process that already imported it (one that registered a version) keeps
the copy it has, the same code.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

NAME = "lepton_runtime"
# The runtime, as paths inside the package: the pyfunc wrapper and what it loads.
WRAPPER = "serving.py"
MODELS = ("columns.py", "preprocessing.py", "network.py", "bundle.py")


def _files() -> list[tuple[Path, str]]:
    """(source, path inside the package) of every runtime file, wherever lepton.models is installed."""
    from lepton import models

    here, folder = Path(__file__).resolve().parent, Path(models.__file__).resolve().parent
    return [(here / WRAPPER, WRAPPER), *((folder / name, f"models/{name}") for name in MODELS)]


def stage(directory: Path) -> Path:
    """The runtime package written under ``directory``; its folder is what the model version ships."""
    package = directory / NAME
    (package / "models").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""A Lepton model\'s runtime: what loading and predicting need (see lepton/runtime.py)."""\n')
    (package / "models" / "__init__.py").write_text('"""The network, the preprocessing and the bundle that holds them."""\n')
    for source, target in _files():
        shutil.copyfile(source, package / target)
    return package


def network_code(network: Any, root: Path) -> list[Path]:
    """The file or package of a network factory's module, when it lives under ``root`` (the workspace): shipped with
    the version so that it loads where the workspace is not. A factory from an installed package ships nothing: the
    consumer installs that package, as they install torch."""
    factory = getattr(network, "factory", None)
    if not factory or factory == "cnn":  # Lepton's own networks travel in the runtime
        return []
    top = importlib.import_module(factory.partition(":")[0].split(".")[0])
    source = Path(getattr(top, "__file__", "") or "").resolve()
    code = source.parent if source.name == "__init__.py" else source
    return [code] if code.is_relative_to(root.resolve()) and code.exists() else []


def python_model(package: Path) -> Any:
    """The pyfunc wrapper, an instance of the staged package's class, so that it pickles as ``lepton_runtime.serving``."""
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(NAME, package / "__init__.py", submodule_search_locations=[str(package)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module
        spec.loader.exec_module(module)
    # Every module of the package now, while its files exist: nothing imports lazily later.
    for _, target in _files():
        importlib.import_module(f"{NAME}.{target.removesuffix('.py').replace('/', '.')}")
    return importlib.import_module(f"{NAME}.serving").LeptonClassifier()
