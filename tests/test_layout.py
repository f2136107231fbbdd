"""The dependency direction of docs/design.md §2: align -> evol -> rank; rank is standard library only."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def _module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported at module level (not inside functions)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import):
                    names |= {a.name.split(".")[0] for a in sub.names}
                elif isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
                    names.add(sub.module.split(".")[0])
    return names


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_rank_imports_only_stdlib_at_module_level():
    for f in (ROOT / "rank").rglob("*.py"):
        bad = _module_level_imports(f) - STDLIB - {"rank"}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad} at module level"


def test_rank_never_imports_align_or_evol():
    for f in (ROOT / "rank").rglob("*.py"):
        bad = _all_imports(f) & {"align", "evol", "torch", "transformers"}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_evol_never_imports_align_or_torch():
    for f in (ROOT / "evol").rglob("*.py"):
        bad = _all_imports(f) & {"align", "torch", "transformers", "trl", "deepspeed"}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_importing_rank_loads_no_torch():
    code = ("import sys, rank.records, rank.sandbox, rank.strategies, rank.extract, rank.execute; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_importing_config_and_recipe_cli_is_light():
    code = "import sys, align.config_loader, align.recipes.cli, align.recipes.loop_config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# Package code writes files through rank.records (write_atomic / write_jsonl / atomic_file), so a killed
# run never leaves half an artifact. These calls write in place; each allowed use says why.
_IN_PLACE_WRITES = (".write_text(", ".write_bytes(", "os.replace(", "os.rename(", "json.dump(", "mkstemp(")
_ALLOWED_WRITES = {
    "rank/records.py": "the one atomic writer",
    "align/tiny.py": "renames a whole finished build directory into the cache (os.replace of a directory)",
    "rank/sandbox/server.py": "writes no artifact: moves a candidate's nested directories up while emptying /tmp",
}


def test_one_atomic_writer():
    offenders = []
    for pkg in ("align", "evol", "rank"):
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).as_posix()
            if rel in _ALLOWED_WRITES:
                continue
            for n, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if "/proc/" in code:          # kernel interfaces (the sandbox's uid_map), not artifacts
                    continue
                if any(w in code for w in _IN_PLACE_WRITES) or re.search(r"open\([^)]*['\"][wax]b?['\"]", code):
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "write artifacts with rank.records.write_atomic / write_jsonl:\n" + "\n".join(offenders)


def test_the_repository_cites_only_its_own_design_document():
    """Docstrings and docs cite docs/design.md (and sections it has), never a document outside the repository."""
    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs/design.md").read_text(), re.M))
    bad = []
    files = [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md")]
    files += [f for pkg in ("align", "evol", "rank", "tests", "bench") for f in (ROOT / pkg).rglob("*.py")]
    for f in files:
        if f == Path(__file__):
            continue
        text = f.read_text()
        bad += [f"{f.relative_to(ROOT)}: {m}" for m in re.findall(r"DESIGN\.md|STACK-NOTES|INTERFACES|CONTRACTS\.md", text)]
        bad += [f"{f.relative_to(ROOT)}: §{n} (no such section)"
                for n in re.findall(r"docs/design\.md §(\d+)", text) if n not in sections]
    assert not bad, "\n".join(bad)
