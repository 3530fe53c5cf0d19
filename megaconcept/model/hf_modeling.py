"""Hugging Face model classes for exported concept encoders (loaded with ``trust_remote_code=True``).

They follow transformers' base-model/head convention: :class:`MegaconceptModel` (the encoder and bottleneck:
input ids -> concepts) is the base model, and every head class holds one under ``base_model_prefix``
(``self.megaconcept``) beside its own modules (``decoder``, ``lm_head`` when untied, ``lm_bias``, poolers and
task heads). Their parameter names are the native :class:`~.concept_mlm.ConceptMLM` names with the base
model's parts under ``megaconcept.``, so transformers' own prefix handling moves weights between the base model
and any head (and reads an export's ``model.safetensors``, which holds the native names) with its usual
missing/unexpected report. Shipped flat in the exported folder: imports are transformers, torch and sibling
files only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput
from transformers.utils import ModelOutput

from .bottleneck import StartedLinear, build_bottleneck
from .classification import AttentionPooler, ClassificationHead, decoder_width, pooled_width, pooling
from .concept_mlm import all_positions, decoder_token_inputs, encode_decode, head_weight
from .decoders import build_decoder
from .encoder import ConceptEncoder, ReadPositions
from .hf_configuration import MegaconceptConfig
from .sampling import InfillOptions, infill

try:
    # transformers >= 5: init functions that skip tensors already loaded from a checkpoint.
    from transformers import initialization as init
except ImportError:  # transformers 4.x only initializes missing weights, so plain torch init is safe there
    from torch.nn import init


class MegaconceptPreTrainedModel(PreTrainedModel):
    """Shared HF plumbing: config class, base-model prefix, weight init for parameters the generic init does
    not know."""

    config_class = MegaconceptConfig
    base_model_prefix = "megaconcept"
    main_input_name = "input_ids"
    _no_split_modules = ["ConceptLayer", "SlotConceptLayer"]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.encoder.token_embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.encoder.token_embed = value

    def _init_weights(self, module: nn.Module) -> None:
        """Same scheme as ConceptMLM: Normal(0, init_std) for linears/embeddings, Normal(0, concept_init_std)
        for concepts, ones for norms, zeros for the LM bias and the read-position projections, the bottleneck
        heads' fixed start. Only ever reaches tensors that were not loaded from a checkpoint."""
        super()._init_weights(module)
        if isinstance(module, StartedLinear):
            module.reset_parameters(init)
        if isinstance(module, ConceptEncoder):
            init.normal_(module.concepts, mean=0.0, std=self.config.concept_init_std)
        if isinstance(module, ReadPositions):
            init.zeros_(module.weight)
        if isinstance(module, MegaconceptForMaskedLM):
            init.zeros_(module.lm_bias)
        if isinstance(module, AttentionPooler):
            init.normal_(module.query, mean=0.0, std=self.config.init_std)


class MegaconceptModel(MegaconceptPreTrainedModel):
    """The base model, the concept encoder alone: input_ids (B, N) -> concepts (B, C, D) as
    ``last_hidden_state`` (after the bottleneck's mean: a vae model's mu).

    Loading it from an exported MLM folder (or a fine-tuned head) drops the head's weights, which transformers
    reports as unused.
    """

    def __init__(self, config: MegaconceptConfig) -> None:
        super().__init__(config)
        cfg = config.to_model_config()
        self.encoder = ConceptEncoder(cfg)
        self.bottleneck = build_bottleneck(cfg)
        self.post_init()

    def encode(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], output_attentions: Optional[bool],
               output_hidden_states: Optional[bool], slot_iterations: Optional[int] = None
               ) -> tuple[torch.Tensor, Optional[tuple], Optional[tuple]]:
        """Concepts (B, C, D) after the bottleneck's mean (deterministic: an exported model never samples), and
        when asked the encoder's per-layer concepts and cross-attention weights (see ConceptEncoder.trace); the
        flags default to the config's, as in every transformers model. slot_iterations: K for slot layers in
        this call (None: config.slot_iterations)."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (self.config.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        if not (output_attentions or output_hidden_states):
            return self.bottleneck.mean(self.encoder(input_ids, attention_mask, slot_iterations)), None, None
        trace = self.encoder.trace(input_ids, attention_mask, slot_iterations)
        return (self.bottleneck.mean(trace.concepts), trace.hidden_states if output_hidden_states else None,
                trace.attentions if output_attentions else None)

    def concepts(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Just the concepts (B, C, D), whatever the config says about hidden states and attentions."""
        return self.encode(input_ids, attention_mask, False, False)[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        slot_iterations: Optional[int] = None,
        **kwargs: Any,
    ) -> Union[BaseModelOutput, tuple[torch.Tensor, ...]]:
        """input_ids (B, N), attention_mask (B, N) 1 = real token -> concepts (B, C, D) as last_hidden_state.

        output_hidden_states: the concepts entering and leaving each concept layer, (B, C, D) each;
        output_attentions: each concept layer's cross-attention of the concepts over the tokens, (B, H, C, N)
        fp32 (exact softmax, padding 0; slot layers: the softmax over the concepts). slot_iterations: K for
        slot layers in this call. Extra tokenizer outputs (e.g. token_type_ids) are ignored.
        """
        concepts, hidden, attentions = self.encode(input_ids, attention_mask, output_attentions, output_hidden_states,
                                                   slot_iterations)
        if return_dict is False:
            return tuple(x for x in (concepts, hidden, attentions) if x is not None)
        return BaseModelOutput(last_hidden_state=concepts, hidden_states=hidden, attentions=attentions)


class MegaconceptHead(MegaconceptPreTrainedModel):
    """A head class: the base model under `base_model_prefix`, plus read-only shortcuts to its parts (the head
    classes' code and callers read `model.encoder` / `model.bottleneck` whichever class they hold)."""

    def __init__(self, config: MegaconceptConfig) -> None:
        super().__init__(config)
        self.megaconcept = MegaconceptModel(config)

    @property
    def encoder(self) -> ConceptEncoder:
        return self.megaconcept.encoder

    @property
    def bottleneck(self) -> nn.Module:
        return self.megaconcept.bottleneck


class MegaconceptForMaskedLM(MegaconceptHead):
    """Encoder -> concepts -> decoder at every position -> full logits (B, N, V).

    A tied head owns no parameter: the logits read the token embedding directly, as in the native model,
    so there is nothing for transformers' weight-tying machinery to tie (``_tied_weights_keys`` stays None).
    """

    def __init__(self, config: MegaconceptConfig) -> None:
        super().__init__(config)
        cfg = config.to_model_config()
        self.decoder = build_decoder(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.concept_dim, cfg.vocab_size, bias=False)
        self.lm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.post_init()

    def get_output_embeddings(self) -> Optional[nn.Linear]:
        """The untied head, or None: a tied head is the input embedding itself, not a module."""
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        if self.lm_head is None:
            raise ValueError("this model ties its LM head to the input embedding; use set_input_embeddings")
        self.lm_head = value

    def output_embedding(self) -> torch.Tensor:
        """The LM head matrix (V, D): the token embedding when tied."""
        return head_weight(self.encoder, self.lm_head)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        slot_iterations: Optional[int] = None,
        noise_level: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> Union[MaskedLMOutput, tuple[torch.Tensor, ...]]:
        """input_ids (B, N), attention_mask (B, N), labels (B, N) with -100 = ignore -> logits (B, N, V).

        hidden_states / attentions are the encoder's (see MegaconceptModel): the concepts per layer and their
        cross-attention over the tokens. slot_iterations: K for slot layers in this call (None: the config's).
        noise_level (B,): the masking level t for a time-conditioned diffusion decoder. Extra tokenizer outputs
        (e.g. token_type_ids) are ignored.
        """
        concepts, hidden, attentions = self.megaconcept.encode(input_ids, attention_mask, output_attentions,
                                                               output_hidden_states, slot_iterations)
        self.decoder.check_length(input_ids.shape[1])
        positions = all_positions(input_ids)
        if noise_level is None:
            noise_level = self.decoder.infer_noise_level(input_ids, attention_mask)
        states = self.decoder(concepts, positions, decoder_token_inputs(self.decoder, self.encoder.token_embed,
                                                                        input_ids, positions),
                              noise_level=noise_level, attention_mask=attention_mask).states  # (B, N, D)
        logits = F.linear(states, self.output_embedding(), self.lm_bias)  # (B, N, V)
        loss = None
        if labels is not None:
            # fp32 log-softmax, as in the native chunked loss, so bf16 exports report comparable losses.
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        if return_dict is False:
            return tuple(x for x in (loss, logits, hidden, attentions) if x is not None)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden, attentions=attentions)

    @torch.no_grad()
    def infill(self, input_ids: torch.Tensor, mask_token_id: int, attention_mask: Optional[torch.Tensor] = None,
               forbidden_ids: Sequence[int] = (), **options: Any) -> torch.Tensor:
        """Fill every `mask_token_id` of input_ids (B, N) by iterative unmasking (sampling.infill; options: steps,
        temperature, block_length, remasking, seed). Deterministic for a seed; the native model's infill gives
        the same ids. forbidden_ids (e.g. the tokenizer's special ids) are never generated."""
        was_training = self.training
        self.eval()
        try:
            def logits(ids: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
                return self(input_ids=ids, attention_mask=attention_mask, noise_level=level).logits

            return infill(logits, input_ids, mask_token_id, InfillOptions(**options), attention_mask, forbidden_ids)
        finally:
            self.train(was_training)


class MegaconceptForSequenceClassification(MegaconceptHead):
    """Encoder -> concepts -> pooling (`config.classifier_pooling`) -> classification head.

    Loads from an exported MLM folder: encoder weights (and the decoder's, for decoder pooling) come from
    it by name; the pooler and head start fresh. `num_labels == 1` is regression (MSE), otherwise
    single-label cross-entropy, unless `config.problem_type` says otherwise.
    """

    def __init__(self, config: MegaconceptConfig) -> None:
        super().__init__(config)
        cfg = config.to_model_config()
        choice = pooling(config.classifier_pooling)
        self.num_labels = config.num_labels
        self.decoder = build_decoder(cfg) if choice.decodes else None
        self.pooler = choice.build(cfg)
        self.classifier = ClassificationHead(pooled_width(cfg, config.classifier_pooling), config.num_labels,
                                             config.classifier_dropout)
        self.post_init()

    def pooled(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """input_ids (B, N) -> one vector per sequence (B, W)."""
        if self.decoder is None:  # over the concepts (B, C, D)
            return self.pooler(self.megaconcept.concepts(input_ids, attention_mask))
        states = encode_decode(self.encoder, self.decoder, input_ids, attention_mask, None,
                               bottleneck=self.bottleneck).states  # (B, N, W)
        return self.pooler(states, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[SequenceClassifierOutput, tuple[torch.Tensor, ...]]:
        """input_ids (B, N), attention_mask (B, N), labels (B,) -> logits (B, num_labels)."""
        logits = self.classifier(self.pooled(input_ids, attention_mask))
        loss = None if labels is None else self._loss(logits, labels)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kind = self.config.problem_type or ("regression" if self.num_labels == 1 else "single_label_classification")
        if kind == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        if kind == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels.long())


# The answer-type classes of MegaconceptForQuestionAnswering, in the order of its type logits.
QA_ANSWER_TYPES = ("span", "yes", "no", "unanswerable")


@dataclass
class ConceptQuestionAnsweringOutput(ModelOutput):
    """Span logits over positions (B, N) (padding at the dtype's minimum) and answer-type logits (B, 4)."""

    loss: Optional[torch.Tensor] = None
    start_logits: Optional[torch.Tensor] = None
    end_logits: Optional[torch.Tensor] = None
    type_logits: Optional[torch.Tensor] = None


class MegaconceptForQuestionAnswering(MegaconceptHead):
    """Qasper-style QA: an answer type (QA_ANSWER_TYPES) over pooled concepts, plus an extractive span.

    The span head needs one state per input position, and the concepts are the only representation the
    encoder produces. The pretrained decoder is what maps concepts back to positions (queries 0..N-1):
    pretraining taught it to reconstruct every position's token from the concepts, so its states are the
    natural per-position features; a fresh per-position head would have to learn that mapping from the
    task's few examples. Learned decoder queries cap the input at `max_position_embeddings` tokens, even
    with a RoPE backbone (sinusoidal ones do not). The type head pools like sequence classification
    (`classifier_pooling`).
    Encoder and decoder load from an exported MLM folder by name; pooler, type head and span head start fresh.
    """

    answer_types = QA_ANSWER_TYPES

    def __init__(self, config: MegaconceptConfig) -> None:
        super().__init__(config)
        cfg = config.to_model_config()
        choice = pooling(config.classifier_pooling)
        self.pool_decoded = choice.decodes
        self.decoder = build_decoder(cfg)  # always: the span head reads its per-position states
        self.pooler = choice.build(cfg)
        self.classifier = ClassificationHead(pooled_width(cfg, config.classifier_pooling), len(QA_ANSWER_TYPES),
                                             config.classifier_dropout)
        self.qa_outputs = nn.Linear(decoder_width(cfg), 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        start_positions: Optional[torch.Tensor] = None,
        end_positions: Optional[torch.Tensor] = None,
        answer_type: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[ConceptQuestionAnsweringOutput, tuple[torch.Tensor, ...]]:
        """input_ids (B, N), attention_mask (B, N); start/end_positions (B,) token indices and answer_type (B,)
        indices into QA_ANSWER_TYPES -> start/end logits (B, N), type logits (B, 4).

        Loss = cross-entropy over the answer type (when given) + the mean of the start and end cross-entropies
        over the span rows only (answer_type == span; every row when answer_type is not given).
        """
        self.decoder.check_length(input_ids.shape[1])  # the span head decodes every position
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        concepts = self.megaconcept.concepts(input_ids, attention_mask)  # (B, C, D)
        positions = all_positions(input_ids)
        token_inputs = decoder_token_inputs(self.decoder, self.encoder.token_embed, input_ids, positions)
        states = self.decoder(concepts, positions, token_inputs).states  # (B, N, W)
        type_logits = self.classifier(self.pooler(states, mask) if self.pool_decoded else self.pooler(concepts))
        # fp32 and padding at the minimum: a padded position can never win a span or take softmax mass.
        span_logits = self.qa_outputs(states).float()  # (B, N, 2)
        span_logits = span_logits.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(torch.float32).min)
        start_logits, end_logits = span_logits.unbind(dim=-1)  # (B, N) each
        loss = self._loss(start_logits, end_logits, type_logits, start_positions, end_positions, answer_type)
        if return_dict is False:
            out = (start_logits, end_logits, type_logits)
            return out if loss is None else (loss, *out)
        return ConceptQuestionAnsweringOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                              type_logits=type_logits)

    @staticmethod
    def _loss(start_logits: torch.Tensor, end_logits: torch.Tensor, type_logits: torch.Tensor,
              start_positions: Optional[torch.Tensor], end_positions: Optional[torch.Tensor],
              answer_type: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        losses = []
        if answer_type is not None:
            losses.append(F.cross_entropy(type_logits.float(), answer_type.long()))
        if start_positions is not None and end_positions is not None:
            # Yes/no/unanswerable rows carry no span: their positions are placeholders and stay out of the loss.
            span = torch.ones_like(start_positions, dtype=torch.bool)
            if answer_type is not None:
                span = answer_type == QA_ANSWER_TYPES.index("span")
            if span.any():
                losses.append((F.cross_entropy(start_logits[span], start_positions[span].long())
                               + F.cross_entropy(end_logits[span], end_positions[span].long())) / 2)
        return sum(losses) if losses else None


__all__ = ["ConceptQuestionAnsweringOutput", "MegaconceptForMaskedLM", "MegaconceptForQuestionAnswering",
           "MegaconceptForSequenceClassification", "MegaconceptHead", "MegaconceptModel", "MegaconceptPreTrainedModel"]
