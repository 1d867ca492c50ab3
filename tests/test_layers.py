"""The layer order of docs/internals.md, checked on every import of every module (inside functions and
`if TYPE_CHECKING:` blocks too): a module may import its own package and the layers below it, nothing
beside or above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cachetap

ROOT = Path(cachetap.__file__).parent

# Bottom to top; one tuple per layer. Packages of one layer are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("", "core"),                  # "": the package itself (__init__: the version)
    ("settings", "lifetime", "logs"),
    ("privileges", "reloading", "metrics"),
    ("store",),
    ("fetch", "web"),
    ("wire",),
    ("capture",),
    ("tasks", "supervisor", "simulate"),
    ("console",),                  # the operator console: reads the catalog, acts through tasks/
    ("cli", "testing"),
    ("__main__", "celery"),        # entry points: `python -m cachetap`, `celery -A cachetap`
)
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """The layer part of a dotted cachetap module name ("cachetap.store.db" -> "store")."""
    names = module.split(".")
    assert names[0] == "cachetap", module
    return names[1] if len(names) > 1 else ""


def module_name(path: Path, root: Path = ROOT) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    names = list(relative.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every cachetap import anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name == "cachetap":  # `from cachetap import wire` imports the module cachetap.wire
                found += [(node.lineno, f"cachetap.{alias.name}") for alias in node.names
                          if (root / f"{alias.name}.py").exists() or (root / alias.name).is_dir()]
            else:
                found.append((node.lineno, name))
    return [(line, name) for line, name in found if name == "cachetap" or name.startswith("cachetap.")]


def violations(path: Path, root: Path = ROOT) -> list[str]:
    own = part_of(module_name(path, root))
    found = []
    for line, name in imported_modules(path, root):
        target = part_of(name)
        if target == own or (target == "" and name == "cachetap"):
            continue
        if LEVEL[target] >= LEVEL[own]:
            where = "above" if LEVEL[target] > LEVEL[own] else "beside"
            found.append(f"{path.relative_to(root.parent)}:{line} imports {name} ({target!r} is {where} {own!r})")
    return found


MODULES = sorted(p for p in ROOT.rglob("*.py") if "migrations" not in p.parts)


def test_every_package_has_a_layer():
    parts = {part_of(module_name(p)) for p in MODULES}
    assert parts <= set(LEVEL), f"give these a layer in LAYERS and docs/internals.md: {parts - set(LEVEL)}"


def test_no_import_runs_upward_or_sideways():
    found = [v for path in MODULES for v in violations(path)]
    assert not found, "\n".join(found)


def test_core_uses_the_standard_library_only():
    import sys

    found = []
    for path in (ROOT / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "cachetap":
                    found.append(f"{path.name}:{node.lineno} imports {name}")
    assert not found, found


@pytest.mark.parametrize("source, expected", [
    ("from cachetap.tasks.app import create_app\n", "imports cachetap.tasks.app ('tasks' is above 'capture')"),
    ("def f():\n    from cachetap.cli.main import cli\n", "imports cachetap.cli.main ('cli' is above 'capture')"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cachetap.tasks\n", "imports cachetap.tasks"),
    ("from ..tasks import app\n", "imports cachetap.tasks"),
    ("from cachetap import tasks\n", "imports cachetap.tasks"),
])
def test_the_check_catches_upward_imports_wherever_they_hide(tmp_path, source, expected):
    fake_root = tmp_path / "cachetap"
    (fake_root / "capture").mkdir(parents=True)
    (fake_root / "tasks").mkdir()
    module = fake_root / "capture" / "bad.py"
    module.write_text(source)
    (found,) = violations(module, fake_root)
    assert expected in found


def test_lower_and_own_layer_imports_pass(tmp_path):
    fake_root = tmp_path / "cachetap"
    (fake_root / "capture").mkdir(parents=True)
    module = fake_root / "capture" / "good.py"
    module.write_text("from cachetap.core.keys import cache_key\nfrom cachetap.wire import send\n"
                      "from cachetap.capture import pipeline\nfrom . import redirector\nimport cachetap\n")
    assert violations(module, fake_root) == []
