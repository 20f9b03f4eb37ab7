"""DataFrames of rows held in Python, built without a Python worker."""

from __future__ import annotations

from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType


def local_frame(spark: SparkSession, rows: list, ddl: str) -> DataFrame:
    """A DataFrame of ``rows`` (tuples or lists in the order of the ``ddl``'s columns, of
    flat types) held in Python, handed over as Arrow: the JVM reads the columns as they are,
    where rows given as a list are unpickled by a Python worker when the job runs (a 10-row
    append of the metrics took 0.56-0.68 s that way, 0.36 s this way, warm). A naive
    datetime is local time, as Spark reads one."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = StructType.fromDDL(ddl)
    arrow = to_arrow_schema(schema)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema.fields]

    def value(v: object) -> object:
        if isinstance(v, datetime) and v.tzinfo is None:
            return v.astimezone(UTC)
        return v

    arrays = [
        pa.array([value(v) for v in column], type=field.type)
        for column, field in zip(columns, arrow, strict=True)
    ]
    return spark.createDataFrame(pa.Table.from_arrays(arrays, schema=arrow), schema=schema)
