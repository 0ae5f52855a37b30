"""The README's "Inside" table is the floor plan, and the code keeps it.

Each row of the table names files and their floor. A file may import only from files on lower
floors: files on one floor stand side by side (the article's components never import each
other), and a package's own files (minisd/schedulers/) may import each other without a circle.
Every file of minisd/ has a row, and every row names a file that exists.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minisd"


def inside_table():
    """{path relative to minisd/ (a package as "name/"): floor} from the README's Inside table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Inside", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for floor, files in re.findall(r"^\| *(\d+) *\| *([^|]+)\|", section, re.MULTILINE):
        for path in re.findall(r"`minisd/([\w/]+(?:\.py)?/?)`", files):
            floors[path] = int(floor)
    return floors


def module_files():
    """Every Python file of the package, relative to minisd/."""
    return sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py"))


def row_of(path, floors):
    """The table row a file belongs to: its own, or its package's ("schedulers/")."""
    return path if path in floors else path.split("/")[0] + "/"


def imported_files(path):
    """The package files that `path` (relative to minisd/) imports, anywhere in it (function bodies too)."""
    tree = ast.parse((PACKAGE / path).read_text())
    here = Path(path).parent
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here
            for _ in range(node.level - 1):
                base = base.parent
            target = base / node.module.replace(".", "/") if node.module else base
            names = [target / alias.name for alias in node.names]  # submodules: `from . import ops`
            names += [target] if node.module else []
            found |= {resolve(name) for name in names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            found |= {resolve(Path(*m.split(".")[1:])) for m in modules if m and m.split(".")[0] == "minisd"}
    return {file for file in found if file} - {path}


def resolve(target):
    """A dotted import's target as a file relative to minisd/ (a module or a package's __init__.py)."""
    for candidate in (f"{target}.py", f"{target}/__init__.py"):
        if (PACKAGE / candidate).is_file():
            return str(Path(candidate))
    return None  # a name inside a module (from . import load): its module was counted


def test_every_file_is_in_the_table_and_every_row_exists():
    floors = inside_table()
    assert floors, "README.md has no Inside table with floors"
    rows = {row_of(path, floors) for path in module_files()}
    assert rows <= set(floors), f"files missing from README's Inside table: {sorted(rows - set(floors))}"
    assert set(floors) <= rows, f"rows naming no file: {sorted(set(floors) - rows)}"


@pytest.mark.parametrize("path", module_files())
def test_imports_go_down(path):
    floors = inside_table()
    mine = row_of(path, floors)
    for target in imported_files(path):
        theirs = row_of(target, floors)
        if theirs == mine and mine.endswith("/"):
            continue  # inside one package: checked for circles below
        assert floors[theirs] < floors[mine], (
            f"minisd/{path} (floor {floors[mine]}) imports minisd/{target} (floor {floors[theirs]}): "
            "a file may import only from lower floors"
        )


def test_no_circles():
    graph = {path: imported_files(path) for path in module_files()}
    done, active = set(), []

    def visit(path):
        if path in active:
            raise AssertionError(f"import circle: {' -> '.join([*active[active.index(path) :], path])}")
        if path not in done:
            active.append(path)
            for target in graph[path]:
                visit(target)
            active.pop()
            done.add(path)

    for path in graph:
        visit(path)


def test_the_check_sees_upward_imports(tmp_path, monkeypatch):
    """The parser finds relative, absolute, package and function-body imports."""
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path)
    (tmp_path / "sub").mkdir()
    for name in ("a.py", "b.py", "c.py", "sub/__init__.py", "sub/d.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "a.py").write_text("from . import b\nfrom .sub import d\ndef f():\n    import minisd.c\n")
    (tmp_path / "sub" / "d.py").write_text("from .. import a\nfrom . import x\n")
    assert imported_files("a.py") == {"b.py", "sub/__init__.py", "sub/d.py", "c.py"}
    assert imported_files("sub/d.py") == {"a.py"}
