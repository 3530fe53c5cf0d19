"""The checkpoint format, in one place: file names, markers, the layout record and parameter-name rules.

Written by megaconcept.train.checkpointer, read by megaconcept.export (and nothing else re-derives it):

    RUN_DIR/checkpoints/latest            tag of the newest complete checkpoint (atomically replaced)
    RUN_DIR/checkpoints/step_XXXXXXXX/    DeepSpeed tag dir (model/optimizer/scheduler shards per rank)
        trainer_state.json                global counters (rank 0)
        rank_XXXXX.pt                     each rank's RNG streams and data position
        config.yaml                       resolved run config
        tokenizer/                        the tokenizer the run trained with
        pipeline_layers.json              pipeline runs: {layer index: {key in its file: parameter name}}
        COMPLETE                          written last, after every rank finished: the layout record

Parameter names are the trained module's: `model.<canonical model name>` and `objectives.<term or weighting
state>`. The export keeps `model.*` (prefix removed) and drops `objectives.*` by rule. Checkpoints written
before objectives composed hold the model's names without a prefix; they read the same way.
"""
from __future__ import annotations

from typing import Any, Mapping, TypeVar

COMPLETE = "COMPLETE"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer"
PIPELINE_LAYERS = "pipeline_layers.json"
TAG_PREFIX = "step_"
MODEL_PREFIX = "model."
OBJECTIVES_PREFIX = "objectives."

V = TypeVar("V")


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


RANK_GLOB = "rank_*.pt"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def layout_record(world_size: int, tensor: int, pipeline: int, data: int) -> dict[str, int]:
    """What COMPLETE holds: the process layout the checkpoint was written with."""
    return {"world_size": world_size, "tensor": tensor, "pipeline": pipeline, "data": data}


def read_layout(record: Mapping[str, Any]) -> dict[str, int]:
    """A COMPLETE record with the defaults of older checkpoints (pure data parallel) filled in."""
    world = int(record["world_size"])
    return layout_record(world, int(record.get("tensor", 1)), int(record.get("pipeline", 1)),
                         int(record.get("data", world)))


def split_trained_names(weights: Mapping[str, V]) -> tuple[dict[str, V], list[str]]:
    """Trained-module weights -> (the model's weights under canonical names, the objective-owned names dropped)."""
    model: dict[str, V] = {}
    dropped: list[str] = []
    for name, value in weights.items():
        if name.startswith(OBJECTIVES_PREFIX):
            dropped.append(name)
        else:
            model[name[len(MODEL_PREFIX):] if name.startswith(MODEL_PREFIX) else name] = value
    return model, sorted(dropped)
