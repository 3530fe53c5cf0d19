"""Pretrain a concept encoder.

    deepspeed [--num_gpus N] launchers/pretrain.py --ds_config ds_configs/zero3.json [--config RECIPE.yaml] [key=value ...]
    torchrun --standalone --nproc_per_node N launchers/pretrain.py ...   (also: srun under SLURM)

With no --config it runs the embedded demo recipe (the config defaults). Re-running with the same
run_dir resumes from its latest checkpoint.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ds_config", "--ds-config", default="ds_configs/zero3.json", help="ZeRO settings JSON")
    parser.add_argument("--config", default=None, help="recipe YAML (default: the embedded demo recipe)")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its default and exit")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, so the registry entries it adds (objectives, decoders, masking "
                             "strategies, ...) can be named in the config; repeatable; pass it again on resume")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from megaconcept.config import ConfigError, load_config
    from megaconcept.config.loader import flat_keys

    if args.help_config:
        print("\n".join(flat_keys()))
        return 0
    for module in args.plugin:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            print(f"error: --plugin {module} cannot be imported ({exc}); give an importable module path "
                  "(its folder on PYTHONPATH)", file=sys.stderr)
            return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from megaconcept.train.run import run

    return run(cfg, args.ds_config)


if __name__ == "__main__":
    sys.exit(main())
