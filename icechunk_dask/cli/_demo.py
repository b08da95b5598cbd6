"""``icechunk-dask demo``: the end-to-end demo (imports xarray and distributed when it runs)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from icechunk_dask._demo import DemoOptions, format_result, run_demo, stdout_is_terminal
from icechunk_dask.cli._open import storage_of

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit status 0 if the data read back identical."""
    progress = args.progress if args.progress is not None else stdout_is_terminal()
    extra = ""
    if args.endpoint_url:
        extra += f" --endpoint-url {shlex.quote(args.endpoint_url)}"
    if args.region:
        extra += f" --region {shlex.quote(args.region)}"
    if args.allow_http:
        extra += " --allow-http"
    if args.anonymous:
        extra += " --anonymous"
    opts = DemoOptions(
        storage=storage_of(args, must_exist=False),
        location=args.location,
        location_options=extra,
        size_mb=args.size_mb,
        chunk_mb=args.chunk_mb,
        workers=args.workers,
        threads=args.threads,
        memory_limit=args.memory_limit,
        progress=progress and not args.json,
    )

    def echo(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    result = run_demo(opts, echo=echo)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_result(result))
    return 0 if result.verified else 1
