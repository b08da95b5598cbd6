"""Start a local test server by hand, for trying icechunk_dask on object storage.

Usage (from the repository root, in the project's venv)::

    python -m tests.servers seaweedfs [--dir DIR] [--minutes 60]
    python -m tests.servers azurite [--dir DIR] [--minutes 60]

It starts the server on 127.0.0.1, creates a bucket (container), prints the
shell ``export`` lines and the URL to use, and runs until Ctrl-C, SIGTERM or the
time limit; then it stops the server by PID.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from tests.servers._azurite import start_azurite
from tests.servers._seaweed import start_seaweed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers", description=__doc__)
    parser.add_argument("server", choices=["seaweedfs", "azurite"])
    parser.add_argument("--dir", type=Path, help="data directory (default: a new temp dir)")
    parser.add_argument("--minutes", type=float, default=60.0, help="stop after this long")
    args = parser.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix=f"icd-{args.server}-"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.server == "seaweedfs":
        s3 = start_seaweed(root)
        bucket = s3.create_bucket("icechunk-dask")
        exports = s3.env()
        url = f"s3://{bucket}/demo"
        stopper = s3.stop
    else:
        az = start_azurite(root)
        container = az.create_container("icechunk-dask")
        exports = {
            "AZURE_STORAGE_ACCOUNT_NAME": az.account_name,
            "AZURE_STORAGE_ACCOUNT_KEY": az.account_key,
            "AZURE_STORAGE_ENDPOINT": az.endpoint,
            "AZURE_ALLOW_HTTP": "true",
        }
        url = f"az://{container}/demo"
        stopper = az.stop
    try:
        for name, value in exports.items():
            print(f"export {name}={value}")
        print(f"# repository URL: {url}   (data in {root}; Ctrl-C stops the server)")
        sys.stdout.flush()
        stop.wait(args.minutes * 60)
    except KeyboardInterrupt:
        pass
    finally:
        stopper()
    return 0


if __name__ == "__main__":
    sys.exit(main())
