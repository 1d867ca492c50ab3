"""`python -m cachetap.web --dir DIR [--origin URL] [--host H] [--port P] [--processes N]`

Serve a plain directory with the cache server (benchmarks, tests, quick mirrors). Prints
`listening on http://HOST:PORT` once every worker is ready.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cachetap.web.lookup import DirectoryLookup
from cachetap.web.workers import run_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cachetap.web", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="directory to serve")
    parser.add_argument("--origin", default=None, help="URL the directory mirrors (redirect target for missing files)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--max-connections-per-address", type=int, default=512,
                        help="connections from one client address at most (benches from 127.0.0.1 raise it)")
    parser.add_argument("--list", action="store_true", help="print the URL path of every file and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(message)s")
    try:
        lookup = DirectoryLookup(args.dir, origin_base=args.origin)
    except NotADirectoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for relative in sorted(lookup.entries().values()):
            print(lookup.url_path(relative), relative)
        return 0

    def announce(port: int) -> None:
        print(f"listening on http://{args.host}:{port}", flush=True)

    run_server(args.host, args.port, lookup, processes=args.processes, on_ready=announce,
               max_connections_per_address=args.max_connections_per_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
