"""Config loading: defaults, recipes, overrides, one-line errors, DeepSpeed config ownership."""
import json

import pytest

from megaconcept.config import ConfigError, config_from_yaml_text, load_config, to_yaml
from megaconcept.config.deepspeed import DeepSpeedConfigError, build_deepspeed_config


def test_defaults_are_the_demo_recipe():
    cfg = load_config()
    assert cfg.data.shards == "data/shards/demo" and cfg.train.precision == "auto"


def test_recipe_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_steps: 7\nmodel:\n  dropout: 0.2\n")
    cfg = load_config(str(recipe), ["train.max_steps=9", "run_dir=/tmp/x"])
    assert cfg.train.max_steps == 9 and cfg.model.dropout == 0.2 and cfg.run_dir == "/tmp/x"


def test_yaml_round_trip():
    cfg = load_config(None, ["seed=5", "train.betas=[0.9,0.95]"])
    assert config_from_yaml_text(to_yaml(cfg)) == cfg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.maxsteps=3", "unknown config key 'train.maxsteps'"),
        ("nope.x=1", "unknown config key"),
        ("train.max_steps=abc", "train.max_steps"),
        ("train.max_steps=0", "train.max_steps=0 must be positive"),
        ("model.num_heads=3", "not divisible by model.num_heads=3"),
        ("train.precision=fp16", "train.precision='fp16' is not one of"),
        ("objective.masking.rate=1.5", "objective.masking.rate=1.5"),
        ("objective.masking.mask_prob=0.95", "mask_prob + random_prob"),
        ("model.dropout=1.0", "model.dropout=1.0"),
        ("model.decoder=spam", "valid: diffusion, perceiver_mlm"),
        ("model.decoder_positions=spam", "valid: learned, sinusoidal"),
        ("model.attention=spam", "valid: eager, sdpa"),
        ("logging.wandb_mode=cloud", "logging.wandb_mode"),
        ("train.lr=-1", "train.lr=-1"),
        ("train.warmup_steps=-1", "train.warmup_steps"),
        ("noequals", "key=value"),
        ("model.backbone.layout=zigzag", "one of last, interleaved"),
        ("model.backbone.init_from=smollm2-gguf", "num_layers=0"),
        ("model.backbone.num_layers=2 model.backbone.source_layers=[0]", "lists 1 layers"),
        ("model.backbone.num_layers=2 model.backbone.num_kv_heads=2", "num_kv_heads=2 must divide num_heads"),
        ("model.backbone.num_layers=2", "model.num_heads=4 is not divisible by 3"),
        ("train.backbone_lr_mult=0", "train.backbone_lr_mult"),
        ("train.init_from=runs/x train.init_modules=[]", "train.init_modules is empty"),
        ("train.trainable=[lm_head] parallel.pipeline=2", "train.trainable is not supported with parallel.pipeline>1"),
    ],
)
def test_errors_are_one_line(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, override.split(" "))
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_missing_and_bad_recipe(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(bad))


def _ds(tmp_path, content):
    path = tmp_path / "ds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_deepspeed_values_come_from_run_config(tmp_path):
    cfg = load_config(None, ["train.micro_batch_size=3", "train.grad_accum_steps=2", "train.precision=bf16"])
    ds = build_deepspeed_config(_ds(tmp_path, {"zero_optimization": {"stage": 3}}), cfg.train, dp_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 24 and ds["bf16"] == {"enabled": True}
    assert ds["gradient_clipping"] == cfg.train.grad_clip and ds["zero_optimization"]["stage"] == 3
    assert ds["optimizer"]["params"]["lr"] == cfg.train.lr


def test_deepspeed_agreeing_duplicate_is_fine(tmp_path):
    cfg = load_config(None, ["train.micro_batch_size=3"])
    build_deepspeed_config(_ds(tmp_path, {"train_micro_batch_size_per_gpu": 3}), cfg.train, dp_size=1)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ({"train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu=8"),
        ({"gradient_clipping": 5.0}, "gradient_clipping"),
        ({"bf16": {"enabled": True}}, "bf16"),
        ({"optimizer": {"type": "Adam"}}, "sets 'optimizer'"),
        ({"fp16": {"enabled": True}}, "sets 'fp16'"),
        ("{not json", "not valid JSON"),
    ],
)
def test_deepspeed_contradictions_are_errors(tmp_path, content, fragment):
    cfg = load_config(None, ["train.precision=fp32"])
    with pytest.raises(DeepSpeedConfigError, match=fragment.replace("(", r"\(")):
        build_deepspeed_config(_ds(tmp_path, content), cfg.train, dp_size=1)


def test_deepspeed_missing_file():
    cfg = load_config()
    with pytest.raises(DeepSpeedConfigError, match="not found"):
        build_deepspeed_config("/nonexistent/ds.json", cfg.train, dp_size=1)
