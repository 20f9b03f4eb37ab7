"""Rows held in Python become the DataFrame Spark itself would build of them, through Arrow
(common/frames.py): the metrics of every micro-batch and the task records are built so."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from order_pipeline.common.frames import local_frame
from order_pipeline.quality.metrics import METRICS_DDL

DDL = "name string, n bigint, share double, ok boolean, at timestamp"


@pytest.fixture
def new_york_local_time():
    """Python's local time away from UTC, so a naive datetime is seen to be read as local."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "America/New_York")
        time.tzset()
        yield
    time.tzset()


@pytest.mark.usefixtures("new_york_local_time")
def test_a_local_frame_holds_what_spark_builds_of_the_same_rows(spark) -> None:
    assert os.environ["TZ"] == "America/New_York"
    plus_two = timezone(timedelta(hours=2))
    rows = [
        ("a", 1, 0.5, True, datetime(2026, 12, 6, 10, 0, tzinfo=UTC)),
        ("ü\u00a0'x", 2**40, None, False, datetime(2026, 12, 6, 12, 0, tzinfo=plus_two)),
        (None, None, -1.25, None, None),
        ("naive", 3, 1.0, True, datetime(2026, 12, 6, 10, 0)),  # local time, as Spark reads it
    ]
    built = local_frame(spark, rows, DDL)
    assert built.schema == spark.createDataFrame(rows, DDL).schema
    assert built.collect() == spark.createDataFrame(rows, DDL).collect()
    at = {r.n: r.at for r in built.collect()}
    assert at[1] == at[2**40]  # 10:00 UTC is 12:00 at +02:00
    assert at[3] - at[1] == timedelta(hours=5)  # 10:00 in New York (EST) is 15:00 UTC
    assert local_frame(spark, [], METRICS_DDL).count() == 0


def test_a_row_of_the_wrong_width_is_an_error(spark) -> None:
    with pytest.raises(ValueError):
        local_frame(spark, [("a", 1, 0.5, True, None), ("b", 2)], DDL)
    with pytest.raises(ValueError):
        local_frame(spark, [("a", 1, 0.5, True)], DDL)
