"""Entry point: seeded synthetic data into the landing folder (``order-pipeline generate``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from order_pipeline.synthetic.generator import (
    ENTITIES,
    GeneratorConfig,
    generate,
    manifest_path,
    read_manifest,
)


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from exc


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the generator's options (the caller adds --data-root)."""
    defaults = GeneratorConfig(landing=Path("."))
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="0 = full initial load; k > 0 = the k-th increment (default %(default)s)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=defaults.scale,
        help="scale factor: 1.0 = 10k customers, 1k products, 100k orders (default %(default)s)",
    )
    parser.add_argument("--customers", type=int, help="number of customers (overrides --scale)")
    parser.add_argument("--products", type=int, help="number of products (overrides --scale)")
    parser.add_argument("--orders", type=int, help="number of orders (overrides --scale)")
    parser.add_argument(
        "--files",
        type=int,
        default=defaults.files_per_entity,
        help="files per entity and batch (default %(default)s)",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=defaults.fault_rate,
        help="share of lines that are deliberate faults (default %(default)s)",
    )
    parser.add_argument(
        "--delete-rate",
        type=float,
        default=defaults.delete_rate,
        help="share of lines followed by a delete of their key (default %(default)s)",
    )
    parser.add_argument(
        "--increment-ratio",
        type=float,
        default=defaults.increment_ratio,
        help="size of an increment as a share of batch 0 (default %(default)s)",
    )
    parser.add_argument(
        "--end-date",
        type=_iso_date,
        help="last day of batch 0, YYYY-MM-DD (default: for --batch 0 today UTC; for an "
        "increment the end date of batch 0's manifest if there is one, else today UTC)",
    )
    parser.add_argument(
        "--months",
        type=int,
        default=defaults.months,
        help="months of orders in batch 0 (default %(default)s)",
    )
    parser.add_argument("--landing", help="landing folder (default <data-root>/landing)")


def _end_date(args: argparse.Namespace, landing: Path) -> date | None:
    """An increment continues batch 0, so by default it reuses batch 0's end date."""
    if args.end_date is not None or args.batch <= 0:
        return args.end_date
    base = read_manifest(landing, args.seed, 0)
    if base is None:
        return None
    end_date = date.fromisoformat(base["end_date"])
    print(f"end date {end_date} taken from batch 0's manifest")
    return end_date


def run_cli(args: argparse.Namespace, console: Any = None) -> int:
    """``generate``; ``console``: a rich Console to draw the progress bar on (default: a bar
    when stdout is a terminal, plain lines otherwise)."""
    from order_pipeline.cli.progress import progress

    landing = Path(args.landing) if args.landing else Path(args.data_root) / "landing"
    options = {
        "landing": landing,
        "seed": args.seed,
        "batch": args.batch,
        "scale": args.scale,
        "customers": args.customers,
        "products": args.products,
        "orders": args.orders,
        "files_per_entity": args.files,
        "fault_rate": args.fault_rate,
        "delete_rate": args.delete_rate,
        "increment_ratio": args.increment_ratio,
        "months": args.months,
    }
    try:
        end_date = _end_date(args, landing)
        config = GeneratorConfig(**options, **({"end_date": end_date} if end_date else {}))
    except ValueError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    print(
        f"generating batch {config.batch} of seed {config.seed} into {landing} "
        f"(end date {config.end_date}, {config.count('orders'):,} orders in batch 0)"
    )
    started = time.perf_counter()
    # the generator says what it did per entity once the batch is written: until then the
    # bar pulses (it reports no finer progress)
    try:
        with progress(f"generate batch {config.batch}", None, console=console) as shown:
            manifest = generate(config, progress=shown.log)
            shown.advance(f"batch {config.batch} written")
    except FileExistsError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started

    total = sum(manifest["counts"][e]["lines"] for e in ENTITIES)
    skipped = sum(f["skipped"] for f in manifest["files"])
    print(
        f"batch {config.batch}: {total:,} lines in {seconds:.1f} s ({total / seconds:,.0f} lines/s)"
    )
    for entity in ENTITIES:
        print(f"  {entity:<12} {manifest['counts'][entity]['lines']:>12,} lines")
    kinds: Counter[str] = Counter()
    for entity in ENTITIES:
        kinds.update(manifest["counts"][entity]["faults"])
    print(f"faults: {sum(kinds.values()):,}")
    for kind, n in sorted(kinds.items()):
        print(f"  {kind:<22} {n:>8,}")
    if skipped:
        print(f"{skipped} of {len(manifest['files'])} files were already landed and skipped")
    print(f"manifest: {manifest_path(landing, config.seed, config.batch)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="order-pipeline-generate",
        description="Write seeded synthetic customers, products, orders and line items "
        "as JSON Lines into the landing folder.",
    )
    parser.add_argument(
        "--data-root", default=".local", help="local data root (default %(default)s)"
    )
    configure_parser(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
