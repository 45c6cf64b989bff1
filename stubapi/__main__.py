"""Command line entry point: ``python -m stubapi --host 127.0.0.1 --port 8900``."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence

from stubapi.faults import DEFAULT_REJECT_SUBSTRING
from stubapi.server import serve
from stubapi.vectors import DEFAULT_DIMENSIONS


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Argument parser whose defaults come from the STUB_API_* environment variables."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m stubapi",
        description="OpenAI-compatible embeddings stub server.",
        # Each option's default (from its STUB_API_* variable when set) in --help.
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=f"A text containing the reject marker ({DEFAULT_REJECT_SUBSTRING!r} unless "
        "--reject-substring says otherwise) makes its whole call fail with 400, as an API "
        "refusing content would: the workers then split the call and that text fails alone. "
        "Faults (an error status, a hang) are injected at run time with POST /_stub/faults.",
    )
    # String defaults go through ``type`` too, so a malformed env value gets a clean usage error.
    parser.add_argument(
        "--host", default=env("STUB_API_HOST", "127.0.0.1"), help="bind address (STUB_API_HOST)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=env("STUB_API_PORT", "8900"),
        help="0 picks a free port (STUB_API_PORT)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=env("STUB_API_LATENCY_MS", "50"),
        help="delay per call (STUB_API_LATENCY_MS)",
    )
    parser.add_argument(
        "--dimensions",
        type=int,
        default=env("STUB_API_DIMENSIONS", str(DEFAULT_DIMENSIONS)),
        help="default vector size (STUB_API_DIMENSIONS)",
    )
    parser.add_argument(
        "--api-key",
        default=env("STUB_API_KEY"),
        help="require 'Authorization: Bearer KEY' (STUB_API_KEY)",
    )
    parser.add_argument(
        "--reject-substring",
        default=env("STUB_API_REJECT_SUBSTRING", DEFAULT_REJECT_SUBSTRING),
        help="the reject marker: an input containing it makes the whole call fail with 400 "
        "(STUB_API_REJECT_SUBSTRING)",
    )
    parser.add_argument(
        "--rpm",
        type=_non_negative_int,
        default=env("STUB_API_RPM", "0"),
        help="account requests per minute, 0 for no limit (STUB_API_RPM)",
    )
    parser.add_argument(
        "--tpm",
        type=_non_negative_int,
        default=env("STUB_API_TPM", "0"),
        help="account tokens per minute, 0 for no limit (STUB_API_TPM)",
    )
    parser.add_argument(
        "--limit-window-s",
        type=_positive_seconds,
        default=env("STUB_API_LIMIT_WINDOW_S", "1"),
        help="window in which a per-minute limit is enforced pro rata (STUB_API_LIMIT_WINDOW_S)",
    )
    parser.add_argument(
        "--batch-delay-s",
        type=float,
        default=env("STUB_API_BATCH_DELAY_S", "0.5"),
        help="seconds a Batch API batch takes from validating to completed "
        "(STUB_API_BATCH_DELAY_S)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request at DEBUG level")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and serve until SIGINT/SIGTERM."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        serve(
            args.host,
            args.port,
            args.latency_ms,
            args.dimensions,
            args.api_key,
            args.reject_substring,
            rpm=args.rpm,
            tpm=args.tpm,
            limit_window_s=args.limit_window_s,
            batch_delay_s=args.batch_delay_s,
        )
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        parser.exit(1, f"stub API failed to start: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
