"""The encoder-only family (BERT / RoBERTa): `BertEncoder` and a task head (`jaxprompt.models.heads`) trained with
the method (`jaxprompt.methods.with_head.WithHead`: the head's parameters are `trainable['head']`).

Batches (`jaxprompt.models.features`): `encoder_input_tokens` and `encoder_input_mask` [b, l] (padding is told by
the mask: RoBERTa pads with id 1), optional `encoder_token_types` and `task_ids`, and the head's labels:

  classification    labels [b] int32 class id            softmax cross-entropy (t5x's: z-loss, label smoothing)
  regression        label_values [b] float32             squared error
  multiple_choice   labels [b] the right choice; the     softmax cross-entropy over the choices; a choice row
                    inputs [b, c, l], one row per choice  without a real token (a smaller choice set) scores -1e9
  tagging           token_labels [b, l] int32, IGNORE_LABEL where no tag is predicted: per-token cross-entropy

Rows without a real token (batch padding) and labels below 0 (GLUE's unlabelled test splits) weigh nothing. The
loss follows `LossConfig` as the other families' (summed over weighted labels or tokens by default, 'mean'
divides by their count), and the metrics are theirs: loss, z_loss, weight_sum and `token_accuracy` (the share of
weighted labels / tags predicted right; 0 for regression, which has none).

Multiple choice runs the network on [b * c, l] rows, so a method's prompt or prefix joins every choice row. The
sequence heads read row 0 of the network's output, prompt rows included, as the pooler does and as transformers does
given `inputs_embeds` (PEFT's prompt tuning on BertForSequenceClassification); a tagging head reads the token rows
only, never the rows an input hook inserts in front: each row's own, where the hook says its tokens start (behind
its own prompt in a bank of several prompt lengths; `jaxprompt.models.token_rows`). `predict_labels` is how the
family predicts: it has no text to rank or decode, so `rank_classify`, `predict_batch` and `score_batch` refuse in
one line.

A method serving several tasks may carry one head per task (`jaxprompt.models.task_heads.TaskHeads`, parameters
`trainable['head'][<task>]`): `logits` and `predict_labels` then give {task: that head's output for every row}, and
`loss_fn` sums each head's loss over its own rows (`task_ids`).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models import losses, token_rows
from jaxprompt.models.base import Array, BaseModel, LossConfig, ModelConfig, Params, Tuning, fresh_params
from jaxprompt.models.bert import BertEncoder
from jaxprompt.models.encoder_config import EncoderConfig
from jaxprompt.models.features import (
    CLASS_LABEL,
    ENCODER_FEATURES,
    IGNORE_LABEL,
    REGRESSION_LABEL,
    TAGGING_FEATURES,
    TASK_FEATURE,
    TOKEN_TYPES,
)
from jaxprompt.models.heads import HEAD_KEY, HeadConfig, TaskHead
from jaxprompt.models.task_heads import TaskHeads

INPUT_MASK = 'encoder_input_mask'
_LABELS = {
    'classification': CLASS_LABEL, 'multiple_choice': CLASS_LABEL, 'regression': REGRESSION_LABEL,
    'tagging': 'token_labels'
}
# The score of a choice row without a real token: finite, so that the z-loss of a padding example (weight 0) stays 0.
MISSING_CHOICE = -1e9
NO_TEXT = ('the encoder-only family predicts labels with its task head (EncoderOnlyModel.predict_labels); it has no '
           'text targets to {what}')


def _predicted(head: HeadConfig, scores: Array) -> tuple[Array, Array]:
  """(predictions, scores) of one head's scores: values for regression, else the argmax."""
  if head.kind == 'regression':
    return scores, scores
  return jnp.argmax(scores, -1).astype(jnp.int32), scores


class EncoderOnlyModel(BaseModel):
  """A BERT / RoBERTa network, a tuning method and the method's task head."""

  FEATURES = ENCODER_FEATURES
  DECODE_FEATURES = ENCODER_FEATURES + (TOKEN_TYPES, TASK_FEATURE)  # what `predict_labels` reads

  def __init__(self, config: ModelConfig, method: Tuning | None = None, loss: LossConfig | None = None,
               eos_id: int = 1):
    super().__init__(config, method, loss or LossConfig(), eos_id)
    self.head = None if method is None else method.head  # a HeadConfig, or TaskHeads: one per task
    # BertEncoder numbers inserted rows as positions 0..p-1 in front of the tokens, and a tagging head reads the
    # tokens behind them: a prompt placed elsewhere (prompt tuning's other combination modes) would be misread.
    combine = getattr(getattr(method, 'inner', method), 'combine', 'prefix')
    if combine != 'prefix':
      raise ConfigError(f"an encoder-only model takes an input prompt in front of the tokens (combine='prefix', as "
                        f'PEFT gives BERT its prompt), not combine={combine!r}')
    if self.head is not None:
      self.head.check_network(config.pooler, type(config).__name__)
      # The instance's training features: the inputs and its heads' labels (a mixed-task batch carries each kind's).
      kinds = [c.kind for _, c in self._heads()]
      self.FEATURES = ENCODER_FEATURES + tuple(dict.fromkeys(_LABELS[k] for k in kinds))

  @classmethod
  def network(cls, config: ModelConfig) -> BertEncoder:
    if not isinstance(config, EncoderConfig):
      raise ConfigError(f'the encoder-only family runs an EncoderConfig, not {type(config).__name__}')
    return BertEncoder(config)

  def feature_widths(self, input_length: int, target_length: int) -> dict[str, int]:
    """The [b, l] features are the inputs' width; labels are per example (targets have no width here)."""
    del target_length
    return {k: input_length for k in self.FEATURES if k in TAGGING_FEATURES}

  def init_abstract(self, batch_size: int = 1, input_length: int = 8, target_length: int = 4) -> dict:
    del target_length
    tokens = jnp.ones((batch_size, input_length), jnp.int32)
    return jax.eval_shape(functools.partial(self.module.init, enable_dropout=False), jax.random.PRNGKey(0), tokens)

  def init_params(self, rng: Array) -> Params:
    return fresh_params(self.module, rng, jnp.ones((1, 4), jnp.int32))

  # -- the network and the head ---------------------------------------------------------------------------
  def _head(self) -> HeadConfig | TaskHeads:
    if self.head is None:
      raise ConfigError('the encoder-only family trains a task head beside the method: wrap it with '
                        'jaxprompt.methods.with_head.WithHead (METHOD = @jaxprompt.methods.with_head)')
    return self.head

  def _heads(self) -> tuple[tuple[str, HeadConfig], ...]:
    """(task, head) pairs: one per task of per-task heads (`TaskHeads`), else ('', the one head)."""
    head = self._head()
    return head.items() if isinstance(head, TaskHeads) else (('', head),)

  @staticmethod
  def _rows(batch: Mapping[str, Array], choices: bool) -> tuple[Array, Array, Array | None]:
    """(tokens, valid, token types) as [rows, l]: a multiple-choice batch's [b, c, l] flattened to [b * c, l]."""
    if INPUT_MASK not in batch:
      raise ConfigError(f"an encoder-only batch needs '{INPUT_MASK}' (1 = a real token) beside "
                        "'encoder_input_tokens': padding is told by the mask, not the id (RoBERTa pads with 1)")
    tokens, valid, types = batch['encoder_input_tokens'], batch[INPUT_MASK] > 0, batch.get(TOKEN_TYPES)
    if choices != (tokens.ndim == 3):
      raise ConfigError(f"a {'multiple-choice' if choices else 'single-row'} head reads encoder_input_tokens of "
                        f"shape {'[batch, choices, length]' if choices else '[batch, length]'}, got {tokens.shape}")
    flat = lambda x: None if x is None else x.reshape((-1, x.shape[-1]))
    return flat(tokens).astype(jnp.int32), flat(valid), flat(types)

  def logits(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
             dropout_rng: Array | None = None) -> Array | dict[str, Array]:
    """The head's float32 scores: classification [b, n], regression [b], multiple choice [b, c] (MISSING_CHOICE on
    choice rows without a real token), tagging [b, l, n]; dropout on iff `dropout_rng` is given. Per-task heads
    (`TaskHeads`): {task: its head's scores of every row}."""
    head = self._head()
    choices = head.choices if isinstance(head, TaskHeads) else head.kind == 'multiple_choice'
    tokens, valid, types = self._rows(batch, choices)
    rngs, hook_rng = self._split_rng(dropout_rng)
    task_ids = batch.get(TASK_FEATURE)
    if choices and task_ids is not None:
      task_ids = jnp.repeat(task_ids, batch['encoder_input_tokens'].shape[1])
    hooks = self._hooks(trainable, hook_rng, task_ids)
    hidden, pooled = self.module.apply(self._variables(frozen, trainable), tokens, valid=valid, token_types=types,
                                       hooks=hooks, enable_dropout=dropout_rng is not None, rngs=rngs)
    # Each row's tokens behind the rows its input hook put in front (a bank's shorter prompts: fewer rows).
    starts = token_rows.token_starts(None if hooks is None else hooks.inputs, tokens.shape[1], hidden.shape[1],
                                     'encoder')
    scores = {}
    for i, (task, config) in enumerate(self._heads()):
      params = trainable[HEAD_KEY][task] if task else trainable[HEAD_KEY]
      rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, 2)
      rng = jax.random.fold_in(rng, i) if task and rng is not None else rng  # one head: the single-task stream
      scores[task] = self._score(config, params, hidden, pooled, valid, starts, batch, rng)
    return scores if isinstance(head, TaskHeads) else scores['']

  def _score(self, head: HeadConfig, params: Params, hidden: Array, pooled: Array | None, valid: Array,
             starts: token_rows.Starts, batch: Mapping[str, Array], rng: Array | None) -> Array:
    """One head's scores (`logits`) of the network's output hidden [rows, l', e] (inserted rows included), whose
    token rows start at `starts` (`jaxprompt.models.token_rows`)."""
    if head.kind == 'tagging':  # each row's token rows: not the rows an input hook put in front, nor unused slots
      hidden = token_rows.take(hidden, starts, valid.shape[1])
    module = TaskHead(head, self.config.emb_dim, self.config.dtype, self.config.param_dtype)
    scores = module.apply({'params': params}, hidden, pooled, deterministic=rng is None,
                          rngs=None if rng is None else {'dropout': rng})
    if head.kind == 'multiple_choice':
      scores = jnp.where(jnp.any(valid, -1), scores, MISSING_CHOICE).reshape(batch['encoder_input_tokens'].shape[:2])
    return scores

  def targets(self, batch: Mapping[str, Array], head: HeadConfig | None = None) -> tuple[Array, Array]:
    """(labels, weights) of `head` (None: the model's one head): [b] (tagging: [b, l]) labels, 0 where they are
    not given (weight 0 there)."""
    head = head or self._head()
    if isinstance(head, TaskHeads):
      raise ConfigError('per-task heads have targets per task: call targets(batch, head) with one HeadConfig')
    name = _LABELS[head.kind]
    if name not in batch:
      raise ConfigError(f"a {head.kind} head trains on the batch feature '{name}'; the batch has "
                        f'{sorted(batch)}')
    labels = batch[name]
    real = jnp.any(batch[INPUT_MASK] > 0, axis=tuple(range(1, batch[INPUT_MASK].ndim)))  # [b]: not batch padding
    if head.kind == 'regression':
      return labels.astype(jnp.float32), real.astype(jnp.float32)
    given = labels >= 0 if head.kind != 'tagging' else labels != IGNORE_LABEL
    weights = given & (real if head.kind != 'tagging' else batch[INPUT_MASK] > 0)
    return jnp.where(given, labels, 0).astype(jnp.int32), weights.astype(jnp.float32)

  def loss_fn(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
              dropout_rng: Array | None = None) -> tuple[Array, dict]:
    """(loss, metrics) of the head's labels (module docstring); differentiate w.r.t. `trainable` alone. Per-task
    heads: the sum over tasks of each head's loss on its own rows (`task_ids`)."""
    cfg = self.loss_config
    scores = self.logits(frozen, trainable, batch, dropout_rng)
    parts = []
    for i, (task, head) in enumerate(self._heads()):
      targets, weights = self.targets(batch, head)
      if task:  # only this task's rows
        mine = batch[TASK_FEATURE] == i
        weights = weights * mine.reshape(mine.shape + (1,) * (weights.ndim - 1)).astype(weights.dtype)
      parts.append(self._head_loss(head, scores[task] if task else scores, targets, weights))
    loss, z_loss, weight_sum, correct = (sum(p[k] for p in parts) for k in range(4))
    if cfg.reduction == 'mean':
      loss, z_loss = loss / jnp.maximum(weight_sum, 1.0), z_loss / jnp.maximum(weight_sum, 1.0)
    accuracy = correct / jnp.maximum(weight_sum, 1.0)
    return loss, {'loss': loss, 'z_loss': z_loss, 'weight_sum': weight_sum, 'token_accuracy': accuracy}

  def _head_loss(self, head: HeadConfig, scores: Array, targets: Array,
                 weights: Array) -> tuple[Array, Array, Array, Array]:
    """(summed loss, z-loss, weight sum, weighted right predictions) of one head's scores."""
    cfg = self.loss_config
    if head.kind == 'regression':
      loss = jnp.sum(jnp.square(scores - targets) * weights)
      if cfg.loss_normalizing_factor is not None:
        loss = loss / cfg.loss_normalizing_factor
      return loss, jnp.zeros((), jnp.float32), jnp.sum(weights), jnp.zeros((), jnp.float32)
    if scores.ndim == 2 and head.kind != 'tagging':  # one prediction per example: a length-1 sequence
      scores, targets, weights = scores[:, None], targets[:, None], weights[:, None]
    loss, z_loss, weight_sum = losses.compute_weighted_cross_entropy(scores, targets, weights, cfg.label_smoothing,
                                                                     cfg.z_loss, cfg.loss_normalizing_factor)
    return loss, z_loss, weight_sum, jnp.sum((jnp.argmax(scores, -1) == targets) * weights)

  def predict_labels(self, frozen: Params, trainable: Params | None,
                     batch: Mapping[str, Array]) -> tuple[Array, Array] | dict[str, tuple[Array, Array]]:
    """(predictions, scores) of an inference batch (`DECODE_FEATURES`): class ids [b] and logits [b, n]; values [b]
    twice (regression); the chosen choice [b] and the choices' scores [b, c]; tags [b, l] (of every token row,
    padding included) and logits [b, l, n]. Per-task heads: {task: that pair for every row}; row i's answer is
    its task's (`jaxprompt.models.task_heads.row_answers`)."""
    scores = self.logits(frozen, trainable, batch)
    out = {task: _predicted(head, scores[task] if task else scores) for task, head in self._heads()}
    return out if isinstance(self._head(), TaskHeads) else out['']

  # -- what a text-predicting family does ---------------------------------------------------------------------
  def score_batch(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
                  return_intermediates: bool = False) -> Array:
    raise ConfigError(NO_TEXT.format(what='score'))

  def rank_classify(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array],
                    candidate_targets: Array) -> Array:
    raise ConfigError(NO_TEXT.format(what='rank (rank classification)'))

  def predict_batch(self, frozen: Params, trainable: Params | None, batch: Mapping[str, Array], *, method: str = 'beam',
                    num_decodes: int = 1, alpha: float = 0.6, temperature: float = 0.0, topk: int = 1,
                    topp: float = 0.0, rescale_log_probs: bool = True, rng: Array | None = None,
                    return_all_decodes: bool = False) -> tuple[Array, Array]:
    raise ConfigError(NO_TEXT.format(what='decode'))
