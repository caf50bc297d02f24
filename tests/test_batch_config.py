"""What batch mode reads from the config and the price table: durations, the deadline a
schedule gives, ``routing.mode: auto`` needing one, batch prices, and which endpoints may
be sent batch jobs (``Endpoint.batch``)."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from pipeline.config import Config, load_config
from pipeline.config_sections import ScheduleConfig, parse_duration
from pipeline.errors import ConfigError
from pipeline.policy.routing import Endpoint, endpoints_from_config, reservation_usd
from pipeline.prices import Price, load_price_table
from tests.conftest import REPO, sample_config_data, write_config

PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4h", 4 * 3600),
        ("1h30m", 5400),
        ("90m", 5400),
        ("2d", 2 * 86400),
        ("45s", 45),
        ("1d2h3m4s", 86400 + 2 * 3600 + 3 * 60 + 4),
        (" 8s ", 8),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == float(seconds)


@pytest.mark.parametrize("text", ["", "  ", "4", "h", "4x", "1.5h", "-1h", "30m1h", "4 h", "4H"])
def test_a_bad_duration_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as raised:
        parse_duration(text)
    assert repr(text) in str(raised.value)


def at(text: str, zone: ZoneInfo = PARIS) -> float:
    """The epoch second of local time ``text`` (``2026-03-10 05:00``) in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def test_finish_within_is_counted_from_the_start() -> None:
    assert ScheduleConfig(finish_within="1h30m").deadline_after(1000.0) == 1000.0 + 5400
    assert ScheduleConfig(finish_within="2d").deadline_after(0.0) == 2 * 86400


def test_no_deadline_without_a_schedule() -> None:
    assert ScheduleConfig().deadline_after(1000.0) is None


@pytest.mark.parametrize(
    ("started", "due"),
    [
        ("2026-03-10 05:00", "2026-03-10 06:00"),  # before 06:00: this morning
        ("2026-03-10 05:59:59", "2026-03-10 06:00"),
        ("2026-03-10 06:00", "2026-03-11 06:00"),  # at or after 06:00: tomorrow's
        ("2026-03-10 07:00", "2026-03-11 06:00"),
        ("2026-03-10 23:30", "2026-03-11 06:00"),
    ],
)
def test_a_time_of_day_deadline_is_the_next_one_in_its_zone(started: str, due: str) -> None:
    schedule = ScheduleConfig(deadline="06:00", timezone="Europe/Paris")
    assert schedule.deadline_after(at(started)) == at(due)


def test_the_deadline_is_in_the_configured_zone_not_utc() -> None:
    paris = ScheduleConfig(deadline="06:00", timezone="Europe/Paris")
    utc = ScheduleConfig(deadline="06:00")
    start = at("2026-07-01 00:00", ZoneInfo("UTC"))  # 02:00 in Paris (CEST, UTC+2)
    assert utc.deadline_after(start) == start + 6 * 3600
    assert paris.deadline_after(start) == start + 4 * 3600  # 06:00 CEST is 04:00 UTC


@pytest.mark.parametrize(
    ("started", "hours"),
    [
        ("2026-03-28 22:00", 7),  # the night clocks go forward (02:00 → 03:00): an hour less
        ("2026-10-24 22:00", 9),  # the night clocks go back (03:00 → 02:00): an hour more
        ("2026-03-29 05:00", 1),  # the morning after the change, already CEST
    ],
)
def test_a_deadline_across_a_dst_change_is_the_local_time(started: str, hours: int) -> None:
    schedule = ScheduleConfig(deadline="06:00", timezone="Europe/Paris")
    due = schedule.deadline_after(at(started))
    assert due is not None and due - at(started) == hours * 3600
    assert datetime.fromtimestamp(due, PARIS).strftime("%H:%M") == "06:00"


def test_an_unknown_time_zone_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Europe/Atlantis'"):
        ScheduleConfig(deadline="06:00", timezone="Europe/Atlantis")


@pytest.mark.parametrize("deadline", ["6:00", "24:00", "06:60", "06:00:00", "6am"])
def test_a_deadline_must_be_hh_mm(deadline: str) -> None:
    with pytest.raises(ValidationError, match="deadline"):
        ScheduleConfig(deadline=deadline)


def test_a_bad_finish_within_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError, match="'4 hours' is not a duration"):
        ScheduleConfig(finish_within="4 hours")


def test_deadline_and_finish_within_together_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"schedule\.deadline or schedule\.finish_within"):
        ScheduleConfig(deadline="06:00", finish_within="4h")


def config_data(**sections: Any) -> dict[str, Any]:
    data = sample_config_data()
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def test_auto_mode_without_a_deadline_is_refused_naming_schedule_deadline() -> None:
    with pytest.raises(
        ValidationError, match=r"mode auto needs a deadline: set schedule\.deadline"
    ):
        Config.model_validate(config_data(routing={"mode": "auto"}))


@pytest.mark.parametrize(
    ("routing", "schedule"),
    [
        ({"mode": "auto"}, {"finish_within": "4h"}),
        ({"mode": "auto"}, {"deadline": "06:00", "timezone": "Europe/Paris"}),
        ({"mode": "batch"}, {}),  # batch runs within the vendor's window
        ({}, {}),
    ],
)
def test_modes_that_have_the_deadline_they_need_load(routing: Any, schedule: Any) -> None:
    cfg = Config.model_validate(config_data(routing=routing, schedule=schedule))
    assert cfg.routing.mode == routing.get("mode", "sync")


def test_load_config_refuses_auto_mode_without_a_deadline(tmp_path: Path) -> None:
    path = write_config(tmp_path, sample_config_data())
    with pytest.raises(ConfigError, match=r"schedule\.deadline") as raised:
        load_config(path, overrides={"routing.mode": "auto"})
    assert str(path) in str(raised.value)
    cfg = load_config(path, overrides={"routing.mode": "auto", "schedule.finish_within": "90m"})
    assert cfg.schedule.deadline_after(0.0) == 5400.0


FULL = Price(2.0, 8.0, 0.5, 200_000, 8192, "t", 2.5, 1.0, 4.0)


def test_batch_prices_discount_every_token_alike() -> None:
    batch = FULL.batch()
    assert (batch.input_per_mtok, batch.output_per_mtok) == (1.0, 4.0)
    assert batch.cached_input_per_mtok == pytest.approx(0.25)
    assert batch.cache_write_per_mtok == pytest.approx(1.25)
    assert (batch.context_window, batch.max_output_tokens, batch.priced_at) == (200_000, 8192, "t")
    assert FULL.input_per_mtok == 2.0  # the sync price is left as it was


def test_batch_prices_of_a_model_billing_cache_writes_as_input() -> None:
    price = Price(0.4, 1.6, 0.1, 1000, 100, "t", None, 0.1, 0.8)  # a quarter on input
    batch = price.batch()
    assert batch.cache_write_per_mtok is None
    assert batch.cached_input_per_mtok == pytest.approx(0.025)
    assert batch.output_per_mtok == 0.8  # output has a batch price of its own


@pytest.mark.parametrize(("batch_input", "batch_output"), [(None, None), (1.0, None), (None, 4.0)])
def test_a_model_without_batch_prices_has_none(batch_input: Any, batch_output: Any) -> None:
    price = Price(2.0, 8.0, 0.5, 1000, 100, "t", None, batch_input, batch_output)
    assert not price.batchable
    with pytest.raises(ValueError, match="no batch price"):
        price.batch()


def test_the_shipped_table_loads_batch_prices() -> None:
    table = load_price_table()
    mini = table["gpt-4.1-mini"]
    assert (mini.batch_input_per_mtok, mini.batch_output_per_mtok) == (0.20, 0.80)
    assert mini.batchable and mini.batch().input_per_mtok == 0.20
    haiku = table["claude-haiku-4-5"]
    assert (haiku.batch_input_per_mtok, haiku.batch_output_per_mtok) == (0.50, 2.50)
    assert haiku.batch().cache_write_per_mtok == pytest.approx(0.625)
    rows = list(csv.DictReader((REPO / "pipeline" / "data" / "prices.csv").open()))
    for row in rows:
        price = table[row["model"]]
        for column in ("batch_input_per_mtok", "batch_output_per_mtok"):
            expected = float(row[column]) if row[column] else None
            assert getattr(price, column) == expected, (row["model"], column)


def endpoints(*providers: dict[str, Any]) -> dict[str, Endpoint]:
    data = sample_config_data()
    data["providers"] = list(providers)
    return {e.key: e for e in endpoints_from_config(Config.model_validate(data))}


def provider(name: str, kind: str, *models: Any, **fields: Any) -> dict[str, Any]:
    listed = [m if isinstance(m, dict) else {"id": m} for m in models]
    return {"name": name, "kind": kind, "region": "eu", "models": listed, **fields}


def test_the_sample_configs_endpoints_take_batch_jobs_where_they_can() -> None:
    found = {e.key: e.batch for e in endpoints_from_config(Config.model_validate(config_data()))}
    assert found == {
        "llama-eu/meta-llama/Llama-3.3-70B-Instruct": False,  # vLLM, priced by the config
        "mistral-eu/mistral-small-latest": True,
        "openai-eu/gpt-4.1-mini": True,
        "anthropic-us/claude-haiku-4-5": True,
        "openai-us/gpt-4.1-nano": True,
        "openai-us/gpt-4.1-mini": True,
    }


def test_batch_endpoints_by_kind_preset_config_and_price() -> None:
    unpriced = {"id": "house-model", "input_per_mtok": 1.0, "output_per_mtok": 2.0,
                "context_window": 32768}  # fmt: skip
    priced = unpriced | {"id": "house-batch", "batch_input_per_mtok": 0.5,
                         "batch_output_per_mtok": 1.0}  # fmt: skip
    found = endpoints(
        provider("oai", "openai", "gpt-4.1-mini", unpriced, priced),
        provider("claude", "anthropic", "claude-haiku-4-5"),
        provider("mistral", "mistral", "mistral-small-latest"),
        provider("off", "openai", "gpt-4.1-mini", batch=False),
        provider("groq", "openai_compatible", "llama-3.3-70b-versatile", preset="groq"),
        provider("together", "openai_compatible", "llama-3.3-70b-versatile", preset="together"),
        provider("vllm", "openai_compatible", "gpt-4.1-mini", base_url="http://h:8000/v1"),
    )
    assert {key: e.batch for key, e in found.items()} == {
        "oai/gpt-4.1-mini": True,
        "oai/house-model": False,  # no batch price
        "oai/house-batch": True,  # batch prices given in the config
        "claude/claude-haiku-4-5": True,
        "mistral/mistral-small-latest": True,
        "off/gpt-4.1-mini": False,  # batch: false
        "groq/llama-3.3-70b-versatile": True,  # a preset that speaks OpenAI's Batch API
        "together/llama-3.3-70b-versatile": False,
        "vllm/gpt-4.1-mini": False,  # openai_compatible without a batch preset
    }
    assert found["oai/house-batch"].price.batch_input_per_mtok == 0.5


def test_a_config_batch_price_overrides_the_tables() -> None:
    model = {"id": "gpt-4.1-mini", "batch_input_per_mtok": 0.1}
    (e,) = endpoints(provider("oai", "openai", model)).values()
    assert (e.price.batch_input_per_mtok, e.price.batch_output_per_mtok) == (0.1, 0.80)


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-haiku-4-5"])
def test_a_batch_request_reserves_half_the_sync_worst_case(model: str) -> None:
    kind = "anthropic" if model.startswith("claude") else "openai"
    (e,) = endpoints(provider("p", kind, model)).values()
    sync = reservation_usd(e, 10_000, 800)
    assert sync > 0
    assert reservation_usd(e, 10_000, 800, batch=True) == pytest.approx(sync / 2)
    if model == "gpt-4.1-mini":
        assert sync == pytest.approx((10_000 * 0.40 + 800 * 1.60) / 1e6)
