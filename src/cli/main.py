"""``order-pipeline``: the command line of the local lakehouse (and the Databricks trigger)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from order_pipeline.cli.arguments import add_parameters
from order_pipeline.common.config import DEFAULT_DATA_ROOT

EPILOG = """examples:
  order-pipeline generate --scale 0.01          land synthetic JSON under .local/landing
  order-pipeline run                            run the whole job graph of resources/jobs.yml
  order-pipeline run --task silver_orders       run one task
  order-pipeline run --watch                    keep running: a run whenever new files land
  order-pipeline sql --json "select count(*) as n from bronze_orders"
  order-pipeline quarantine --entity orders --rule status_allowed
  order-pipeline replay orders --rule customer_exists
  order-pipeline report                         gold answers as tables
  order-pipeline erase customer C-0000042 --reason "request 2026-117"
  order-pipeline trigger --param full_refresh=true   start the deployed job on Databricks
"""


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        default=DEFAULT_DATA_ROOT,
        help="root of all local state: landing/, checkpoints/, warehouse/ (default: .local)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="order-pipeline",
        description="Order-management lakehouse: landing JSON -> bronze -> silver -> gold, on local Spark + Delta.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("setup", help="resolve and cache the Delta Lake jars (once per machine)")

    from order_pipeline.cli import generate

    p = sub.add_parser(
        "generate", help="land seeded synthetic JSON files (Faker) in the landing folder"
    )
    generate.configure_parser(p)
    add_data_root(p)

    p = sub.add_parser(
        "run", help="run the job graph of resources/jobs.yml locally, in dependency order"
    )
    add_data_root(p)
    p.add_argument("--task", help="run only this task (e.g. bronze_orders, silver_orders, gold)")
    p.add_argument(
        "--full-refresh", action="store_true", help="rebuild tables and checkpoints from landing"
    )
    p.add_argument("--yes", action="store_true", help="do not ask before a full refresh")
    p.add_argument("--as-of", default="", help="as-of date for gold (default: now)")
    p.add_argument(
        "--parallel",
        type=positive_int,
        help="independent tasks at once (default: parallel_tasks of the profile)",
    )
    add_parameters(p, "job parameter")
    add_wait(p)
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep running: poll the tasks' inputs every --interval seconds and run the "
        "graph when one would not be skipped, in this process (Spark stays warm)",
    )
    p.add_argument(
        "--interval",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="with --watch: seconds between polls (default 5; a poll reads no data)",
    )
    p.add_argument(
        "--max-runs",
        type=positive_int,
        help="with --watch: stop after this many runs (default: until Ctrl-C or SIGTERM)",
    )

    p = sub.add_parser(
        "sql", help="run a query against the local tables (results as they are, personal data too)"
    )
    add_data_root(p)
    p.add_argument("query", nargs="?", help="SQL text (or --file)")
    p.add_argument("--file", type=Path, help="read the query from a file (e.g. src/queries/*.sql)")
    add_parameters(p, "named parameter :KEY")
    p.add_argument("--json", action="store_true", help="print JSON Lines instead of a table")
    p.add_argument("--limit", type=int, default=100, help="rows to print (default 100)")
    p.epilog = (
        "The query's results print as they are: a query of quarantine_<entity> or silver_customers "
        "shows personal data in clear (`order-pipeline quarantine` masks it)."
    )

    p = sub.add_parser(
        "quarantine", help="summary of quarantined rows, or the rows themselves with filters"
    )
    add_data_root(p)
    p.add_argument("--entity", help="show the rows of this entity")
    p.add_argument("--rule", help="only rows that failed this rule")
    p.add_argument(
        "--status", choices=("open", "replayed", "expired"), help="only rows with this status"
    )
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print JSON Lines")
    p.add_argument(
        "--show-personal-data",
        action="store_true",
        help="print the personal fields of conf/pipeline.yml in clear, in the record and its "
        "raw text (default: masked as *** and a keyed hash, equal values alike)",
    )

    from order_pipeline.jobs.replay import add_replay_arguments

    p = sub.add_parser(
        "replay", help="re-check quarantined rows against current rules; merge those that pass"
    )
    add_data_root(p)
    p.add_argument("entity")
    add_replay_arguments(p)
    add_wait(p)

    p = sub.add_parser(
        "erase",
        help="erase one person's personal data everywhere: landing, tables, Delta history",
    )
    add_data_root(p)
    p.add_argument("entity", help="an entity with personal fields: customer")
    p.add_argument("key", help="its key, e.g. the customer_id")
    p.add_argument("--reason", default="", help="why (kept in ops_erasure_audit: no personal data)")
    p.add_argument(
        "--requested-by", default="", help="who asked for it (default: the session's user)"
    )
    add_wait(p)
    p.epilog = (
        "Runs the pending work of the job graph first (as `run`), so that no stream reads the "
        "person's rows after their files are gone; then rewrites landing without their lines, "
        "deletes their rows (masks silver's personal fields), purges old file versions and the "
        "change data feed, and records an ops_erasure_audit row."
    )

    p = sub.add_parser(
        "job-graph",
        help="the job's tasks generated from conf/pipeline.yml; --write updates resources/jobs.yml",
    )
    p.add_argument("--write", action="store_true", help="rewrite the tasks of resources/jobs.yml")

    p = sub.add_parser(
        "report", help="print the gold answers, or write the dashboards' picture as one HTML page"
    )
    add_data_root(p)
    p.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write one self-contained HTML page (the dashboards' charts from their own queries, "
        "the job graph, the latest quarantined rows with personal data masked) instead",
    )

    p = sub.add_parser("demo", help="generate, run the whole workflow and report, in one process")
    generate.configure_parser(p)
    add_data_root(p)
    add_wait(p)

    from order_pipeline.cli.trigger_options import configure_parser

    p = sub.add_parser("trigger", help="start the deployed job on Databricks and follow it")
    configure_parser(p)
    return parser


# `run`, `replay` and `demo` refused because another run holds the data root
EXIT_RUN_LOCKED = 75  # = common.runlock.EXIT_RUN_LOCKED, imported late to keep --help fast


def add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="when another run holds the data root, wait up to this long for it "
        "(default 0: refuse at once)",
    )


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), got {text}")
    return value


def hold_data_root(args: argparse.Namespace, ctx, command: str, run_id: str):
    """The data root's run lock for a command that writes tables (see common/runlock.py)."""
    from order_pipeline.common.runlock import run_lock

    return run_lock(ctx.profile, command=command, run_id=run_id, wait_seconds=args.wait)


def refused(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_RUN_LOCKED


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def local_context(data_root: str, entity: str | None = None):
    from order_pipeline.common.config import load_entities, load_profile
    from order_pipeline.common.platform import profile_name
    from order_pipeline.jobs.task import TaskContext, new_run_id

    return TaskContext(
        profile=load_profile(profile_name(), data_root),
        entities=load_entities(),
        run_id=new_run_id(),
        entity=entity,
    )


def open_lakehouse(data_root: str):
    from order_pipeline.common.io import Lakehouse
    from order_pipeline.common.spark import get_spark

    ctx = local_context(data_root)
    lake = Lakehouse(get_spark(ctx.profile), ctx.profile)
    return lake, ctx


def cmd_setup(args: argparse.Namespace) -> int:
    from order_pipeline.common.spark import (
        class_archive,
        local_filesystem_jar,
        resolve_delta_jars,
    )

    jars = resolve_delta_jars()
    print("Delta Lake jars ready:\n  " + "\n  ".join(str(j) for j in jars))
    if (localfs := local_filesystem_jar()) is not None:
        print(f"local file system without a process per file: {localfs}")
    if (archive := class_archive()) is not None:
        print(f"archive of Spark's classes for faster JVM starts: {archive}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from order_pipeline.common.runlock import RunLocked

    if args.watch:
        return watch_data_root(args)
    ctx = local_context(args.data_root)
    command = "order-pipeline run" + (f" --task {args.task}" if args.task else "")
    try:
        with hold_data_root(args, ctx, command, ctx.run_id):
            return run_job_graph(args, ctx)
    except RunLocked as exc:
        return refused(exc)


def watch_data_root(args: argparse.Namespace) -> int:
    """`run --watch` (cli/watch.py): poll, and run the graph when a task has work."""
    from order_pipeline.cli.runner import bundle_variables, load_job_graph, pending_tasks
    from order_pipeline.cli.watch import watch
    from order_pipeline.common.runlock import RunLocked, run_lock

    if args.full_refresh:
        raise SystemExit("--watch and --full-refresh do not go together: refresh once, then watch")
    ctx = local_context(args.data_root)
    graph = load_job_graph()
    variables = bundle_variables(graph.source.parent.parent, ctx.profile)
    task_args = ["--data-root", args.data_root]
    print(
        f"watching {ctx.profile.landing_root} and the tables of {args.data_root} every "
        f"{args.interval:g}s for {args.task or graph.name} (Ctrl-C stops)"
    )

    def poll():
        with run_lock(ctx.profile, command="order-pipeline run --watch (poll)", run_id=ctx.run_id):
            return pending_tasks(graph, variables, job_parameters(args), task_args, args.task)

    def run_once() -> int:
        run_ctx = local_context(args.data_root)  # each run its own run id
        try:
            with hold_data_root(args, run_ctx, "order-pipeline run --watch", run_ctx.run_id):
                return run_job_graph(args, run_ctx)
        except RunLocked as exc:
            return refused(exc)

    status, _ = watch(poll, run_once, max(args.interval, 0.1), args.max_runs)
    return status


def job_parameters(args: argparse.Namespace) -> dict[str, str]:
    """`run`'s job parameters: --param KEY=VALUE and --as-of."""
    parameters = dict(args.param)
    if args.as_of:
        parameters["as_of"] = args.as_of
    return parameters


def run_job_graph(args: argparse.Namespace, ctx) -> int:
    """`run`, once it holds the data root."""
    from order_pipeline.cli.display import print_table
    from order_pipeline.cli.progress import progress as progress_of
    from order_pipeline.cli.runner import OK, bundle_variables, load_job_graph, run_graph
    from order_pipeline.jobs.task import collected_task_runs

    parameters = job_parameters(args)
    if args.full_refresh:
        if not args.yes:
            if not sys.stdin.isatty():
                raise SystemExit(
                    "--full-refresh drops silver, gold and checkpoints: add --yes to confirm"
                )
            answer = input(
                f"Full refresh rebuilds every table under {args.data_root} from landing. Continue? [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("cancelled")
                return 1
        parameters["full_refresh"] = "true"
    graph = load_job_graph()
    variables = bundle_variables(graph.source.parent.parent, ctx.profile)
    print(f"job {graph.name}: {len(graph.tasks)} tasks from {graph.source}, run {ctx.run_id}")
    total = 1 if args.task else len(graph.tasks)
    with (
        progress_of("run", total) as shown,
        collected_task_runs(ctx.profile),  # one ops_task_runs commit for the whole run
    ):
        outcomes = run_graph(
            graph,
            variables,
            parameters,
            ctx.run_id,
            ["--data-root", args.data_root],
            only=args.task,
            parallel=args.parallel or ctx.profile.parallel_tasks,
            # "[3/9] bronze_orders (order-pipeline-bronze)": the bar says the task's name
            progress=lambda message: shown.log(message) or shown.doing(message.split(" (")[0]),
            on_done=lambda o: shown.advance(f"{o.key}: {o.status} in {o.seconds:.1f}s"),
        )
    print()
    print_table(["task", "status", "seconds", "error"],
                [(o.key, o.status, f"{o.seconds:.1f}", o.error or "") for o in outcomes], width=100)  # fmt: skip
    return 0 if all(o.status in OK for o in outcomes) else 1


def cmd_sql(args: argparse.Namespace) -> int:
    from order_pipeline.cli.display import json_lines, print_df

    if bool(args.query) == bool(args.file):
        raise SystemExit("sql: give a query or --file, not both")
    query = args.file.read_text() if args.file else args.query
    lake, _ = open_lakehouse(args.data_root)
    params = dict(args.param)
    try:
        df = lake.sql(query, params)
    except ValueError as exc:
        raise SystemExit(f"sql: {exc}") from None
    if args.json:
        for line in json_lines(df, args.limit):
            print(line)
    else:
        print_df(df, args.limit, width=60)
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from order_pipeline.cli.display import json_lines, print_df
    from order_pipeline.cli.report import quarantine_rows, quarantine_summary
    from order_pipeline.transforms.personal import MaskKey

    lake, ctx = open_lakehouse(args.data_root)
    if args.entity:
        if args.entity not in ctx.entities:
            raise SystemExit(
                f"--entity {args.entity!r}: not in conf/pipeline.yml ({', '.join(ctx.entities)})"
            )
        mask = None if args.show_personal_data else MaskKey.random()
        df = quarantine_rows(lake, ctx.entities[args.entity], args.rule, args.status, mask=mask)
    else:
        df = quarantine_summary(lake, list(ctx.entities), args.status)
        if args.rule:
            df = df.where(df.rule == args.rule)
    if args.json:
        print("\n".join(json_lines(df, args.limit)))
    else:
        print_df(df, args.limit, width=90)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from order_pipeline.cli.progress import progress
    from order_pipeline.common.contract import OPEN
    from order_pipeline.common.runlock import RunLocked
    from order_pipeline.jobs import replay
    from order_pipeline.jobs.task import run_task

    ctx = local_context(args.data_root, args.entity)
    ctx.entity_spec()
    statuses = tuple(args.status or (OPEN,))
    try:
        with (
            hold_data_root(args, ctx, f"order-pipeline replay {args.entity}", ctx.run_id),
            progress(f"replay {args.entity}", None) as shown,
        ):
            run_task(
                f"replay_{args.entity}",
                ctx,
                lambda s, c: replay.run(s, c, args.rule, statuses, progress=shown.log),
                shown.log,
            )
            shown.advance(f"replay_{args.entity} done")
    except RunLocked as exc:
        return refused(exc)
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from order_pipeline.common.runlock import RunLocked
    from order_pipeline.jobs import erase
    from order_pipeline.jobs.task import run_task

    ctx = local_context(args.data_root)
    try:
        entity = erase.resolve_entity(args.entity, ctx.entities)
    except erase.ErasureRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    request = erase.Erasure(entity.name, args.key, args.reason, args.requested_by)
    try:
        # the key is no personal data (conf/pipeline.yml); the lock file names the command
        with hold_data_root(args, ctx, f"order-pipeline erase {entity.name}", ctx.run_id):
            print("== 1/2 pending work of the job graph, so every stream has read its input ==")
            if run_job_graph(run_arguments(args.data_root), ctx) != 0:
                print("error: the pipeline run failed: nothing was erased", file=sys.stderr)
                return 1
            print("\n== 2/2 erase ==")
            run_task(
                erase.task_name(entity.name), replace(ctx, entity=entity.name),
                lambda s, c: erase.run(s, c, request),
            )  # fmt: skip
    except RunLocked as exc:
        return refused(exc)
    except erase.ErasureRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_arguments(data_root: str) -> argparse.Namespace:
    """`order-pipeline run --data-root D` as the parser reads it: every option at its
    default, for the commands that run the graph themselves (demo, erase)."""
    return build_parser().parse_args(["run", "--data-root", data_root])


def cmd_job_graph(args: argparse.Namespace) -> int:
    from order_pipeline.cli import job_graph
    from order_pipeline.cli.runner import bundle_root
    from order_pipeline.common.config import load_entities

    jobs_yml = bundle_root() / "resources" / "jobs.yml"
    entities = load_entities()
    if args.write:
        changed = job_graph.write(jobs_yml, entities)
        print(
            f"{jobs_yml}: {'tasks rewritten from conf/pipeline.yml' if changed else 'up to date'}"
        )
        return 0
    difference = job_graph.difference(jobs_yml, entities)
    print(difference or f"{jobs_yml}: tasks match conf/pipeline.yml")
    return 1 if difference else 0


def cmd_report(args: argparse.Namespace) -> int:
    from order_pipeline.cli.report import gold_report

    lake, ctx = open_lakehouse(args.data_root)
    if getattr(args, "html", None):
        from order_pipeline.cli.html_report import write_report

        print(f"report written to {write_report(lake, ctx.entities, args.html)}")
        return 0
    print(gold_report(lake, list(ctx.entities)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from order_pipeline.common.runlock import RunLocked

    # held from the start, so a busy data root is refused before any data is generated
    ctx = local_context(args.data_root)
    try:
        with hold_data_root(args, ctx, "order-pipeline demo", run_id=""):
            return demo_steps(args)
    except RunLocked as exc:
        return refused(exc)


def demo_steps(args: argparse.Namespace) -> int:
    """`demo`, once it holds the data root (its `run` step re-enters the lock)."""
    import time

    started = time.monotonic()
    print("== 1/3 generate synthetic data ==")
    if (status := cmd_generate(args)) != 0:
        return status
    print("\n== 2/3 run the workflow (resources/jobs.yml) ==")
    status = cmd_run(run_arguments(args.data_root))
    print("\n== 3/3 report ==")
    from order_pipeline.cli.html_report import write_report
    from order_pipeline.cli.report import gold_report

    lake, ctx = open_lakehouse(args.data_root)
    print(gold_report(lake, list(ctx.entities)))
    page = write_report(lake, ctx.entities, Path(args.data_root) / "report.html")
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s; data under {args.data_root}/")
    print(f"HTML report (open it in a browser): {page}")
    return status


def cmd_generate(args: argparse.Namespace) -> int:
    from order_pipeline.cli import generate

    return generate.run_cli(args)


def cmd_trigger(args: argparse.Namespace) -> int:
    from order_pipeline.cli import trigger

    return trigger.run_cli(args)


COMMANDS = {
    "setup": cmd_setup,
    "generate": cmd_generate,
    "run": cmd_run,
    "sql": cmd_sql,
    "quarantine": cmd_quarantine,
    "replay": cmd_replay,
    "erase": cmd_erase,
    "job-graph": cmd_job_graph,
    "report": cmd_report,
    "demo": cmd_demo,
    "trigger": cmd_trigger,
}


def main(argv: list[str] | None = None) -> int:
    from order_pipeline.common.config import ConfigError
    from order_pipeline.common.spark import SparkSetupError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, SparkSetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
