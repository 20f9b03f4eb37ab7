"""Argument types the command line shares."""

from __future__ import annotations

import argparse


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as an argparse type (the value may itself hold ``=``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def add_parameters(parser: argparse.ArgumentParser, help: str) -> None:
    """A repeatable ``--param KEY=VALUE``; ``dict(args.param)`` gives them."""
    parser.add_argument(
        "--param", action="append", default=[], type=key_value, metavar="KEY=VALUE", help=help
    )
