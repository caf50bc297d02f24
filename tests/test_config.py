"""docroute.yaml: a bad file fails before any work, naming field, value and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.policy import endpoints_from_config
from tests.conftest import EXAMPLES, sample_config_data


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "docroute.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_sample_config_loads_and_resolves_paths_against_its_folder() -> None:
    cfg = load_config(EXAMPLES / "docroute.yaml")
    assert cfg.corpus.path == (EXAMPLES / "corpus").resolve()
    assert cfg.output.root == (EXAMPLES.parent / "docroute-output").resolve()
    assert {p.region for p in cfg.providers} == {"eu", "us"}
    assert len(endpoints_from_config(cfg)) >= 3


def test_unknown_field_is_named_with_the_fields_expected(tmp_path: Path) -> None:
    data = sample_config_data()
    data["routing"]["concurency"] = 10
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    text = str(info.value)
    assert "routing.concurency: unknown field" in text
    assert "concurrency" in text.split("expected one of:")[1]


def test_wrong_type_names_field_value_and_expectation(tmp_path: Path) -> None:
    data = sample_config_data()
    data["budget"]["run_usd"] = "lots"
    data["providers"][1]["region"] = "EU West!"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    text = str(info.value)
    assert "budget.run_usd: Input should be a valid number" in text and "'lots'" in text
    name = data["providers"][1]["name"]
    assert f"providers[{name}].region: String should match pattern" in text, "by its name"
    assert "'EU West!'" in text and "2 problem(s)" in text


def test_a_bad_override_is_named_as_given_not_as_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, sample_config_data())
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"task.max_output_tokens": "abc"})
    assert str(info.value) == (
        f"an override is not valid for {path}:\n"
        "  --set task.max_output_tokens=abc: Input should be a valid integer, unable to "
        "parse string as an integer (got 'abc')"
    )


def test_a_whole_section_in_error_is_not_dumped(tmp_path: Path) -> None:
    data = sample_config_data()
    data["routing"]["mode"] = "auto"  # needs a deadline: an error of the whole config
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    assert "routing.mode auto needs a deadline" in str(info.value)
    assert "{" not in str(info.value), "no section printed as a mapping"


def test_missing_required_section(tmp_path: Path) -> None:
    data = sample_config_data()
    del data["budget"]
    with pytest.raises(ConfigError, match=r"budget: required field is missing"):
        load_config(_write(tmp_path, data))


def test_unknown_schema_lists_known_ones(tmp_path: Path) -> None:
    data = sample_config_data()
    data["task"]["schema"] = "poems"
    with pytest.raises(
        ConfigError, match=r"unknown schema 'poems'; expected one of: .*chunk_summary"
    ):
        load_config(_write(tmp_path, data))


def test_overlap_must_be_below_max_tokens(tmp_path: Path) -> None:
    data = sample_config_data()
    data["chunking"] = {"max_tokens": 100, "overlap_tokens": 100}
    with pytest.raises(
        ConfigError, match=r"overlap_tokens \(100\) must be smaller than max_tokens"
    ):
        load_config(_write(tmp_path, data))


def test_duplicate_provider_names_refused(tmp_path: Path) -> None:
    data = sample_config_data()
    data["providers"].append(dict(data["providers"][0]))
    with pytest.raises(ConfigError, match=r"provider name 'llama-eu' is used twice"):
        load_config(_write(tmp_path, data))


def test_unpriced_model_is_refused_before_any_call(tmp_path: Path) -> None:
    data = sample_config_data()
    data["providers"][0]["models"] = [{"id": "my-private-model"}]
    cfg = load_config(_write(tmp_path, data))
    with pytest.raises(
        ConfigError, match=r"my-private-model.*not in the shipped price table.*input_per_mtok"
    ):
        endpoints_from_config(cfg)


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "corpus: [unclosed"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLES / "docroute.yaml", overrides={"budget.run_usd": 2.5})
    assert cfg.budget.run_usd == 2.5
    with pytest.raises(ConfigError, match=r"budget\.run_usd"):
        load_config(EXAMPLES / "docroute.yaml", overrides={"budget.run_usd": -1})
