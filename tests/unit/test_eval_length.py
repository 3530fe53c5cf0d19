"""evals.common.check_length: which exported configs cap the evaluation length, read from config.json."""
import json

import pytest

from evals.common import EvalError, check_length


def _folder(tmp_path, backbone_layers: int, decoder_positions=None):
    config = {"max_position_embeddings": 512, "backbone": {"num_layers": backbone_layers} if backbone_layers else None}
    if decoder_positions is not None:  # folders exported before the option existed lack the key
        config["decoder_positions"] = decoder_positions
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("backbone_layers, decoder_positions, pooling, capped", [
    (0, None, "mean", True),  # learned encoder positions
    (0, "sinusoidal", "decoder", True),  # still learned encoder positions
    (2, None, "mean", False),  # RoPE encoder, decoder unused
    (2, None, "decoder", True),  # RoPE encoder, learned decoder queries
    (2, "learned", "decoder", True),
    (2, "sinusoidal", "decoder", False),  # nothing is a table
])
def test_only_position_tables_cap_the_length(tmp_path, backbone_layers, decoder_positions, pooling, capped):
    folder = _folder(tmp_path, backbone_layers, decoder_positions)
    check_length(folder, 512, pooling)
    if capped:
        with pytest.raises(EvalError, match="--max-length 8192 exceeds the model's max_position_embeddings 512"):
            check_length(folder, 8192, pooling)
    else:
        check_length(folder, 8192, pooling)
