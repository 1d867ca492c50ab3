"""One running stack shared by the console's tests (cachetap.testing.console)."""

from __future__ import annotations

import pytest

from cachetap.testing.console import console_stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory):
    with console_stack(tmp_path_factory.mktemp("console") / "cache") as running:
        yield running
