"""A capture node's redirect index alone, as its own process, for tests of what reaches every node.

    python -m cachetap.testing.index_node NAME KEY...      (settings from CACHETAP_* / CACHETAP_CONFIG)

It keeps a HotIndex in step with the catalog exactly as `cachetap capture` does (capture.index_sync)
and prints one line whenever a KEY enters or leaves it: "<epoch seconds> <key> present|absent",
the first ones once the index was loaded. It runs until killed.
"""

from __future__ import annotations

import sys
import time

from cachetap.capture.hotindex import HotIndex
from cachetap.capture.index_sync import IndexSync
from cachetap.settings import load_settings
from cachetap.tasks.app import create_app


def main(name: str, keys: list[str]) -> None:
    settings = load_settings()
    app = create_app(settings)
    index = HotIndex()
    IndexSync(app, index, node=name, reconcile_every=settings.index_reconcile_interval).start().ready.wait()
    shown: dict[str, bool] = {}
    while True:
        for key in keys:
            present = index.contains(key)
            if shown.get(key) != present:
                print(f"{time.time():.3f} {key} {'present' if present else 'absent'}", flush=True)
                shown[key] = present
        time.sleep(0.005)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
