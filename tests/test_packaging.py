"""Every third-party import the package makes is a declared install dependency."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

from tests.conftest import REPO_ROOT


def imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for path in (REPO_ROOT / "detseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"detseg", "__future__"}


def declared_requirements(extra: str | None = None) -> set[str]:
    reqs = importlib.metadata.requires("detseg") or []
    chosen = set()
    for req in reqs:
        marker_extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if (marker_extra.group(1) if marker_extra else None) == extra:
            chosen.add(re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0].lower().replace("_", "-"))
    return chosen


def test_every_import_is_a_declared_dependency():
    module_to_dists = importlib.metadata.packages_distributions()
    runtime = declared_requirements()
    optional = declared_requirements("onnx") | declared_requirements("jax") | declared_requirements("kerascv")
    missing = {}
    for module in imported_top_level_modules():
        dists = {d.lower().replace("_", "-") for d in module_to_dists.get(module, [module])}
        if not dists & (runtime | optional):
            missing[module] = sorted(dists)
    assert not missing, f"imports without a declared dependency: {missing}"


def test_console_script_points_at_cli_main():
    scripts = [
        ep for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "detseg"
    ]
    assert [ep.value for ep in scripts] == ["detseg.cli:main"]
