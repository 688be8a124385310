"""A task head trained beside a tuning method (the encoder-only family's classification, regression, multiple-choice
and tagging heads, `jaxprompt.models.heads`): `WithHead(inner, head)` is a method whose trainable tree is the inner
method's plus `{'head': the head's parameters}`.

One trainable tree keeps everything downstream unchanged: the train step differentiates it alone (the frozen encoder
gets no gradient and no optimizer state), orbax checkpoints and exact resume hold it, the compiled steps shard it by
its logical axes. The inner method's hooks, network parameters and inference form are used as they are; `inner=None`
trains the head alone on the frozen encoder (a linear probe), and model tuning as `inner` trains the whole encoder
with it (the quality baseline).

Files: `numpy_copy` writes the inner method's file and `head.npz` beside it: the head's arrays by their parameter
names (`classifier/kernel`, RoBERTa's `classifier/dense/kernel` ...), and markers `kind/<kind>` and
`pooler/<True|False>`. Its `FileKind` joins another kind's file (`registry.FileKind.joins`): read after the inner
method's file of the same step, it wraps that method; read alone, it is the head on the frozen encoder.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxprompt.data import task_heads
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import registry
from jaxprompt.methods.base import Array, Method, Params
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.heads import HEAD_KEY, KINDS, HeadConfig, init_head
from jaxprompt.models.hooks import Hooks
from jaxprompt.parallel import host

HEAD_FILE = 'head.npz'
FILE_KIND = 'task_head'
TUNED_ENCODER = 'encoder/tuned'  # marks the head of a run that trained the whole encoder (model tuning)
_HEAD_SALT = 0x4EAD  # the head's draw: the method's rng folded with this, so the inner draw is the method's alone


@dataclasses.dataclass(frozen=True)
class WithHead(Method):
  """`inner` (None: no method, the frozen encoder as it is) and a `head` over an encoder of width `emb_dim`."""
  inner: Method | None
  head: HeadConfig = dataclasses.field()  # (no default: not the base class's None)
  emb_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.inner is not None and self.inner.head is not None:
      raise ConfigError(f'{type(self.inner).__name__} already trains a task head; give WithHead the method alone')
    if not isinstance(self.head, HeadConfig):
      raise ConfigError(f'WithHead.head must be a HeadConfig, got {type(self.head).__name__}')

  @classmethod
  def for_config(cls, config: ModelConfig, inner: Method | None, head: HeadConfig) -> WithHead:
    """The head for `config`'s width and dtypes, refused (one ConfigError) when it reads a pooler the config lacks."""
    head.check_network(bool(getattr(config, 'pooler', False)), type(config).__name__)
    return cls(inner, head, config.emb_dim, config.dtype, config.param_dtype)

  # -- what the runtime reads of a method: the inner method's, the head's dropout added -------------------------
  @property
  def trains_network(self) -> bool:  # pytype: disable=signature-mismatch
    return self.inner is not None and self.inner.trains_network

  @property
  def uses_dropout(self) -> bool:
    return self.head.dropout > 0.0 or (self.inner is not None and self.inner.uses_dropout)

  @property
  def packing_slots(self) -> int:
    return 0 if self.inner is None else self.inner.packing_slots

  @property
  def task_names(self) -> tuple[str, ...]:
    return () if self.inner is None else self.inner.task_names

  def split(self, trainable: Params) -> tuple[Params, Params]:
    """(the inner method's tree, the head's) of a trainable tree."""
    if HEAD_KEY not in trainable:
      raise ConfigError(f"a WithHead trainable tree needs its '{HEAD_KEY}' subtree; got keys {sorted(trainable)}")
    return {k: v for k, v in trainable.items() if k != HEAD_KEY}, trainable[HEAD_KEY]

  def _joined(self, inner: Params, head: Params) -> dict:
    if HEAD_KEY in inner:
      raise ConfigError(f"{type(self.inner).__name__}'s trainable tree has a '{HEAD_KEY}' entry of its own")
    return {**inner, HEAD_KEY: head}

  # -- parameters ---------------------------------------------------------------------------------------------
  def init(self, rng: Array, frozen: Params) -> Params:
    inner = {} if self.inner is None else self.inner.init(rng, frozen)
    head = init_head(self.head, self.emb_dim, self.dtype, self.param_dtype, jax.random.fold_in(rng, _HEAD_SALT))
    return self._joined(inner, nn.meta.unbox(head))

  def abstract(self, network: Params) -> Params:
    inner = {} if self.inner is None else self.inner.abstract(network)
    return self._joined(inner, init_head(self.head, self.emb_dim, self.dtype, self.param_dtype, None))

  def network_params(self, frozen: Params, trainable: Params) -> Params:
    return frozen if self.inner is None else self.inner.network_params(frozen, self.split(trainable)[0])

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    if self.inner is None:
      return Hooks()
    return self.inner.hooks(self.split(trainable)[0], deterministic=deterministic, rng=rng, task_ids=task_ids)

  # -- evaluation and files -------------------------------------------------------------------------------------
  def inference(self, trainable: Params) -> tuple[WithHead, Params]:
    inner, head = self.split(trainable)
    if self.inner is None:
      return self, trainable
    method, params = self.inner.inference(inner)
    return dataclasses.replace(self, inner=method), self._joined(dict(params), head)

  def numpy_copy(self, trainable: Params) -> dict[str, Any]:
    """The inner method's files and `head.npz` (module docstring)."""
    inner, head = self.split(trainable)
    files = {} if self.inner is None else dict(self.inner.numpy_copy(inner) or {})
    arrays = head_arrays(self.head, jax.tree.map(host.host_value, head))
    if self.trains_network:  # the head alone is no use on the frozen encoder it would be read with
      arrays[TUNED_ENCODER] = np.zeros((0,), np.int8)
    return {**files, HEAD_FILE: arrays}


def head_arrays(head: HeadConfig, params: Params) -> dict[str, np.ndarray]:
  """A head's file arrays: its parameters by '/'-joined name, and its kind / pooler markers."""
  flat = {'/'.join(path): np.asarray(leaf, np.float32) for path, leaf in traverse_util.flatten_dict(params).items()}
  markers = {f'kind/{head.kind}': np.zeros((0,), np.int8), f'pooler/{head.use_pooler}': np.zeros((0,), np.int8)}
  return {**flat, **markers, **registry.marker(FILE_KIND)}


def parse_head(arrays: registry.Arrays, source: str) -> tuple[HeadConfig, dict]:
  """A head file's (HeadConfig, parameters) from its markers and its classifier arrays alone, not checked against
  a model (an export names no model); one PromptError naming `source` otherwise."""
  arrays = registry.unmarked(arrays)  # a file as written (`export` reads it raw) or as the registry hands it on
  if TUNED_ENCODER in arrays:
    raise PromptError(f'{source}: this head was trained with the whole encoder (model tuning + head), which lives '
                      "in the run's orbax checkpoints only; eval / infer / export read a method's file on the frozen "
                      'encoder, so this head alone would be scored on the wrong encoder (docs/encoders.md)')
  marks = [k for k in arrays if k.startswith(('kind/', 'pooler/'))]
  kind = next((k.split('/', 1)[1] for k in marks if k.startswith('kind/')), None)
  pooler = next((k.split('/', 1)[1] for k in marks if k.startswith('pooler/')), None)
  if kind not in KINDS or pooler not in ('True', 'False'):
    raise PromptError(f'{source}: a task head file needs markers kind/<{"|".join(KINDS)}> and '
                      f'pooler/<True|False>; found keys {sorted(arrays)}')
  params = {k: v for k, v in arrays.items() if k not in marks}
  out = 'classifier/out_proj/kernel' if 'classifier/out_proj/kernel' in params else 'classifier/kernel'
  if out not in params:
    raise PromptError(f"{source}: a task head file holds classifier/kernel (or RoBERTa's "
                      f'classifier/out_proj/kernel); found keys {sorted(params)}')
  width = params[out].shape[-1]
  try:
    head = HeadConfig(kind, None if kind in ('regression', 'multiple_choice') else width, pooler == 'True')
  except ConfigError as e:
    raise PromptError(f'{source}: {e}') from e
  return head, traverse_util.unflatten_dict({tuple(k.split('/')): np.asarray(v) for k, v in params.items()})


def read_head(arrays: registry.Arrays, context: registry.ReadContext) -> tuple[HeadConfig, dict]:
  """A head file's (HeadConfig, parameters) (`parse_head`), its shapes checked against `context.config`; one
  PromptError naming the file otherwise."""
  head, params = parse_head(arrays, context.source)
  emb = context.config.emb_dim
  want = nn.meta.unbox(init_head(head, emb, jnp.float32, jnp.float32, None))
  want = {'/'.join(p): tuple(v.shape) for p, v in traverse_util.flatten_dict(want).items()}
  got = {'/'.join(p): tuple(np.shape(v)) for p, v in traverse_util.flatten_dict(params).items()}
  if got != want:
    raise PromptError(f'{context.source}: a {head.kind} head for a model of width {emb} holds {want}, but the file '
                      f'has {got}: the wrong MODEL_CONFIG for this head?')
  return head, params


def from_head_file(arrays: registry.Arrays, context: registry.ReadContext) -> tuple[WithHead, Params]:
  """A head file read alone: the head on the frozen encoder (no method)."""
  head, params = read_head(arrays, context)
  return WithHead.for_config(context.config, None, head), {HEAD_KEY: params}


def join_head(arrays: registry.Arrays, method: Method, params: Params,
              context: registry.ReadContext) -> tuple[WithHead, Params]:
  """A head file read after `method`'s file of the same step: the method wrapped with the head."""
  head, head_params = read_head(arrays, context)
  wrapped = WithHead.for_config(context.config, method, head)
  return wrapped, wrapped._joined(dict(params), head_params)  # pylint: disable=protected-access


registry.register(
    registry.FileKind(
        FILE_KIND, HEAD_FILE, from_head_file, 'a task head .npz', joins=join_head,
        peft='a head alone (no prompt or prefix) is no PEFT prompt-learning adapter; use --format '
        'hf_model (the encoder and the head as one transformers folder) or --format hf_head'))


@gin.configurable(module='jaxprompt.methods')
def with_head(config: ModelConfig, eos_id: int = 1, *, method: Any = None, kind: str = 'classification',
              num_labels: int | None = None, use_pooler: bool = False, dropout: float = 0.1,
              task: str | None = None) -> WithHead:
  """`METHOD = @jaxprompt.methods.with_head`: `method` (a method factory, e.g. `@jaxprompt.methods.p_tuning_v2`;
  None: the head alone on the frozen encoder) trained with a task head (`jaxprompt.models.heads.HeadConfig`).
  `task` (heads/*.gin: MIXTURE_OR_TASK_NAME): `num_labels` None is its number of labels, a given one is checked
  against it, and the head's kind against the task's (`data.task_heads.num_labels`)."""
  num_labels = task_heads.num_labels(task, kind, num_labels)
  inner = None if method is None else method(config, eos_id)
  return WithHead.for_config(config, inner, HeadConfig(kind, num_labels, use_pooler, dropout))
