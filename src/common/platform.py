"""Local or Databricks: decided here and nowhere else."""

from __future__ import annotations

import os


def is_databricks() -> bool:
    """True inside a Databricks runtime (classic or serverless jobs set this variable)."""
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def profile_name() -> str:
    """The configuration profile: $ORDER_PIPELINE_PROFILE, else detected from the runtime."""
    return os.environ.get("ORDER_PIPELINE_PROFILE") or (
        "databricks" if is_databricks() else "local"
    )
