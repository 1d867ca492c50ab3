"""The app Celery's command line finds: `celery -A cachetap worker -Q analyze -c 2`.

Settings come from CACHETAP_CONFIG (a TOML file) and CACHETAP_* variables. A bad configuration
stops the process with the ConfigError's lines on stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

import sys

from cachetap.privileges import die_with_supervisor
from cachetap.settings import ConfigError, load_settings
from cachetap.tasks.app import create_app

die_with_supervisor()  # a worker or beat started by `cachetap run` stops with it

try:
    app = create_app(load_settings())
except ConfigError as exc:
    sys.stderr.write(f"cachetap: bad configuration:\n{exc}\n")
    raise SystemExit(2) from None
