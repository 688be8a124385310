"""Multi-task prompt training: one run trains a prompt per task of a mixture, with parameters shared across
tasks, and every batch mixes tasks (each row carries its `task_ids`; `jaxprompt.data.pipeline.train_dataset`).

Two methods, each computing every task's prompt `[T, P, d]` from its parameters; each row then gets its own
task's prompt through `RowPrompts` (inserted by `combine`, as prompt tuning's):

  MultiTaskPrompts      google-research/prompt-tuning's `extended/multitask_prompts.py`: a shared prompt plus
                        per-task parameters, combined by `mode`
                          concat           shared [P_s, d] then task t's rows [P_t, d]     -> [P_s + P_t, d]
                          add              shared [P, d] + task t's [P, d]                 -> [P, d]
                          concat_features  shared [P, d_s] beside task t's [P, d - d_s]    -> [P, d]
                          project          shared [P, d_s] @ kernel_t [d_s, d] + bias_t [d] -> [P, d]
                        (the reference reads the task from a first input token; here it is the `task_ids` feature)
  MultitaskPromptTuning PEFT's MPT (Wang et al. 2023, peft/tuners/multitask_prompt_tuning/model.py): task t's
                        prompt is shared [P, d] * (cols_t [P, r] @ rows_t [r, d]), elementwise; keys
                        `prompt_embeddings`, `prefix_task_cols` [T, P, r], `prefix_task_rows` [T, r, d] as
                        PEFT's (whose P counts both T5 stacks: 2 x num_virtual_tokens; here only the encoder's)

Task order (task id i = `task_names[i]`): a mixture's tasks as seqio lists them (sorted by name, sub-mixtures
flattened), or the list given. After training only the computed prompts matter: `numpy_copy` writes
`prompts.npz` {task name: float32 [P, d]} (no pickles), `read_multitask_file` reads it back as one plain
PromptTuning per task, and `inference` is the prompt bank (`jaxprompt.methods.prompt_bank`) of those prompts.
Packing is refused: a packed row would hold several tasks' examples.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats.keys import PROMPT_KEY
from jaxprompt.formats.npy_io import read_npz
from jaxprompt.methods import initializers, registry
from jaxprompt.methods.base import Method, Params
from jaxprompt.methods.prompt_bank import build_bank
from jaxprompt.methods.prompt_tuning import COMBINATIONS, PromptTuning, uniform_init
from jaxprompt.methods.row_prompts import gather_rows, task_ids_or_error
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.hooks import Hooks
from jaxprompt.parallel import host

Array = jax.Array
MODES = ('concat', 'add', 'concat_features', 'project')
MULTITASK_FILE = 'prompts.npz'  # {task name: [P, d]} and its marker; `final_prompts.npz` after training
FILE_KIND = 'multitask'  # its marker in the registry (`registry.marker`)
SHARED_AXES = ('prompt', 'prompt_embed')
TASK_AXES = (None, 'prompt', 'prompt_embed')  # [T, P, d]: the task axis is small, never sharded


def reference_task_init(rng: Array, shape: Sequence[int], embedding: Any = None) -> Array:
  """U[0, 0.01): the reference's default for task parameters (`nn.initializers.uniform()`)."""
  del embedding
  return jax.random.uniform(rng, tuple(shape), jnp.float32, 0.0, 0.01)


def _leaf(shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nn.Partitioned:
  return nn.Partitioned(jax.ShapeDtypeStruct(shape, jnp.float32), axes)


@dataclasses.dataclass(frozen=True)
class _MultiTask(Method):
  """What both methods share: task names, per-row prompts, the files and the bank they leave."""
  tasks: tuple[str, ...]
  config: ModelConfig
  length: int
  combine: str = 'prefix'
  eos_id: int = 1

  def _check(self) -> None:
    if not self.tasks or not all(isinstance(t, str) and t for t in self.tasks):
      raise ConfigError(f'a multi-task method needs task names (non-empty strings), got {self.tasks!r}')
    if len(set(self.tasks)) != len(self.tasks):
      raise ConfigError(f'multi-task method: task names must be unique, got {list(self.tasks)}')
    if not isinstance(self.length, int) or self.length <= 0:
      raise ConfigError(f'PROMPT_LENGTH must be a positive integer, got {self.length!r}')
    if self.combine not in COMBINATIONS:
      raise PromptError(f'unknown prompt combination {self.combine!r}; expected one of {", ".join(COMBINATIONS)}')

  @property
  def task_names(self) -> tuple[str, ...]:
    return self.tasks

  @property
  def packing_slots(self) -> int:
    raise ConfigError(f'{type(self).__name__} gives each example its own task\'s prompt and a packed row holds '
                      'several examples: set PACK=False')

  def task_prompts(self, trainable: Params) -> Array:
    """Every task's prompt [T, P, d] (float32)."""
    raise NotImplementedError

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    """Row i gets task `task_ids[i]`'s prompt [P, d], inserted by `combine`."""
    del deterministic, rng
    ids = task_ids_or_error(task_ids, self)
    table = self.task_prompts(trainable)  # [T, P, d]
    return Hooks(inputs=gather_rows(table, ids, [table.shape[1]] * len(self.tasks), [self.combine] *
                                    len(self.tasks), eos_id=self.eos_id, dtype=self.config.dtype))

  def computed(self, trainable: Params) -> dict[str, np.ndarray]:
    """{task name: float32 [P, d]} on the host (sharded leaves are gathered: every process calls this)."""
    local = jax.tree.map(host.host_value, trainable)
    table = np.asarray(jax.device_get(self.task_prompts(local)), np.float32)
    return {name: table[i] for i, name in enumerate(self.tasks)}

  def numpy_copy(self, trainable: Params) -> dict[str, dict[str, np.ndarray]]:
    return {MULTITASK_FILE: {**self.computed(trainable), **registry.marker(FILE_KIND)}}

  def inference(self, trainable: Params) -> tuple[Method, Params]:
    """(PromptBank, its tree): each task's computed prompt as a plain prompt, task ids unchanged."""
    methods = {
        name: (self.plain(prompt.shape[0]), {PROMPT_KEY: prompt}) for name, prompt in self.computed(trainable).items()
    }
    return build_bank(methods, self.config, self.eos_id)

  def plain(self, length: int) -> PromptTuning:
    return PromptTuning(length=length, embed_dim=self.config.emb_dim, combine=self.combine, eos_id=self.eos_id,
                        dtype=self.config.dtype)


def _draw(init: Callable[..., Array], rng: Array, shape: tuple[int, ...], frozen: Params | None, what: str) -> Array:
  """One initialiser call `init(rng, shape, embedding)`, its shape checked."""
  embedding = None if frozen is None else frozen['token_embedder']['embedding']
  value = jnp.asarray(init(rng, shape, embedding), jnp.float32)
  if value.shape != shape:
    raise ConfigError(f'{what} initializer returned shape {value.shape}, expected {shape}')
  return value


def _per_task(init: Callable[..., Array], rng: Array, count: int, shape: tuple[int, ...], frozen: Params | None,
              what: str) -> Array:
  """[count, *shape]: one draw per task, each with its own rng."""
  return jnp.stack([_draw(init, k, shape, frozen, what) for k in jax.random.split(rng, count)])


@dataclasses.dataclass(frozen=True)
class MultiTaskPrompts(_MultiTask):
  """A shared prompt plus per-task parameters combined by `mode` (module docstring). `length` is the shared
  prompt's P_s; `task_length` P_t (concat only; None: P_s); `shared_features` d_s (concat_features: None is
  d // 2; project: None is d). `initializer` draws the shared prompt (None: U(-0.5, 0.5), prompt tuning's),
  `task_initializer` each task's prompt (None: U[0, 0.01), the reference's; project always uses that).

  Trainable tree: {'shared_prompt': [P_s, d_s], 'task_prompts': [T, P_t, d_t]} (project: 'task_kernel'
  [T, d_s, d] and 'task_bias' [T, d] instead of 'task_prompts').
  """
  mode: str = 'concat'
  task_length: int | None = None
  shared_features: int | None = None
  initializer: Callable[..., Array] | None = None
  task_initializer: Callable[..., Array] | None = None

  def __post_init__(self):
    self._check()
    d = self.config.emb_dim
    if self.mode not in MODES:
      raise ConfigError(f'multi-task prompt mode must be one of {", ".join(MODES)}, got {self.mode!r}')
    if self.task_length is not None and (self.mode != 'concat' and self.task_length != self.length):
      raise ConfigError(f'task_length={self.task_length} needs mode=\'concat\'; mode={self.mode!r} gives every '
                        f'task the shared prompt\'s length {self.length}')
    if not isinstance(self.rows, int) or self.rows <= 0:
      raise ConfigError(f'TASK_PROMPT_LENGTH must be a positive integer, got {self.task_length!r}')
    if self.shared_features is not None and self.mode not in ('concat_features', 'project'):
      raise ConfigError(f'shared_features is for mode concat_features or project, not {self.mode!r}')
    top = d - 1 if self.mode == 'concat_features' else None  # the task part needs at least one feature
    if not isinstance(self.features, int) or self.features <= 0 or (top is not None and self.features > top):
      bound = f'in [1, {top}]' if top is not None else 'positive'
      raise ConfigError(f'shared_features must be an integer {bound} for mode {self.mode!r} (model embedding '
                        f'{d}), got {self.shared_features!r}')
    if self.mode == 'project' and self.task_initializer is not None:
      raise ConfigError('mode=\'project\' draws its task kernels and biases from U[0, 0.01); unset '
                        'task_initializer')

  @property
  def rows(self) -> int:
    """P_t, the rows of each task's own part."""
    return self.task_length if self.task_length is not None else self.length

  @property
  def features(self) -> int:
    """d_s, the shared prompt's width."""
    if self.shared_features is not None:
      return self.shared_features
    return self.config.emb_dim // 2 if self.mode == 'concat_features' else self.config.emb_dim

  def layout(self) -> dict[str, nn.Partitioned]:
    """The trainable tree as boxed abstract leaves (shape, logical axes)."""
    t, d, p = len(self.tasks), self.config.emb_dim, self.length
    tree = {'shared_prompt': _leaf((p, self.features), SHARED_AXES)}
    if self.mode == 'project':
      tree['task_kernel'] = _leaf((t, self.features, d), (None, None, 'prompt_embed'))
      tree['task_bias'] = _leaf((t, d), (None, 'prompt_embed'))
    else:
      width = d - self.features if self.mode == 'concat_features' else d
      tree['task_prompts'] = _leaf((t, self.rows, width), TASK_AXES)
    return tree

  def abstract(self, network: Params) -> Params:
    del network
    return self.layout()

  def init(self, rng: Array, frozen: Params) -> Params:
    shapes = {k: tuple(v.value.shape) for k, v in self.layout().items()}
    shared_key, task_key = jax.random.split(rng)
    out = {
        'shared_prompt': _draw(self.initializer or uniform_init(0.5), shared_key, shapes['shared_prompt'],
                               frozen if self.initializer else None, 'shared prompt')
    }
    if self.mode == 'project':
      kernel_key, bias_key = jax.random.split(task_key)
      out['task_kernel'] = reference_task_init(kernel_key, shapes['task_kernel'])
      out['task_bias'] = reference_task_init(bias_key, shapes['task_bias'])
    else:
      init = self.task_initializer or reference_task_init
      out['task_prompts'] = _per_task(init, task_key, len(self.tasks), shapes['task_prompts'][1:],
                                      frozen if self.task_initializer else None, 'task prompt')
    return out

  def task_prompts(self, trainable: Params) -> Array:
    shared = jnp.asarray(trainable['shared_prompt'], jnp.float32)  # [P_s, d_s]
    count = len(self.tasks)
    if self.mode == 'project':  # every shared row through task t's affine map
      kernel, bias = (jnp.asarray(trainable[k], jnp.float32) for k in ('task_kernel', 'task_bias'))
      return jnp.einsum('ps,tsd->tpd', shared, kernel) + bias[:, None, :]
    tasks = jnp.asarray(trainable['task_prompts'], jnp.float32)  # [T, P_t, d_t]
    if self.mode == 'add':
      return shared[None] + tasks
    shared = jnp.broadcast_to(shared, (count,) + shared.shape)
    return jnp.concatenate([shared, tasks], axis=1 if self.mode == 'concat' else 2)


@dataclasses.dataclass(frozen=True)
class MultitaskPromptTuning(_MultiTask):
  """PEFT's multitask prompt tuning: task t's prompt = shared [P, d] * (cols[t] [P, r] @ rows[t] [r, d]).

  `initializer` draws the shared prompt (None: N(0, 1), PEFT's RANDOM init, a torch nn.Embedding's);
  cols and rows are N(0, task_init_std^2) (PEFT: 0.02), so every task's prompt starts near zero.
  """
  rank: int = 1
  task_init_std: float = 0.02
  initializer: Callable[..., Array] | None = None

  def __post_init__(self):
    self._check()
    if not isinstance(self.rank, int) or self.rank <= 0:
      raise ConfigError(f'MPT rank (num_ranks) must be a positive integer, got {self.rank!r}')
    if not self.task_init_std > 0:
      raise ConfigError(f'MPT task_init_std must be positive, got {self.task_init_std!r}')

  def abstract(self, network: Params) -> Params:
    del network
    t, p, r, d = len(self.tasks), self.length, self.rank, self.config.emb_dim
    return {
        'prompt_embeddings': _leaf((p, d), SHARED_AXES), 'prefix_task_cols': _leaf((t, p, r), (None, 'prompt', None)),
        'prefix_task_rows': _leaf((t, r, d), (None, None, 'prompt_embed'))
    }

  def init(self, rng: Array, frozen: Params) -> Params:
    shapes = {k: tuple(v.value.shape) for k, v in self.abstract(None).items()}
    shared_key, cols_key, rows_key = jax.random.split(rng, 3)
    init = self.initializer or initializers.normal(1.0)
    return {
        'prompt_embeddings': _draw(init, shared_key, shapes['prompt_embeddings'], frozen if self.initializer else None,
                                   'MPT shared prompt'),
        'prefix_task_cols': self.task_init_std * jax.random.normal(cols_key, shapes['prefix_task_cols']),
        'prefix_task_rows': self.task_init_std * jax.random.normal(rows_key, shapes['prefix_task_rows'])
    }

  def task_prompts(self, trainable: Params) -> Array:
    shared = jnp.asarray(trainable['prompt_embeddings'], jnp.float32)
    cols, rows = (jnp.asarray(trainable[k], jnp.float32) for k in ('prefix_task_cols', 'prefix_task_rows'))
    return shared[None] * jnp.matmul(cols, rows)  # [T, P, d]


# ------------------------------------------------------------------------------------ tasks, factories, files


def resolve_tasks(tasks: Any) -> tuple[str, ...]:
  """Task names in task-id order: a mixture (or its name) -> its tasks as seqio lists them (sorted by name),
  a task (or its name) -> itself, a list of names -> that list."""
  if tasks is None:
    raise ConfigError('a multi-task method needs `tasks`: a mixture name (e.g. %MIXTURE_OR_TASK_NAME) or a list '
                      'of task names')
  if isinstance(tasks, str) or hasattr(tasks, 'get_dataset'):
    import seqio  # pylint: disable=g-import-not-at-top  (slow: TF; only when a name must be looked up)

    from jaxprompt.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
    provider = tasks_lib.get_task(tasks) if isinstance(tasks, str) else tasks
    if isinstance(provider, seqio.Mixture):
      return tuple(t.name for t in provider.tasks)
    return (provider.name,)
  if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
    raise ConfigError(f'multi-task `tasks` must be a mixture or task name or a list of task names, got {tasks!r}')
  return tuple(tasks)


@gin.configurable(module='jaxprompt.methods')
def multitask_prompts(config: ModelConfig, eos_id: int = 1, *, tasks: Any = None, length: int = 50,
                      task_length: int | None = None, mode: str = 'concat', shared_features: int | None = None,
                      initializer: Callable[..., Array] | None = None, task_initializer: Callable[..., Array] |
                      None = None, combine: str = 'prefix') -> MultiTaskPrompts:
  """The factory of `METHOD = @jaxprompt.methods.multitask_prompts` (methods/multitask_prompts.gin): a shared
  `length`-row prompt and per-task parameters for each of `tasks` (`resolve_tasks`), combined by `mode`."""
  return MultiTaskPrompts(tasks=resolve_tasks(tasks), config=config, length=length, combine=combine, eos_id=eos_id,
                          mode=mode, task_length=task_length, shared_features=shared_features, initializer=initializer,
                          task_initializer=task_initializer)


@gin.configurable(module='jaxprompt.methods')
def multitask_prompt_tuning(config: ModelConfig, eos_id: int = 1, *, tasks: Any = None, length: int = 100,
                            rank: int = 1, task_init_std: float = 0.02, initializer: Callable[..., Array] | None = None,
                            combine: str = 'prefix') -> MultitaskPromptTuning:
  """The factory of `METHOD = @jaxprompt.methods.multitask_prompt_tuning` (methods/multitask_prompt_tuning.gin):
  PEFT's MPT over `tasks` (`resolve_tasks`), `length` rows, rank `rank` (PEFT's num_ranks)."""
  return MultitaskPromptTuning(tasks=resolve_tasks(tasks), config=config, length=length, combine=combine, eos_id=eos_id,
                               rank=rank, task_init_std=task_init_std, initializer=initializer)


def read_multitask_file(path: str, config: ModelConfig, eos_id: int = 1,
                        combine: str = 'prefix') -> dict[str, tuple[PromptTuning, dict[str, np.ndarray]]]:
  """{task name: (PromptTuning, {'prompt': float32 [P, d]})} of a `prompts.npz` a multi-task run wrote, in
  the file's order; `combine` is the training run's (the file holds arrays only)."""
  path = str(path)
  arrays = read_npz(path, what='multi-task prompts file')
  return prompts_by_task(arrays, registry.ReadContext(config, eos_id=eos_id, combine=combine, source=path))


def prompts_by_task(arrays: registry.Arrays,
                    context: registry.ReadContext) -> dict[str, tuple[PromptTuning, dict[str, np.ndarray]]]:
  """{task name: (PromptTuning, {'prompt': float32 [P, d]})} of a multi-task prompts file's arrays."""
  path, config, arrays = context.source, context.config, registry.unmarked(arrays)
  if not arrays:
    raise PromptError(f'multi-task prompts file {path} holds no prompt')
  out = {}
  for name, array in arrays.items():
    if array.ndim != 2 or array.shape[1] != config.emb_dim or not np.issubdtype(array.dtype, np.floating):
      raise PromptError(f'multi-task prompts file {path}: task {name!r} has a {array.dtype} array of shape '
                        f'{array.shape}; the model needs float [length, {config.emb_dim}]')
    if not np.isfinite(array).all():
      raise PromptError(f'multi-task prompts file {path}: task {name!r} has non-finite values (NaN/inf)')
    prompt = np.asarray(array, np.float32)
    out[name] = (PromptTuning(length=prompt.shape[0], embed_dim=config.emb_dim, combine=context.combine,
                              eos_id=context.eos_id, dtype=config.dtype), {PROMPT_KEY: prompt})
  return out


def bank_from_arrays(arrays: registry.Arrays, context: registry.ReadContext) -> tuple[Method, Params]:
  """A multi-task prompts file as what serves it: the prompt bank of its tasks (task ids in the file's order)."""
  return build_bank(prompts_by_task(arrays, context), context.config, context.eos_id)


def holds_task_prompts(arrays: registry.Arrays) -> bool:
  """True for a multi-task `prompts.npz`'s arrays: every one a 2-D [P, d] prompt, and not one prompt file's lone
  'prompt' (a prefix .npz holds 4-D '<kind>/key' tensors; a per-layer prompts .npz a 3-D 'layers')."""
  return bool(arrays) and set(arrays) != {PROMPT_KEY} and all(np.ndim(a) == 2 for a in arrays.values())


def is_multitask_file(path: str) -> bool:
  """True for a multi-task `prompts.npz`: its marker, or (written before markers) `holds_task_prompts`. An
  unreadable file is named a prompt file: what it holds is what this asks."""
  arrays = read_npz(str(path), what='prompt file')
  return registry.marker_key(FILE_KIND) in arrays or holds_task_prompts(arrays)


registry.register(
    registry.FileKind(
        FILE_KIND, MULTITASK_FILE, bank_from_arrays, 'a multi-task prompts .npz', holds=holds_task_prompts,
        peft='it holds every task of a multi-task run; a PEFT adapter holds one prompt: export it with --format '
        'file and serve it as a prompt bank (--prompt NAME=FILE)'))
