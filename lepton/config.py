"""The one typed configuration, loaded from ``lepton.yaml`` and overridable with ``key=value``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator

from lepton.models.settings import STRATEGIES, DriftConfig, GateConfig, Section, StrategyConfig, TrainConfig  # noqa: F401 - the config's names, one import away

CONFIG_FILE = "lepton.yaml"


class DataConfig(Section):
    """The dataset: which column is the label, what each column is, and how increments are checked and split."""

    label: str = Field(description="Name of the label column (required).")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description="What the label is: auto takes a float label with many distinct values, or numbers with about one row each (more than 10 values, at least half as many as rows), as a number to predict (regression), anything else as classes."
    )
    columns: dict[str, Literal["numeric", "boolean", "categorical", "text", "identifier", "datetime", "image", "ignore"]] = Field(
        default_factory=dict,
        description="Column kinds that override the ones inferred from the first increment, e.g. {plan: categorical, user_id: ignore, signup: datetime}.",
    )
    data_docs: Literal["rejected", "always", "never"] = Field(
        "rejected",
        description="When Great Expectations renders the Data Docs page of a validation: rejected (for a rejected increment, where someone will look), always, or never; the page costs about 0.6 s a run.",
    )
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each increment kept out of training, chosen by a hash of the row.")
    allow_new_classes: bool = Field(True, description="Accept label values never seen before (class-incremental data).")
    max_categories: int = Field(32, ge=2, description="Slots of a categorical column's one-hot input, one shared by unseen, rare and missing values; a string column with at most this many distinct values (or under half as many as rows) is categorical.")
    min_category_rows: int = Field(2, ge=1, description="Rows a category value needs in an increment to get its own slot; rarer values share the unknown slot.")
    text: Literal["hash", "ignore"] = Field("hash", description="Free-text columns (many distinct values of several words): words hashed into data.hash_buckets inputs, or ignored. Identifier-like columns are always ignored unless data.columns says otherwise.")
    hash_buckets: int = Field(16, ge=1, description="Inputs a hashed text column takes.")
    duplicates: Literal["keep", "drop", "reject"] = Field("keep", description="Repeated rows: keep (reported), drop (reported, not trained or scored on) or reject the increment.")
    missing_jump: float = Field(0.3, ge=0, le=1, description="Reject an increment where a feature's share of missing values exceeds the share seen so far by more than this.")
    max_missing_labels: float = Field(0.1, ge=0, le=1, description="Largest share of rows without a label; below it those rows are dropped (and counted), above it the increment is rejected.")
    magnitude_limit: float = Field(
        1000.0, gt=1, description="Reject values farther beyond a column's seen range than this many times its scale (max of range width and magnitude): a unit error or corruption, not growth."
    )
    unit_change: float = Field(
        50.0, ge=0,
        description="Reject a numeric column (or a numeric label) whose typical value, the median magnitude of its nonzero values, is this many times smaller or larger than in every earlier increment: a unit that changed (grams to kilograms, percent to a fraction), not growth; 0: no such check.",
    )
    range_tolerance: float = Field(
        0.05, ge=0,
        description="Values beyond the range seen so far by more than this fraction of its width are reported (growth or drift), not rejected, when more lie there than chance gives a sample of the same data (p < 0.001) or one lies a whole width beyond; nearer ones, and a few new extremes, are said nothing of.",
    )
    range_mostly: float | None = Field(
        None, description="No longer used, kept so older lepton.yaml files load: values beyond the seen range are reported, values orders of magnitude beyond it rejected (data.magnitude_limit)."
    )
    min_rows: int = Field(10, ge=1, description="Fewest rows an increment may have.")
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Known hard [min, max] of features ('*' for every numeric feature); a value outside rejects the increment.",
    )

    @field_validator("label", mode="before")
    @classmethod
    def _label_as_written(cls, value: Any) -> Any:
        # A column named 2011 reads in YAML as the number 2011 (`label: 2011`): it names the column all the same.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("columns", "bounds", mode="before")
    @classmethod
    def _names_as_written(cls, value: Any) -> Any:
        # `columns: {1960: ignore}`, as a rejection suggests for a column named 1960: YAML reads the key as a number.
        if isinstance(value, dict):
            return {str(k) if isinstance(k, int | float) and not isinstance(k, bool) else k: v for k, v in value.items()}
        return value

    @field_validator("label")
    @classmethod
    def _label_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the label column name is empty")
        return value


class RegistryConfig(Section):
    """Where model versions are tracked and registered."""

    model_name: str = Field("lepton", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", description="Registered model name; consumers load models:/NAME@champion.")
    experiment: str = Field("lepton", description="MLflow experiment of the training runs.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; MLFLOW_TRACKING_URI wins; default SQLite under .lepton/.")


class DvcConfig(Section):
    """Where data versions are pushed."""

    remote_url: str | None = Field(None, description="DVC remote URL (s3://, gs://, a folder); default .lepton/dvc-remote.")
    push: bool = Field(True, description="Push every data version to the remote.")


class LandingConfig(Section):
    """Where increments wait for the nightly run."""

    folder: str | None = Field(
        None,
        description="Folder that `lepton land` fills and the nightly run empties, in arrival order; relative to the workspace; default .lepton/inbox.",
    )
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="Folders that increment paths given as deployment parameters may lie in, besides the workspace and the landing folder (absolute, or relative to the workspace).",
    )


class LeptonConfig(Section):
    data: DataConfig
    train: TrainConfig = TrainConfig()
    strategy: StrategyConfig = StrategyConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    dvc: DvcConfig = DvcConfig()
    landing: LandingConfig = LandingConfig()
    drift: DriftConfig = DriftConfig()


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message says where."""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted ``section.key=value`` pairs; values are parsed as YAML (numbers, lists, booleans)."""
    result = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. train.epochs=5)")
        section, name = parts
        target = result.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {item!r}: {section!r} is not a section")
        try:
            target[name] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return result


def _problems(err: ValidationError, model: type[BaseModel]) -> str:
    """Pydantic's errors as ``section.key: what is wrong``; an unknown key lists the keys its section knows."""
    out = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = model.model_fields.get(str(e["loc"][0])) if len(e["loc"]) > 1 else None
            known = list(section.annotation.model_fields) if section is not None else list(model.model_fields)  # type: ignore[union-attr]
            out.append(f"{where}: unknown key (known: {', '.join(known) or 'none that a run may change'})")
        else:
            out.append(f"{where}: {e['msg']}")
    return "; ".join(out)


def parse(raw: dict[str, Any], overrides: list[str] | None = None, *, source: str = CONFIG_FILE) -> LeptonConfig:
    try:
        return LeptonConfig.model_validate(apply_overrides(raw, overrides or []))
    except ValidationError as err:
        raise ConfigError(f"invalid configuration ({source}): {_problems(err, LeptonConfig)}") from None


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping: YAML keeps the last silently, and a second
    ``data:`` section replaced the first (its label too), so good files were quarantined for a column they never had."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"{key!r} is written twice (the first at line {seen[key].line + 1})", key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load(workspace: Path, overrides: list[str] | None = None) -> LeptonConfig:
    """The workspace's config with overrides applied."""
    path = workspace / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path} not found: run `lepton init {workspace} --label COLUMN` first")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeys) or {}  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        said = f"{err.problem}, line {mark.line + 1}" if isinstance(err, yaml.MarkedYAMLError) and err.problem and mark else " ".join(str(err).split())
        raise ConfigError(f"{path} is not valid YAML: {said}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of sections")
    return parse(raw, overrides, source=str(path) + (" with --set overrides" if overrides else ""))


def default_yaml(label: str, model_name: str) -> str:
    """The lepton.yaml that ``lepton init`` writes: every section, with its defaults."""
    config = LeptonConfig(data=DataConfig(label=label), registry=RegistryConfig(model_name=model_name))
    body = config.model_dump(mode="json")
    body["data"].pop("range_mostly")  # no longer used: only accepted from older files
    header = "# Lepton workspace configuration. Every key is optional except data.label.\n"
    return header + yaml.safe_dump(body, sort_keys=False)


def reference_markdown() -> str:
    """The configuration reference for the README, generated from the models so it cannot drift."""
    sections = {name: field.annotation for name, field in LeptonConfig.model_fields.items()}
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for section, model in sections.items():
        for key, field in model.model_fields.items():  # type: ignore[union-attr]
            default = "required" if field.is_required() else f"`{json.dumps(field.get_default(call_default_factory=True))}`"
            lines.append(f"| `{section}.{key}` | {default} | {field.description or ''} |")
    return "\n".join(lines) + "\n"


# Keys a deployment parameter must not change: where increments may be read from, where
# models and data go, and what reaches a launcher's command line. Anyone who can trigger a
# run can pass overrides; these stay as lepton.yaml says.
LOCKED = {
    "landing": {"folder", "allowed_roots"},
    "registry": {"tracking_uri", "model_name", "experiment"},
    "dvc": {"remote_url"},
    "train": {"launcher", "torchrun_args", "shared_dir"},
}


def _optional(section: type[Section], locked: set[str] = frozenset()) -> type[Section]:  # type: ignore[assignment]
    """``section`` with every key optional (unset is None) but the same types, bounds and descriptions; ``locked`` keys left out."""
    fields: dict[str, Any] = {}
    for name, field in section.model_fields.items():
        if name in locked:
            continue
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        fields[name] = (Optional[annotation], Field(None, description=field.description))  # noqa: UP045 - a runtime type
    return create_model(section.__name__.removesuffix("Config") + "Overrides", __base__=Section, __doc__=section.__doc__, **fields)


class _Overrides(Section):
    def to_list(self) -> list[str]:
        """The same overrides as ``section.key=value`` strings (values as JSON, which YAML reads back)."""
        return [
            f"{section}.{key}={json.dumps(value)}"
            for section, values in self.model_dump(mode="json", exclude_none=True).items()
            for key, value in values.items()
        ]

    @classmethod
    def from_list(cls, overrides: list[str]) -> ConfigOverrides:
        """Parse ``--set`` style overrides; raises ConfigError naming the bad one."""
        raw = apply_overrides({}, overrides)
        locked = [f"{section}.{key}" for section, values in raw.items() if isinstance(values, dict) for key in values if key in LOCKED.get(section, ())]
        if locked:
            raise ConfigError(f"{', '.join(locked)} can only be set in lepton.yaml, not per run (runs triggered from deployments must not change where data and models go)")
        try:
            return cls.model_validate(raw)  # type: ignore[return-value]
        except ValidationError as err:
            raise ConfigError(f"invalid override ({_problems(err, cls)})") from None


# Per-run changes to lepton.yaml as a typed model, generated from the sections so it cannot
# drift: Prefect validates deployment parameters against it and its UI renders it as a form.
ConfigOverrides = create_model(
    "ConfigOverrides",
    __base__=_Overrides,
    __doc__="Per-run changes to the workspace's lepton.yaml, section by section; unset keys keep the file's values.",
    **{
        name: (model, Field(default_factory=model, description=field.annotation.__doc__))  # type: ignore[arg-type]
        for name, field in LeptonConfig.model_fields.items()
        for model in [_optional(field.annotation, LOCKED.get(name, set()))]  # type: ignore[arg-type]
    },
)
