"""A run that fails as a whole names the stage that failed: ``ingest`` (the corpus could not
be read on), ``dispatch`` (the calls) or ``store`` (the batch's parts or journal)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.nightly import nightly_batch
from pipeline.batches import Batch, drive
from pipeline.errors import StageError
from pipeline.store import Store
from tests.conftest import sample_config_data, write_config


def test_a_corpus_that_fails_mid_read_is_an_ingest_failure_after_the_batches_in_flight() -> None:
    done: list[str] = []

    def batches() -> Iterator[Batch]:
        yield Batch("b1", [], [])
        raise PermissionError(13, "Permission denied", "corpus/secret")

    async def process(batch: Batch) -> None:
        await asyncio.sleep(0.01)
        done.append(batch.batch_id)

    with pytest.raises(StageError) as caught:
        asyncio.run(drive(batches(), process, parallel=2))
    assert caught.value.stage == "ingest" and caught.value.batch_id is None
    assert "stage 'ingest' failed while reading the corpus" in str(caught.value)
    assert "Permission denied" in str(caught.value)
    assert done == ["b1"], "the batch in flight is finished (its parts committed) first"


@pytest.mark.usefixtures("prefect_harness")
def test_a_batch_whose_parts_cannot_be_written_is_a_store_failure(
    tmp_path: Path, sim_env: Any
) -> None:
    config = write_config(tmp_path, sample_config_data())
    blocked = tmp_path / "out" / "ledger" / "stuck"  # where the run's ledger parts go
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where a folder should be")
    with pytest.raises(StageError) as caught:
        asyncio.run(nightly_batch(config_path=str(config), run_id="stuck"))
    assert caught.value.stage == "store", caught.value
    assert str(caught.value).startswith("stage 'store' failed for batch stuck/b00001")
    record = Store(tmp_path / "out").latest_run("stuck")
    assert record is not None and record.status == "failed"
    assert "stage 'store'" in (record.message or "")
