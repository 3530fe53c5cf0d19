"""Which files of megaconcept/model an export ships: the modules its HF classes import, and no others.

trust_remote_code loads the auto_map's modules from the folder, and they import their siblings relatively,
so the folder needs the transitive closure of those imports. Modules the classes never import (the GGUF warm
start, the tensor-parallel split plan, the chunked LM loss of training) are outside it and stay out of exports.
transformers' own `save_pretrained` / `push_to_hub` of a model loaded from the folder copies the same closure
(its get_relative_import_files), so a fine-tuned model a user pushes carries the same files.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable


def sibling_imports(path: Path) -> set[str]:
    """Module names of the same package that the file imports (`from .x import y`, `from . import x`),
    wherever the import sits (a function-level import needs its file shipped too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if node.level > 1:
            # Outside the package: a flat export folder cannot hold it (tests/unit/test_layout_rules.py).
            raise ValueError(f"{path} imports {'.' * node.level}{node.module or ''}, which an exported folder cannot "
                             f"ship; model code may import only torch, transformers, the stdlib and its siblings")
        found.update([node.module.split(".")[0]] if node.module else (alias.name for alias in node.names))
    return found


def code_closure(package_dir: Path, entry_modules: Iterable[str]) -> list[str]:
    """File names (`name.py`) of `entry_modules` and of every sibling they import, transitively, sorted."""
    todo, seen = list(entry_modules), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = package_dir / f"{name}.py"
        if not path.is_file():
            raise ValueError(f"{package_dir} has no {name}.py, which the exported model code imports")
        seen.add(name)
        todo.extend(sibling_imports(path) - seen)
    return sorted(f"{name}.py" for name in seen)
