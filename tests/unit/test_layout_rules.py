"""DESIGN.md rules that code review alone would let slip: import boundaries and unit sizes."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("megaconcept", "data_prep", "launchers", "evals") for p in (ROOT / d).rglob("*.py")]

# package -> module prefixes it must never import
FORBIDDEN = {
    "megaconcept/model": ("megaconcept.train", "megaconcept.parallel", "deepspeed", "megatron",
                          "..train", "..parallel", "..data", "..objectives", "..config"),
    "megaconcept/parallel": ("megaconcept.train", "..train"),
    "megaconcept/export": ("megaconcept.train", "..train", "megaconcept.parallel", "..parallel"),
    # evals may read the shard format and run configs (concept analysis, efficiency) but nothing of training.
    "evals": ("megaconcept.train", "megaconcept.parallel", "megaconcept.data.loader", "megaconcept.data.tokenizer",
              "megaconcept.objectives"),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_boundaries(package):
    bad = [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in (ROOT / package).rglob("*.py")
        for name in _imports(p)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
    ]
    assert not bad, bad


def test_model_files_import_only_torch_transformers_and_siblings():
    # Exported HF folders carry these files flat: anything else would break trust_remote_code loading.
    allowed = ("torch", "transformers", "math", "dataclasses", "typing", "__future__", "functools", "importlib", "pathlib")
    for p in (ROOT / "megaconcept" / "model").glob("*.py"):
        for name in _imports(p):
            ok = name.startswith(".") and name.count(".") == 1 or name.split(".")[0] in allowed or name == "."
            assert ok, f"{p.name} imports {name}"


def test_unit_sizes():
    big_files, big_funcs = [], []
    for p in SOURCES:
        src = p.read_text()
        if src.count("\n") > 500:
            big_files.append(str(p.relative_to(ROOT)))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > 60:
                    big_funcs.append(f"{p.relative_to(ROOT)}:{node.name}")
    assert not big_files and not big_funcs, (big_files, big_funcs)
