"""Question answering from an exported MLM folder: AutoModelForQuestionAnswering loads it, the span head reads
the pretrained decoder's states at every position, padding never wins, and the span loss counts span rows only."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForQuestionAnswering

import test_classification
from test_classification import CFG

mlm_folder = test_classification.mlm_folder  # the module-scoped exported MLM folder, shared

SPAN, YES = 0, 1  # indices into QA_ANSWER_TYPES


def _load(folder, pooling: str = "mean"):
    torch.manual_seed(1)
    return AutoModelForQuestionAnswering.from_pretrained(str(folder), trust_remote_code=True,
                                                         classifier_pooling=pooling).eval()


def _batch():
    torch.manual_seed(2)
    ids, mask = torch.randint(0, 1000, (2, 10)), torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("pooling", ["mean", "decoder"])
def test_span_head_reads_the_pretrained_decoder(mlm_folder, pooling):
    folder, native = mlm_folder
    model = _load(folder, pooling)
    assert model.answer_types == ("span", "yes", "no", "unanswerable")
    for part in ("encoder", "decoder"):
        for name, tensor in getattr(native, part).state_dict().items():
            assert torch.equal(getattr(model, part).state_dict()[name], tensor), f"{part}.{name}"
    ids, mask = _batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        logits = model.qa_outputs(native(ids, mask).states)  # native decoded states at positions 0..N-1
    assert out.start_logits.shape == out.end_logits.shape == (2, 10) and out.type_logits.shape == (2, 4)
    assert out.loss is None
    torch.testing.assert_close(out.start_logits[0], logits[0, :, 0])
    torch.testing.assert_close(out.end_logits[1, :6], logits[1, :6, 1])
    assert (out.start_logits[1, 6:] == torch.finfo(torch.float32).min).all()  # padding can never be picked
    assert (out.end_logits[1, 6:] < out.end_logits[1, :6].min()).all()


def test_span_loss_counts_span_rows_only(mlm_folder):
    model = _load(mlm_folder[0])
    ids, mask = _batch()
    kinds = torch.tensor([YES, SPAN])
    start, end = torch.tensor([0, 2]), torch.tensor([0, 4])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, start_positions=start, end_positions=end, answer_type=kinds)
        moved = model(input_ids=ids, attention_mask=mask, start_positions=torch.tensor([7, 2]),
                      end_positions=torch.tensor([9, 4]), answer_type=kinds).loss
    expected = (F.cross_entropy(out.type_logits, kinds)
                + (F.cross_entropy(out.start_logits[1:], start[1:]) + F.cross_entropy(out.end_logits[1:], end[1:])) / 2)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(moved, out.loss)  # the yes row's placeholder positions do not matter
    with torch.no_grad():
        type_only = model(input_ids=ids, attention_mask=mask, answer_type=torch.tensor([YES, YES])).loss
        spans_only = model(input_ids=ids, attention_mask=mask, start_positions=start, end_positions=end).loss
        no_span_rows = model(input_ids=ids, attention_mask=mask, start_positions=start, end_positions=end,
                             answer_type=torch.tensor([YES, YES])).loss
    torch.testing.assert_close(type_only, F.cross_entropy(out.type_logits, torch.tensor([YES, YES])))
    torch.testing.assert_close(no_span_rows, type_only)
    assert torch.isfinite(spans_only)  # without answer types every row is a span row


def test_training_lowers_the_loss_and_reaches_the_encoder(mlm_folder):
    model = _load(mlm_folder[0], "attention").train()
    ids, mask = _batch()
    batch = dict(input_ids=ids, attention_mask=mask, start_positions=torch.tensor([0, 2]),
                 end_positions=torch.tensor([0, 3]), answer_type=torch.tensor([YES, SPAN]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        if not losses:
            assert model.encoder.concepts.grad is not None and model.decoder.position_queries.weight.grad is not None
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_inputs_past_the_position_table_are_a_clear_error(mlm_folder):
    model = _load(mlm_folder[0])
    too_long = CFG.max_position_embeddings + 1
    message = f"decoding {too_long} positions exceeds the decoder's learned table of max_position_embeddings=64"
    with pytest.raises(ValueError, match=message):
        model(input_ids=torch.zeros(1, too_long, dtype=torch.long))
