"""The typed configuration: overrides, validation messages, the init template and loading."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from lepton.config import (
    STRATEGIES,
    ConfigError,
    DataConfig,
    LeptonConfig,
    RegistryConfig,
    StrategyConfig,
    apply_overrides,
    default_yaml,
    load,
    parse,
)

RAW = {"data": {"label": "digit"}}


def test_overrides_give_typed_values() -> None:
    """Dotted overrides are parsed as YAML and validated into ints, literals and lists of ints."""
    config = parse(RAW, ["train.epochs=5", "strategy.name=naive", "train.hidden=[32,16]"])
    assert config.train.epochs == 5 and type(config.train.epochs) is int
    assert config.strategy.name == "naive"
    assert config.train.hidden == [32, 16] and all(type(h) is int for h in config.train.hidden)
    # Untouched keys keep their defaults.
    assert config.train.batch_size == 32 and config.data.label == "digit"


def test_overrides_do_not_mutate_the_raw_mapping() -> None:
    """Applying overrides returns a new mapping; the file's contents stay as read."""
    raw = {"data": {"label": "digit"}, "train": {"epochs": 3}}
    result = apply_overrides(raw, ["train.epochs=9"])
    assert result["train"]["epochs"] == 9
    assert raw["train"]["epochs"] == 3


@pytest.mark.parametrize("override", ["epochs=5", "train.epochs", "a.b.c=1", ".epochs=5"])
def test_bad_override_form_raises_readable_error(override: str) -> None:
    """An override that is not section.key=value is refused with a message quoting it and the expected form."""
    with pytest.raises(ConfigError) as err:
        parse(RAW, [override])
    message = str(err.value)
    assert repr(override) in message
    assert "section.key=value" in message


@pytest.mark.parametrize(
    ("override", "field"),
    [("train.epochs=0", "train.epochs"), ("strategy.name=magic", "strategy.name"), ("train.foo=1", "train.foo")],
)
def test_invalid_value_names_the_field(override: str, field: str) -> None:
    """An out-of-range value, an unknown choice or an unknown key raises ConfigError naming the field."""
    with pytest.raises(ConfigError) as err:
        parse(RAW, [override])
    assert f"{field}:" in str(err.value)
    assert "lepton.yaml" in str(err.value)


def test_strategy_name_is_a_plus_joined_list_of_known_strategies() -> None:
    """'replay+distill' is accepted (spaces trimmed) and split into names; the default is der+nme."""
    assert StrategyConfig(name="replay+distill").names == ["replay", "distill"]
    assert StrategyConfig(name=" replay + ewc ").name == "replay+ewc"
    assert StrategyConfig().name == "der+nme"
    assert StrategyConfig().names == ["der", "nme"]
    assert parse(RAW, ["strategy.name=replay+distill"]).strategy.names == ["replay", "distill"]
    assert all(StrategyConfig(name=name).names == [name] for name in STRATEGIES)


@pytest.mark.parametrize(("name", "bad"), [("replay+magic", "'magic'"), ("magic", "'magic'"), ("replay+", "''"), ("Replay", "'Replay'")])
def test_unknown_strategy_is_rejected_by_name(name: str, bad: str) -> None:
    """A name that is not a known strategy is refused, naming the bad part and listing the choices."""
    with pytest.raises(ValidationError) as err:
        StrategyConfig(name=name)
    message = str(err.value)
    assert f"unknown strategy {bad}" in message
    assert "replay" in message and "nme" in message and "'+'" in message
    assert "'replay'" not in message, "the known part is not blamed"
    with pytest.raises(ConfigError, match=f"strategy.name: .*{bad}"):
        parse(RAW, [f"strategy.name={name}"])


def test_missing_label_names_data_label() -> None:
    """The only required key, data.label, is reported by name when absent."""
    with pytest.raises(ConfigError, match=r"data\.label"):
        parse({"data": {}})


def test_default_yaml_round_trips_to_the_defaults() -> None:
    """The init template parses back to the default config with the given label and model name."""
    text = default_yaml("species", "iris-model")
    assert text.startswith("#")
    config = parse(yaml.safe_load(text))
    expected = LeptonConfig(data=DataConfig(label="species"), registry=RegistryConfig(model_name="iris-model"))
    assert config == expected
    assert config.data.label == "species" and config.registry.model_name == "iris-model"
    assert config.train.epochs == 30 and config.strategy.name == "der+nme"


def test_load_applies_overrides_to_the_file(tmp_path) -> None:
    """load() reads lepton.yaml from the workspace and applies overrides on top."""
    (tmp_path / "lepton.yaml").write_text(default_yaml("digit", "digits"))
    config = load(tmp_path, ["gate.min_accuracy=0.75"])
    assert config.gate.min_accuracy == 0.75
    assert config.registry.model_name == "digits"


def test_load_missing_file_says_to_run_init(tmp_path) -> None:
    """Without lepton.yaml, load() raises ConfigError telling the user to run `lepton init`."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path)
    assert "lepton init" in str(err.value)
    assert str(tmp_path / "lepton.yaml") in str(err.value)


def test_load_invalid_value_names_the_file(tmp_path) -> None:
    """A bad value in the file is reported with the file's path and the field."""
    (tmp_path / "lepton.yaml").write_text("data:\n  label: digit\ngate:\n  confidence: 1.5\n")
    with pytest.raises(ConfigError) as err:
        load(tmp_path)
    assert str(tmp_path / "lepton.yaml") in str(err.value)
    assert "gate.confidence:" in str(err.value)


def test_readme_config_reference_is_generated_from_the_code():
    """The README's configuration table is exactly what the pydantic models say."""
    from pathlib import Path

    from lepton.config import reference_markdown

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert readme[readme.index(start) + len(start) : readme.index(end)] == reference_markdown()


def test_unknown_key_lists_the_known_ones() -> None:
    """A misspelt key or section names itself and what its section does know."""
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key \(known: epochs, batch_size"):
        parse({"data": {"label": "y"}}, ["train.epochz=3"])
    with pytest.raises(ConfigError, match=r"trian: unknown key \(known: data, train, strategy"):
        parse({"data": {"label": "y"}}, ["trian.epochs=3"])


def test_deployment_overrides_cannot_move_data_or_models() -> None:
    """Where increments are read from and where models and data go stay as lepton.yaml says: per-run overrides refuse them."""
    from lepton.config import LOCKED, ConfigOverrides

    for section, keys in LOCKED.items():
        assert not keys & set(ConfigOverrides.model_fields[section].annotation.model_fields)
        for key in keys:
            with pytest.raises(ConfigError, match=f"{section}.{key} can only be set in lepton.yaml"):
                ConfigOverrides.from_list([f"{section}.{key}=x"])
    assert ConfigOverrides.from_list(["train.epochs=3"]).to_list() == ["train.epochs=3"]


def test_a_key_written_twice_in_lepton_yaml_is_an_error(tmp_path) -> None:
    """YAML keeps the last of two equal keys without a word: a second `data:` replaced the first, its label with it, and
    good files were quarantined for a column they never had. It stops before any work, naming the key and both lines."""
    from lepton.config import ConfigError, load

    (tmp_path / "lepton.yaml").write_text("data:\n  label: y\ndata:\n  label: z\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML: 'data' is written twice \(the first at line 1\), line 3$"):
        load(tmp_path)
    (tmp_path / "lepton.yaml").write_text("data:\n  label: y\n  columns: {a: ignore, a: numeric}\n")
    with pytest.raises(ConfigError, match=r"'a' is written twice"):
        load(tmp_path)


def test_a_column_named_by_a_number_may_be_written_unquoted(tmp_path) -> None:
    """A rejection suggests `data.columns: {1960: ignore}` for a column named 1960; YAML reads 1960 as a number, and
    every command then failed with 'Input should be a valid string'. Numbers name columns as written."""
    from lepton.config import load

    (tmp_path / "lepton.yaml").write_text("data:\n  label: 2011\n  columns: {1960: ignore}\n  bounds: {1990: [0, 10]}\n")
    data = load(tmp_path).data
    assert (data.label, data.columns, data.bounds) == ("2011", {"1960": "ignore"}, {"1990": (0.0, 10.0)})
