"""Residency from four sources, most specific first: a document's own metadata (front
matter, JSONL fields), the manifest (CSV or JSONL, by path or doc id), path globs, the
default. Bad manifests stop the config with file, line and expectation; an end-to-end run
proves a document's front matter beats a glob that would allow the US."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import load_config
from pipeline.corpus import read_corpus
from pipeline.errors import ConfigError
from pipeline.ingest import ExtractOptions, Unparsed
from pipeline.ingest.frontmatter import front_matter
from pipeline.ingest.jsonl import extract_jsonl
from pipeline.models import Chunk, Document, stable_id
from pipeline.policy import Residency
from pipeline.store import Store
from pipeline.tokens import get_counter
from tests.conftest import sample_config_data

EU_FRONT = "---\nresidency: [eu]\n---\n# Minutes\n\nThe board met.\n"


def _corpus(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "corpus"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _config(tmp_path: Path, corpus: Path, **corpus_fields: Any) -> Path:
    data = sample_config_data()
    data["corpus"] = {
        "path": str(corpus),
        "residency": [{"match": "us/**", "regions": ["us"]}],
        "residency_default": "deny",
        **corpus_fields,
    }
    data["output"] = {"root": str(tmp_path / "out")}
    path = tmp_path / "docroute.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _decisions(config: Path) -> dict[str, tuple[tuple[str, ...], str]]:
    """path → (regions, rule) of each document's chunks, read as a run reads them."""
    cfg = load_config(config)
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for item in read_corpus(cfg, run_id="t", counter=get_counter("chars")):
        if isinstance(item, Chunk):
            out[item.path] = (item.regions, item.residency_rule)
    return out


def test_metadata_beats_manifest_beats_glob_beats_default(tmp_path: Path) -> None:
    corpus = _corpus(
        tmp_path,
        {
            "us/front.md": EU_FRONT,  # metadata eu, manifest ch, glob us
            "us/listed.md": "Listed in the manifest.\n",  # manifest ch, glob us
            "us/plain.md": "Only the glob.\n",  # glob us
            "other/none.md": "Nothing decides.\n",  # default
        },
    )
    manifest = tmp_path / "residency.csv"
    manifest.write_text("path,regions\nus/front.md,ch\nus/listed.md,ch;eu\n")
    config = _config(tmp_path, corpus, residency_manifest="residency.csv")
    assert _decisions(config) == {
        "us/front.md": (("eu",), "metadata:residency"),
        "us/listed.md": (("ch", "eu"), "manifest:residency.csv:3"),
        "us/plain.md": (("us",), "us/**"),
        "other/none.md": ((), "default:deny"),
    }
    allow = _config(tmp_path, corpus, residency_default=["eu"], residency_field=None)
    decided = _decisions(allow)
    assert decided["us/front.md"] == (("us",), "us/**"), "residency_field: null reads no metadata"
    assert decided["other/none.md"] == (("eu",), "default")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("key", ["path", "doc_id"])
def test_manifest_by_path_or_doc_id(tmp_path: Path, fmt: str, key: str) -> None:
    corpus = _corpus(tmp_path, {"a/x.md": "X.\n", "a/y.txt": "Y.\n"})
    ids = {p: (p if key == "path" else stable_id(p)) for p in ("a/x.md", "a/y.txt")}
    if fmt == "csv":
        text = f"{key},regions\n# a comment row\n{ids['a/x.md']},eu\n{ids['a/y.txt']},deny\n"
        rules = ("manifest:residency.csv:3", "manifest:residency.csv:4")
    else:
        rows = [{key: ids["a/x.md"], "regions": ["eu"]}, {key: ids["a/y.txt"], "regions": "deny"}]
        text = "\n".join(json.dumps(r) for r in rows) + "\n"
        rules = ("manifest:residency.jsonl:1", "manifest:residency.jsonl:2")
    (tmp_path / f"residency.{fmt}").write_text(text)
    config = _config(tmp_path, corpus, residency_manifest=f"residency.{fmt}")
    assert _decisions(config) == {"a/x.md": (("eu",), rules[0]), "a/y.txt": ((), rules[1])}


def test_front_matter_of_md_and_txt(tmp_path: Path) -> None:
    corpus = _corpus(
        tmp_path,
        {
            "us/a.md": "---\ntitle: A\nresidency: eu\n---\nText.\n",
            "us/b.txt": "---\r\nresidency: [eu, ch]\r\n...\r\nText.\r\n",
            "us/rule.md": "---\n\nA horizontal rule, not front matter.\n\n---\nMore.\n",
            "us/broken.md": "---\nresidency: [eu\n---\nText.\n",
            "us/number.md": "---\nresidency: 42\n---\nText.\n",
            "us/deny.md": "---\nresidency: deny\n---\nText.\n",
        },
    )
    decided = _decisions(_config(tmp_path, corpus))
    assert decided == {
        "us/a.md": (("eu",), "metadata:residency"),
        "us/b.txt": (("eu", "ch"), "metadata:residency"),
        "us/rule.md": (("us",), "us/**"),
        "us/broken.md": ((), "metadata:residency:invalid"),  # meant as front matter: fail closed
        "us/number.md": ((), "metadata:residency:invalid"),
        "us/deny.md": ((), "metadata:residency"),
    }
    assert front_matter("# No front matter\n", field="residency") is None
    broken = front_matter("---\nresidency: [eu\n---\n", field="residency")
    assert broken is not None and isinstance(broken["residency"], Unparsed)


def test_the_front_matter_stays_in_the_text_so_offsets_hold(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, {"us/a.md": EU_FRONT})
    cfg = load_config(_config(tmp_path, corpus))
    (chunk,) = [c for c in read_corpus(cfg, run_id="t", counter=get_counter("chars"))
                if isinstance(c, Chunk)]  # fmt: skip
    assert EU_FRONT[chunk.char_start : chunk.char_end] == chunk.text


def test_jsonl_records_that_disagree_get_the_intersection(tmp_path: Path) -> None:
    """With ``corpus.jsonl.per_record: false`` (by default each record is its own
    document: tests/test_jsonl_records.py)."""

    def records(*regions: Any) -> str:
        rows = [{"id": i, "text": f"Record {i}."} for i in range(len(regions) + 1)]
        for row, value in zip(rows, regions, strict=False):
            row["residency"] = value
        return "\n".join(json.dumps(r) for r in rows) + "\n"  # the last record has no field

    corpus = _corpus(
        tmp_path,
        {
            "us/agree.jsonl": records(["eu"], "eu"),
            "us/overlap.jsonl": records(["eu", "ch"], ["ch", "us"], ["ch"]),
            "us/disjoint.jsonl": records(["eu"], ["us"]),
            "us/bad.jsonl": records(["eu"], "EU!"),
            "us/none.jsonl": records(),
        },
    )
    assert _decisions(_config(tmp_path, corpus, jsonl={"per_record": False})) == {
        "us/agree.jsonl": (("eu",), "metadata:residency"),
        "us/overlap.jsonl": (("ch",), "metadata:residency:intersection"),
        "us/disjoint.jsonl": ((), "metadata:residency:intersection"),
        "us/bad.jsonl": ((), "metadata:residency:invalid"),
        "us/none.jsonl": (("us",), "us/**"),  # no record says: the next source decides
    }
    doc = Document("d", "x.jsonl", Path("x.jsonl"), 0)
    data = b'{"text": "a", "zone": "eu"}\n{"text": "b", "zone": "eu"}\n{"zone": "us"}\n'
    got = extract_jsonl(doc, data, ExtractOptions(metadata_field="zone"))
    assert got.metadata == ({"zone": "eu"},), "distinct values of usable records only"


def test_a_rerun_reads_the_documents_own_residency_from_disk(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, {"us/a.md": EU_FRONT})
    residency = Residency.from_config(load_config(_config(tmp_path, corpus)).corpus)
    assert residency.decide("us/a.md").regions == ("eu",)  # no metadata given: read the file
    assert residency.decide("us/a.md", metadata=()).rule == "us/**"
    assert residency.decide("us/gone.md").rule == "us/**"


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("m.csv", None, "cannot be read"),
        ("m.csv", "path,region\na.md,eu\n", "m.csv:1: unknown column 'region'; expected path"),
        ("m.csv", "path,regions\na.md,eu\nb.md,EU\n", "m.csv:3: regions 'EU' are not valid"),
        ("m.csv", "path,regions\na.md,eu\n./a.md,us\n", "m.csv:3: ./a.md is given regions [us]"),
        ("m.csv", "path,regions\na.md\n", "m.csv:2: 1 cell(s); expected 2"),
        ("m.csv", "path,regions\n../a.md,eu\n", "expected a path relative to corpus.path"),
        ("m.csv", "doc_id,regions\nabc,eu\n", "m.csv:2: doc_id 'abc'; expected 32 hex"),
        ("m.jsonl", '{"path": "a.md", "regions": ["eu"]}\n[1]\n', "m.jsonl:2: not a JSON object"),
        ("m.jsonl", '{"path": "a.md", "zones": ["eu"]}\n', "m.jsonl:1: unknown column 'zones'"),
        ("m.txt", "path,regions\n", "expected .csv or .jsonl"),
    ],
)
def test_a_bad_manifest_names_file_line_and_expectation(
    tmp_path: Path, name: str, text: str | None, expected: str
) -> None:
    if text is not None:
        (tmp_path / name).write_text(text)
    config = _config(tmp_path, _corpus(tmp_path, {"a.md": "A.\n"}), residency_manifest=name)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert expected in str(info.value)
    assert str(tmp_path / name) in str(info.value)


def test_the_same_document_by_path_and_doc_id_must_agree(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(f"path,doc_id,regions\na.md,,eu\n,{stable_id('a.md')},us\n")
    config = _config(tmp_path, _corpus(tmp_path, {"a.md": "A.\n"}), residency_manifest="m.csv")
    with pytest.raises(ConfigError, match=r"m.csv:3: .* but line 2 \(a.md\) gave \[eu\]"):
        load_config(config)


def test_regions_no_endpoint_serves_are_warned_of_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = _corpus(tmp_path, {"a.md": "---\nresidency: [mars]\n---\nA.\n", "b.md": "B.\n"})
    (tmp_path / "m.csv").write_text("path,regions\nb.md,on-prem\n")
    config = _config(tmp_path, corpus, residency_manifest="m.csv", residency_default=["moon"])
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        items = read_corpus(load_config(config), run_id="t", counter=get_counter("chars"))
        at_start = caplog.text
        list(items)
    assert "region 'moon' (corpus.residency_default) is served by no" in at_start
    assert "region 'on-prem' (manifest:m.csv:2) is served by no" in at_start
    assert "region 'mars' (metadata of a.md) is served by no" in caplog.text


def test_a_path_rule_that_matches_no_document_is_warned_of_at_start_and_in_the_plan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.plan import make_plan

    corpus = _corpus(tmp_path, {"eu/a.md": "A.\n", "us/b.md": "B.\n"})
    rules = [{"match": "EU/**", "regions": ["eu"]}, {"match": "us/**", "regions": ["us"]}]
    config = _config(tmp_path, corpus, residency=rules)
    want = (
        "corpus.residency[0] (EU/**) matches none of the corpus's 2 document(s): check its "
        "glob (paths are relative to corpus.path)"
    )
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        read_corpus(load_config(config), run_id="t", counter=get_counter("chars"))
    assert want in caplog.text, "before any document is read"
    assert "corpus.residency[1]" not in caplog.text
    assert want in make_plan(load_config(config)).warnings


@pytest.mark.usefixtures("prefect_harness")
def test_front_matter_eu_is_never_sent_to_the_us_even_when_globs_allow_it(
    tmp_path: Path, sim_env: Any
) -> None:
    from flows.nightly import nightly_batch

    body = "\n\n".join(f"Paragraph {i}: the Duisburg works council met again." for i in range(40))
    corpus = _corpus(
        tmp_path,
        {
            "us/eu_customer.md": "---\nresidency: [eu]\n---\n" + body,
            "us/plain.md": "A US memo about the Austin office lease renewal.\n",
        },
    )
    config = _config(tmp_path, corpus, residency=[{"match": "**", "regions": ["us", "eu"]}])
    data = yaml.safe_load(config.read_text())
    for provider in data["providers"]:  # the US is the cheapest: where the glob alone leads
        if provider["region"] == "us":
            for model in provider["models"]:
                model.update(input_per_mtok=0.001, output_per_mtok=0.001)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    summary = asyncio.run(nightly_batch(config_path=str(config)))
    store = Store(tmp_path / "out")
    rows = store.read(
        "SELECT c.path, c.residency_rule, l.region FROM ledger l JOIN chunks c "
        "USING (run_id, chunk_id) WHERE l.run_id = ? AND l.provider IS NOT NULL",
        [summary["run_id"]],
    ).rows
    eu_doc = {(rule, region) for path, rule, region in rows if path == "us/eu_customer.md"}
    assert eu_doc == {("metadata:residency", "eu")}
    plain = {region for path, _, region in rows if path == "us/plain.md"}
    assert plain == {"us"}, "the glob allows both; the cheapest (us) is taken"


def test_a_rule_that_also_allows_a_served_region_is_not_warned_of(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,regions\nb.md,eu;ch\nc.md,ch\nd.md,ch\n")
    config = _config(
        tmp_path,
        _corpus(tmp_path, {"a.md": "A.\n", "b.md": "B.\n", "c.md": "C.\n", "d.md": "D.\n"}),
        residency_manifest="m.csv",
        residency=[
            {"match": "both/**", "regions": ["eu", "us"]},
            {"match": "swiss/**", "regions": ["ch", "li"]},
        ],
        residency_default=["eu", "moon"],
    )
    cfg = load_config(config)
    lines = Residency.from_config(cfg.corpus).unserved({"eu"})
    assert lines == [
        "regions 'ch', 'li' (corpus.residency[1] (swiss/**)) are served by no configured "
        "endpoint: its documents will fail with no_route",
        "region 'ch' (manifest:m.csv:3 and 1 more entries) is served by no configured "
        "endpoint: its documents will fail with no_route",
    ]
