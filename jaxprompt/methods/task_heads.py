"""Per-task heads beside a multi-task method or a prompt bank (the encoder-only family's): `WithTaskHeads(inner,
heads)`, each row's prompt (or K/V prefix) and head its task's (`jaxprompt.models.task_heads`).

`inner` serves several tasks: multi-task training's `multitask_prompts` / `multitask_prompt_tuning`, or a
`PromptBank` of trained prompts and prefixes; its `task_names` are the heads' tasks, in the same order. The
trainable tree is the inner method's plus `{'head': {<task>: that task's head tree}}`: `WithHead`'s one tree, one
head per task, so the train step, checkpoints and the sharded steps are unchanged, and a multi-task loss reaches
only the batch's tasks' heads (`EncoderOnlyModel.loss_fn` weighs each head on its own rows).

Files (`numpy_copy`): the inner method's own (a multi-task run's `prompts.npz`), and a pair per task,
`<task>.<its prompt file>` (`prompt.npy`, `prefix.npz` ...: the task's prompt as its one-task method writes it) and
`<task>.head.npz` (`WithHead`'s head file), so any task is taken away as two small files and served alone
(`read_pair`: the same prompt + head a single-task run leaves as `prompt.npy` + `head.npz`). Every file of a step
dir shares its `fingerprint.json`. Banks of single-task runs, each a method file and its head file:
`build_head_bank`.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import flax.linen as nn
import gin
import jax

from jaxprompt.data import task_heads
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats import npy_io
from jaxprompt.formats.keys import PROMPT_KEY
from jaxprompt.methods import prompt_bank, registry
from jaxprompt.methods.base import Array, Method, Params
from jaxprompt.methods.with_head import _HEAD_SALT, HEAD_FILE, WithHead
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.heads import HeadConfig, init_head
from jaxprompt.models.task_heads import TaskHeads
from jaxprompt.parallel import host


def task_file(task: str, name: str) -> str:
  """The name of task `task`'s copy of a one-task file `name` in a step dir: '<task>.<name>'."""
  return f'{task}.{name}'


@dataclasses.dataclass(frozen=True)
class WithTaskHeads(WithHead):
  """A multi-task `inner` (its `task_names`) and one head per task (`head`: TaskHeads, the same tasks in order)."""
  head: TaskHeads = dataclasses.field()

  def __post_init__(self):
    if self.inner is None or not self.inner.task_names:
      raise ConfigError('per-task heads need a method serving several tasks (multitask_prompts, '
                        f'multitask_prompt_tuning or a prompt bank), got {type(self.inner).__name__}')
    if self.inner.head is not None:
      raise ConfigError(f'{type(self.inner).__name__} already trains a task head; give WithTaskHeads the method alone')
    if not isinstance(self.head, TaskHeads):
      raise ConfigError(f'WithTaskHeads.head must be a TaskHeads, got {type(self.head).__name__}')
    if tuple(self.inner.task_names) != self.head.tasks:
      raise ConfigError(f'per-task heads are for tasks {list(self.head.tasks)} but {type(self.inner).__name__} serves '
                        f'{list(self.inner.task_names)}: one head per task, in task-id order')

  @classmethod
  def for_config(cls, config: ModelConfig, inner: Method | None, head: TaskHeads) -> WithTaskHeads:
    """The heads for `config`'s width and dtypes, refused (one ConfigError) when one reads a pooler it lacks."""
    head.check_network(bool(getattr(config, 'pooler', False)), type(config).__name__)
    return cls(inner, head, config.emb_dim, config.dtype, config.param_dtype)

  def _heads(self, rng: Array | None) -> dict:
    """{task: its head's boxed parameters}: each drawn from `rng` folded with its task id (None: abstract)."""
    out = {}
    for i, (task, config) in enumerate(self.head.items()):
      key = None if rng is None else jax.random.fold_in(jax.random.fold_in(rng, _HEAD_SALT), i)
      out[task] = init_head(config, self.emb_dim, self.dtype, self.param_dtype, key)
    return out

  def init(self, rng: Array, frozen: Params) -> Params:
    return self._joined(self.inner.init(rng, frozen), nn.meta.unbox(self._heads(rng)))

  def abstract(self, network: Params) -> Params:
    return self._joined(self.inner.abstract(network), self._heads(None))

  def inference(self, trainable: Params) -> tuple[WithTaskHeads, Params]:
    """The inner method's inference form (a multi-task method's: its prompt bank), the heads unchanged."""
    inner, heads = self.split(trainable)
    method, params = self.inner.inference(inner)
    return dataclasses.replace(self, inner=method), self._joined(dict(params), heads)

  def single(self, trainable: Params, task: str) -> tuple[WithHead, Params]:
    """Task `task`'s one-task method (its prompt or prefix and its head) and parameters: the task served alone."""
    return self._one(*self.inference(trainable), task)

  @staticmethod
  def _one(served: WithTaskHeads, params: Params, task: str) -> tuple[WithHead, Params]:
    """`single` of an inference-form method `served` (its inner a prompt bank) and its `params`."""
    if not isinstance(served.inner, prompt_bank.PromptBank):
      raise PromptError(f'{type(served.inner).__name__} is not served as a prompt bank: its tasks cannot run alone')
    if task not in served.head.tasks:
      raise PromptError(f'no task {task!r} here; the tasks are {list(served.head.tasks)}')
    inner, heads = served.split(params)
    method, one = prompt_bank.single(served.inner, inner, task)
    head = served.head.configs[served.head.tasks.index(task)]
    wrapped = WithHead(method, head, served.emb_dim, served.dtype, served.param_dtype)
    return wrapped, wrapped._joined(dict(one), heads[task])  # pylint: disable=protected-access

  def numpy_copy(self, trainable: Params) -> dict:
    """The inner method's files and each task's pair (module docstring)."""
    local = jax.tree.map(host.host_value, trainable)
    files = dict(self.inner.numpy_copy(self.split(local)[0]) or {})
    served, params = self.inference(local)
    for task in self.head.tasks:
      method, one = self._one(served, params, task)
      for name, value in method.numpy_copy(one).items():
        files[task_file(task, name)] = value
    return files


def build_head_bank(methods: Mapping[str, tuple[Method, Params]], config: ModelConfig,
                    eos_id: int = 1) -> tuple[WithTaskHeads, dict]:
  """(bank with per-task heads, its tree) of named single-task runs `{task: (WithHead, params)}`, task ids in this
  order: each row gets its task's prompt or K/V prefix and its task's head, whatever the prompts' lengths."""
  inners, heads, head_params = {}, {}, {}
  for name, (method, params) in methods.items():
    if not isinstance(method, WithHead) or isinstance(method, WithTaskHeads) or method.inner is None:
      raise PromptError(f'prompt {name!r}: a bank with heads holds one-task runs with a prompt or prefix and a head '
                        f'(WithHead with a method), got {type(method).__name__}' +
                        (' without a method' if isinstance(method, WithHead) else ''))
    inner, head_params[name] = method.split(params)
    inners[name], heads[name] = (method.inner, inner), method.head
  bank, tree = prompt_bank.build_bank(inners, config, eos_id)
  # Input prompts may differ in length, tagging tasks' too: each row's tokens start behind its own prompt, and
  # a tagging head reads them there (`jaxprompt.models.token_rows`).
  wrapped = WithTaskHeads.for_config(config, bank, TaskHeads.of(heads))
  return wrapped, wrapped._joined(tree, head_params)  # pylint: disable=protected-access


def task_alone(method: Method, params: Params, task: str) -> tuple[Method, Params]:
  """Task `task` of a multi-task method (its prompt bank form) served alone: its prompt, and its head when the
  tasks have heads."""
  if isinstance(method, WithTaskHeads):
    return method.single(params, task)
  return prompt_bank.single(method, params, task)


def bank_of(methods: Mapping[str, tuple[Method, Params]], config: ModelConfig,
            eos_id: int = 1) -> tuple[Method, Params]:
  """The prompt bank of named (method, params): with per-task heads when any method trains a head (an encoder's
  runs), else `prompt_bank.build_bank`'s."""
  if any(method.head is not None for method, _ in methods.values()):
    return build_head_bank(methods, config, eos_id)
  return prompt_bank.build_bank(methods, config, eos_id)


def read_file(path: str | os.PathLike, context: registry.ReadContext) -> tuple[Method, Params]:
  """(method, params) of any method's file (a prompt .npy included), checked against `context.config`."""
  path = os.fspath(path)
  context = dataclasses.replace(context, source=path)
  if path.endswith('.npy'):
    return registry.from_arrays({PROMPT_KEY: npy_io.read_npy(path)}, context)
  return registry.from_arrays(registry.read_arrays(path), context)


def read_pair(method_file: str | os.PathLike, head_file: str | os.PathLike,
              context: registry.ReadContext) -> tuple[WithHead, Params]:
  """(WithHead, params) of a method's file and its head file: a single-task run's `prompt.npy` + `head.npz` (or
  `prefix.npz` ...), or one task's pair of a multi-task run (`<task>.prompt.npy` + `<task>.head.npz`)."""
  method, params = read_file(method_file, context)
  method, params = registry.join_file(method, params, head_file, context)
  if not isinstance(method, WithHead):
    raise PromptError(f'{os.fspath(head_file)}: not a task head file')
  return method, params


def read_task_heads(method: Method, params: Params, folder: str | os.PathLike, context: registry.ReadContext, *,
                    prefix: str = '') -> tuple[WithTaskHeads, Params]:
  """A multi-task method read from a step dir `folder` (its `prompts.npz`; a run dir's `final_prompts.npz` with
  `prefix` 'final_') with each task's `<prefix><task>.head.npz` beside it joined: the bank with per-task heads."""
  heads, head_params = {}, {}
  for task in method.task_names:
    name = prefix + task_file(task, HEAD_FILE)
    path = os.path.join(os.fspath(folder), name)
    if not os.path.exists(path):
      raise PromptError(f'{os.fspath(folder)}: no head file {name} for task {task!r} (a multi-task run with heads '
                        'writes one per task)')
    head, one = registry.join_file(method, params, path, context)
    heads[task], head_params[task] = head.head, head.split(one)[1]
  wrapped = WithTaskHeads.for_config(context.config, method, TaskHeads.of(heads))
  return wrapped, wrapped._joined(dict(params), head_params)  # pylint: disable=protected-access


@gin.configurable(module='jaxprompt.methods')
def with_task_heads(config: ModelConfig, eos_id: int = 1, *, method=None, heads: Mapping[str, Mapping] | None = None,
                    use_pooler: bool = False, dropout: float = 0.1) -> WithTaskHeads:
  """`METHOD = @jaxprompt.methods.with_task_heads`: a multi-task `method` factory (e.g.
  `@jaxprompt.methods.multitask_prompts`) and one head per task of the method, in its task order.

  `heads` {task: HeadConfig fields, e.g. {'kind': 'regression'}}: given per task, or None to take each task's own
  kind and label count (a registered label or tagging task, `data.task_heads.head_labels`); `use_pooler` and
  `dropout` are every head's unless its entry says otherwise. A given kind or label count is checked against the
  task's (`data.task_heads.num_labels`)."""
  if method is None:
    raise ConfigError('with_task_heads needs method=@<a multi-task method> (e.g. heads/multitask.gin after '
                      'methods/multitask_prompts.gin)')
  inner = method(config, eos_id)
  if heads is None:
    unknown = [t for t in inner.task_names if task_heads.head_labels(t) is None]
    if unknown:
      raise ConfigError(f'with_task_heads: tasks {unknown} are no label or tagging tasks, so their heads cannot be '
                        "read from them: give heads={task: {'kind': ..., 'num_labels': ...}}")
    heads = {t: {'kind': task_heads.head_labels(t).kind} for t in inner.task_names}
  missing = [t for t in inner.task_names if t not in heads]
  if missing or len(heads) != len(inner.task_names):
    raise ConfigError(f'with_task_heads: heads are for {sorted(heads)} but the method trains tasks '
                      f'{list(inner.task_names)}: give one head per task')
  configs = {}
  for task in inner.task_names:
    fields = {'use_pooler': use_pooler, 'dropout': dropout, **dict(heads[task])}
    kind = fields.pop('kind', 'classification')
    fields['num_labels'] = task_heads.num_labels(task, kind, fields.get('num_labels'))
    configs[task] = HeadConfig(kind, **fields)
  return WithTaskHeads.for_config(config, inner, TaskHeads.of(configs))
