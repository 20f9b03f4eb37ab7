"""Local or Databricks, classic Spark or Spark Connect: decided here and nowhere else.

Two independent questions. The *profile* (conf/local.yml or conf/databricks.yml) says where
data lives and how landing files are read. The *session kind* says what the engine allows:
Databricks serverless (and the local ``connect`` mode that stands in for it) runs the job on
Spark Connect, where ``foreachBatch`` runs in another Python process, ``persist`` and the
``sparkContext`` are refused, and only a documented handful of Spark properties can be set.
Jobs ask ``capabilities(spark)`` instead of branching on the platform themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyspark.sql import SparkSession

SPARK_MODES = ("classic", "connect")

# The Spark properties a serverless notebook or job may set, as documented in "Configure
# Spark properties for serverless notebooks and jobs"
# (https://docs.databricks.com/aws/en/spark/conf#configure-spark-properties-for-serverless-notebooks-and-jobs,
# read 2026-12-02). Anything else raises CONFIG_NOT_AVAILABLE there; in the local connect
# mode ``set_session_conf`` refuses it the same way, so a test run finds it first.
SERVERLESS_SESSION_CONFS = frozenset(
    {
        "spark.sql.legacy.timeParserPolicy",
        "spark.sql.session.timeZone",
        "spark.sql.shuffle.partitions",
        "spark.sql.ansi.enabled",
        "spark.sql.files.maxPartitionBytes",
        "spark.databricks.execution.timeout",
    }
)


class ConfigNotAvailable(RuntimeError):
    """A Spark property this session kind does not let a job set (serverless's
    CONFIG_NOT_AVAILABLE)."""


class NotAvailableOnServerless(RuntimeError):
    """An API serverless compute refuses (e.g. ``DataFrame.persist``)."""


def is_databricks() -> bool:
    """True inside a Databricks runtime (classic or serverless jobs set this variable)."""
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def profile_name() -> str:
    """The configuration profile: $ORDER_PIPELINE_PROFILE, else detected from the runtime."""
    return os.environ.get("ORDER_PIPELINE_PROFILE") or (
        "databricks" if is_databricks() else "local"
    )


def local_spark_mode() -> str:
    """How the local profile starts Spark: ``classic`` (a local[*] session, the default) or
    ``connect`` (a local Spark Connect server, serverless's semantics), from
    $ORDER_PIPELINE_SPARK_MODE."""
    mode = os.environ.get("ORDER_PIPELINE_SPARK_MODE", "classic").strip().lower() or "classic"
    if mode not in SPARK_MODES:
        raise ValueError(f"ORDER_PIPELINE_SPARK_MODE must be one of {SPARK_MODES}, got {mode!r}")
    return mode


def is_spark_connect(spark: SparkSession) -> bool:
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # the Connect client's dependencies are not installed
        return False
    return isinstance(spark, ConnectSession)


@dataclass(frozen=True)
class Capabilities:
    """What the session behind a job lets it do."""

    spark_connect: bool

    @property
    def can_persist(self) -> bool:
        """Serverless has no DataFrame cache: ``persist`` is refused."""
        return not self.spark_connect

    @property
    def session_txn_confs(self) -> bool:
        """Whether a MERGE may carry Delta's idempotent-write identity as the session confs
        spark.databricks.delta.write.txnAppId/txnVersion (not on the serverless allowlist)."""
        return self.settable("spark.databricks.delta.write.txnAppId")

    def settable(self, key: str) -> bool:
        return not self.spark_connect or key in SERVERLESS_SESSION_CONFS


def capabilities(spark: SparkSession) -> Capabilities:
    return Capabilities(spark_connect=is_spark_connect(spark))


def set_session_conf(spark: SparkSession, key: str, value: str) -> None:
    """Set a session property, refusing (as serverless does) one a Connect session may not set."""
    if not capabilities(spark).settable(key):
        raise ConfigNotAvailable(
            f"[CONFIG_NOT_AVAILABLE] Spark property {key!r} cannot be set on serverless compute; "
            f"settable there: {', '.join(sorted(SERVERLESS_SESSION_CONFS))} "
            "(src/common/platform.py SERVERLESS_SESSION_CONFS)"
        )
    spark.conf.set(key, value)


def unset_session_conf(spark: SparkSession, key: str) -> None:
    if capabilities(spark).settable(key):
        spark.conf.unset(key)


def refuse_what_serverless_refuses() -> None:
    """Make this process's Spark Connect client refuse what serverless refuses and a local
    Connect server would allow: ``persist``/``cache`` and setting any Spark property off the
    allowlist. (``sparkContext`` and RDDs Spark Connect refuses by itself.)

    Runs at import when ORDER_PIPELINE_SPARK_MODE=connect, so that it holds in the job's
    process and in every foreachBatch worker process (they import this package to unpickle
    the batch function, and inherit the environment). Never on Databricks, which refuses
    these itself."""
    from pyspark.sql.connect.conf import RuntimeConf
    from pyspark.sql.connect.dataframe import DataFrame as ConnectDataFrame

    if getattr(ConnectDataFrame.persist, "_serverless_guard", False):
        return

    def persist(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotAvailableOnServerless(
            "[NOT_SUPPORTED_WITH_SERVERLESS] DataFrame.persist/cache is not supported on "
            "serverless compute (local Spark Connect mode refuses it too)"
        )

    def guarded(method):  # type: ignore[no-untyped-def]
        def call(self, key, *args, **kwargs):  # type: ignore[no-untyped-def]
            if key not in SERVERLESS_SESSION_CONFS:
                raise ConfigNotAvailable(
                    f"[CONFIG_NOT_AVAILABLE] Configuration {key} is not available on serverless "
                    "compute (local Spark Connect mode refuses it too)"
                )
            return method(self, key, *args, **kwargs)

        return call

    persist._serverless_guard = True  # type: ignore[attr-defined]
    ConnectDataFrame.persist = persist  # type: ignore[method-assign]
    ConnectDataFrame.cache = persist  # type: ignore[method-assign]
    RuntimeConf.set = guarded(RuntimeConf.set)  # type: ignore[method-assign]
    RuntimeConf.unset = guarded(RuntimeConf.unset)  # type: ignore[method-assign]


if (
    not is_databricks()
    and os.environ.get("ORDER_PIPELINE_SPARK_MODE", "").strip().lower() == "connect"
):
    refuse_what_serverless_refuses()
