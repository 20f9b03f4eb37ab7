"""The options of ``order-pipeline trigger``, apart from the Databricks SDK (two seconds to
import), so that every other command starts at once."""

from __future__ import annotations

import argparse

from order_pipeline.cli.arguments import add_parameters

DEFAULT_JOB_NAME = "order-pipeline"
DEFAULT_TIMEOUT_MINUTES = 120.0
DEFAULT_POLL_SECONDS = 10.0
# The SDK waits 60 s for an answer by default; 30 s is ample for the Jobs API calls made here.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 30.0
# Signing in may take a few requests (host metadata, OAuth discovery and token), and the
# SDK gives some of them no timeout at all: the whole of it gets this many request timeouts.
SIGN_IN_REQUEST_TIMEOUTS = 2


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job-name",
        default=DEFAULT_JOB_NAME,
        help="deployed job name; a dev deploy's '[dev <user>] NAME' is found too "
        f"(default: {DEFAULT_JOB_NAME})",
    )
    add_parameters(
        parser, "job parameter for this run, e.g. --param full_refresh=true (repeatable)"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="start the run, print its URL and return"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_MINUTES,
        metavar="MINUTES",
        help=f"stop waiting after this many minutes (default: {DEFAULT_TIMEOUT_MINUTES:g}); "
        "the run itself goes on",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        metavar="SECONDS",
        help=f"seconds between status checks (default: {DEFAULT_POLL_SECONDS:g})",
    )
    parser.add_argument(
        "--request-timeout",
        type=_positive_seconds,
        default=DEFAULT_REQUEST_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="give up on a request to the workspace after this many seconds (default: "
        f"{DEFAULT_REQUEST_TIMEOUT_SECONDS:g}); an unreachable or silent workspace is reported "
        f"after one, signing in gets {SIGN_IN_REQUEST_TIMEOUTS}",
    )
    parser.add_argument(
        "--profile", help="profile in ~/.databrickscfg (default: DATABRICKS_* environment)"
    )
    parser.add_argument("--host", help="workspace URL (default: DATABRICKS_HOST or the profile)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value
