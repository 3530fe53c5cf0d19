"""`python -m megaconcept.export CHECKPOINT OUT_DIR [--push-to-hub REPO] [--private] [--dtype fp32|bf16]`."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .checkpoint import ExportError
from .exporter import export_checkpoint
from .hf_folder import DTYPES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megaconcept.export",
        description="Export a megaconcept training checkpoint (any ZeRO stage) to a Hugging Face folder "
                    "loadable with trust_remote_code=True.",
    )
    parser.add_argument("checkpoint", help="checkpoint tag dir (…/checkpoints/step_XXXXXXXX), or a run dir / "
                                           "checkpoints dir (its `latest` checkpoint is used)")
    parser.add_argument("out_dir", help="output folder (created; must be empty, or a previous export with "
                                        "--overwrite; never a run, checkpoint or shard dir, nor inside one)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weight dtype to save (default fp32)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR when it holds a previous export (recognised by its megaconcept_export.json)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repo (user/name)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private (with --push-to-hub)")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        parser.error("--private only applies with --push-to-hub REPO")
    if args.push_to_hub is not None and args.push_to_hub.count("/") != 1:
        parser.error(f"--push-to-hub expects a repo id of the form user/name, got {args.push_to_hub!r}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out_dir, args.dtype, args.overwrite, args.push_to_hub)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.push_to_hub:
        from .hub import push_folder

        url = push_folder(out, args.push_to_hub, args.private)
        print(f"pushed {out} -> {url}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
