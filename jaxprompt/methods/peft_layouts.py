"""What PEFT's prompt-learning tensors mean for each model family (peft 0.21's `PeftModel.get_prompt` and
`PeftModelForCausalLM.forward` / `PeftModelForSeq2SeqLM.forward`, checked against transformers 5).

  family           task_type            submodules  prompt [P, d] stored as   prefix slots (key, value) of layer i
  encoder_decoder  SEQ_2_SEQ_LM         2           [2P, d]: two copies       (4i mod 2L, 4i+1 mod 2L)
  decoder_only     CAUSAL_LM            1           [P, d]                    (2i, 2i+1)
  encoder_only     SEQ_CLS / TOKEN_CLS  1           [P, d]                    (2i, 2i+1): the encoder_self prefix

A PREFIX_TUNING tensor is [P, 2L * token_dim]: PEFT views it [P, 2L, heads, token_dim / heads], repeats the 2L
axis `submodules` times, and gives layer i the i-th group of 2 * submodules slots (self-attention key and value,
then for T5 the cross-attention pair that transformers discards). So T5 decoder layers i and i + L/2 share their
rows when L is even; a causal LM's layers each have their own. A grouped-query model (config `num_key_value_heads`)
stores its prefix per key/value head: PEFT sets heads = num_key_value_heads and token_dim = head_dim x that.
PEFT gives the prefix to the model as past keys/values: T5's encoder ignores them, so only a decoder_self prefix
is representable; transformers puts them at positions 0..P-1 before the tokens (T5: the ordinary relative bias,
jaxprompt's relpos 'positions'; a causal LM: tokens from position P, prefix keys never rotated). A BERT / RoBERTa
(the encoder-only tasks, which carry a task head: `peft_heads`) takes an encoder_self prefix; its absolute positions
make relpos moot, and its tokens start at position P (`EncoderConfig.kv_prefix_shifts_positions`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxprompt.errors import PromptError

PREFIX_KIND = 'decoder_self'
PREFIX_RELPOS = 'positions'
PREFIX_TYPE = 'PREFIX_TUNING'


@dataclasses.dataclass(frozen=True)
class Task:
  """A PEFT task type: the jaxprompt family it serves, its `num_transformer_submodules`, the `PeftTarget.sizes`
  entry holding the depth of the stack a prompt enters (a prompt adapter's num_layers), a phrase for errors, the
  attention kind a PREFIX_TUNING adapter holds and the relpos it needs (None: any, absolute positions)."""
  name: str
  family: str
  submodules: int
  input_layers: str
  phrase: str
  prefix_kind: str = PREFIX_KIND
  prefix_relpos: str | None = PREFIX_RELPOS


SEQ_2_SEQ = Task('SEQ_2_SEQ_LM', 'encoder_decoder', 2, 'num_encoder_layers', 'an encoder-decoder (T5)')
CAUSAL = Task('CAUSAL_LM', 'decoder_only', 1, 'num_decoder_layers', 'a decoder-only causal LM')
_ENCODER = dict(family='encoder_only', submodules=1, input_layers='num_encoder_layers', prefix_kind='encoder_self',
                prefix_relpos=None)
SEQ_CLS = Task('SEQ_CLS', phrase='a BERT / RoBERTa with a sequence head', **_ENCODER)
TOKEN_CLS = Task('TOKEN_CLS', phrase='a BERT / RoBERTa with a tagging head', **_ENCODER)
TASKS = (SEQ_2_SEQ, CAUSAL)  # the tasks of a family without a head: one each
HEAD_TASKS = (SEQ_CLS, TOKEN_CLS)  # the encoder's, by its head (`peft_heads`)


def task_of_family(family: str | None) -> Task:
  """The PEFT task of a model family (None: T5, the family of sizes that name none)."""
  family = family or SEQ_2_SEQ.family
  for task in TASKS:
    if task.family == family:
      return task
  if family == SEQ_CLS.family:
    raise PromptError('an encoder-only model\'s PEFT adapter carries its task head (SEQ_CLS / TOKEN_CLS): export the '
                      'run that trained the head (jaxprompt export --checkpoint RUN --format peft)')
  raise PromptError(f'model family {family!r} has no PEFT prompt-learning task type (PEFT adapters exist for '
                    f'{", ".join(t.family for t in TASKS)})')


def _named(task_type: str | None) -> Task | None:
  """The task whose PEFT name is `task_type`, None for another name."""
  return next((t for t in TASKS + HEAD_TASKS if t.name == task_type), None)


def task_of(family: str | None, task_type: str | None = None) -> Task:
  """The task named `task_type` (an encoder's head tasks), else the task of `family` (`task_of_family`)."""
  if task_type is None:
    return task_of_family(family)
  task = _named(task_type)
  if task is None or task.family != (family or task.family):
    raise PromptError(f'task_type {task_type!r} is not a PEFT task of model family {family!r}')
  return task


def task_of_adapter(config: Mapping[str, Any], where: str) -> Task:
  """The task an adapter_config.json was made for: its task_type, else (PEFT's default) its number of
  submodules, 2 for SEQ_2_SEQ_LM and 1 otherwise."""
  name = config.get('task_type')
  submodules = config.get('num_transformer_submodules')
  task = _named(name)
  if task is None and name is not None:
    raise PromptError(f'{where}: task_type {name!r} is not one jaxprompt reads '
                      f'({", ".join(t.name for t in TASKS + HEAD_TASKS)})')
  if task is None:
    task = SEQ_2_SEQ if submodules == SEQ_2_SEQ.submodules else CAUSAL
  if submodules not in (None, task.submodules):
    raise PromptError(f'{where}: num_transformer_submodules is {submodules}, but a {task.name} adapter has '
                      f'{task.submodules}, the only layout whose layer mapping jaxprompt reads')
  return task


def check_task(task: Task, family: str, where: str) -> None:
  """Refuses (one PromptError) an adapter made for another model family than `family`'s."""
  if task.family == family:
    return
  wanted = [t for t in TASKS + HEAD_TASKS if t.family == family] or [task_of_family(family)]  # (raises)
  phrase = wanted[0].phrase if len(wanted) == 1 else 'a BERT / RoBERTa encoder'
  raise PromptError(f'{where} is a {task.name} adapter, made for {task.phrase}; this model is {phrase}, which reads '
                    f'{" / ".join(t.name for t in wanted)} adapters')


def prefix_slots(num_layers: int, task: Task = SEQ_2_SEQ) -> tuple[np.ndarray, np.ndarray]:
  """For each layer, its (key slot, value slot) along PEFT's 2L axis (module docstring). [L], [L]"""
  groups = np.concatenate([np.arange(2 * num_layers)] * task.submodules).reshape(num_layers, 2 * task.submodules)
  return groups[:, 0], groups[:, 1]


def prompt_tensor(prompt: np.ndarray, task: Task) -> np.ndarray:
  """An input prompt [P, d] as PEFT's `prompt_embeddings` [submodules * P, d] (the same rows in every copy)."""
  return np.concatenate([np.asarray(prompt, np.float32)] * task.submodules)


def prefix_tensor(rows: Mapping[str, tuple[Any, Any]], relpos: str, where: str, task: Task = SEQ_2_SEQ) -> np.ndarray:
  """jaxprompt prefix rows ({kind: (key, value)} [L, P, h, hd]) as PEFT's [P, L*2*h*hd] tensor, or one
  PromptError saying what PEFT cannot represent (`where` names the source)."""
  refuse = f'cannot export {where} as a PEFT {PREFIX_TYPE} adapter: '
  kind = task.prefix_kind
  others = sorted(set(rows) - {kind})
  if others:
    raise PromptError(
        refuse + f'it has {others} prefixes, but PEFT gives {task.phrase} its prefix as '
        f'past_key_values, which reach only its {kind} attention' +
        (" (T5's encoder ignores them, and PEFT discards the cross-attention part)" if task == SEQ_2_SEQ else ''))
  if kind not in rows:
    raise PromptError(refuse + f'it holds no {kind} prefix')
  if task.prefix_relpos is not None and relpos != task.prefix_relpos:
    raise PromptError(refuse + f"its relpos is {relpos!r}, but transformers' T5 gives past keys the relative-"
                      "position bias of positions 0..P-1 before the tokens: only relpos 'positions' is representable")
  key, value = (np.asarray(x, np.float32) for x in rows[kind])
  if key.ndim != 4 or key.shape != value.shape:
    raise PromptError(refuse + f'key {key.shape} and value {value.shape} must both be [layers, P, heads, head_dim]')
  layers, length, heads, head_dim = key.shape
  slots = np.zeros((2 * layers, length, heads, head_dim), np.float32)  # unused (cross) slots stay zero
  owner: dict[int, int] = {}
  for layer, (k_slot, v_slot) in enumerate(zip(*prefix_slots(layers, task))):
    for slot, part, array in ((k_slot, 'key', key), (v_slot, 'value', value)):
      first = owner.setdefault(int(slot), layer)
      if first != layer and not np.array_equal(slots[slot], array[layer]):
        raise PromptError(refuse + f'PEFT\'s seq2seq layout gives decoder layers {first} and {layer} of {layers} one '
                          f'shared prefix (layers i and i+L/2 for an even L), but their {part} rows differ; only a '
                          'prefix whose layers agree there (or a model with an odd number of decoder layers) is '
                          'representable')
      slots[slot] = array[layer]
  return slots.transpose(1, 0, 2, 3).reshape(length, 2 * layers * heads * head_dim)


def prefix_rows(tensor: np.ndarray, layers: int, heads: int, task: Task) -> tuple[np.ndarray, np.ndarray]:
  """PEFT's [P, L*2*token_dim] tensor as the task's prefix (key, value) rows [L, P, heads, token_dim / heads]."""
  length = tensor.shape[0]
  view = tensor.reshape(length, 2 * layers, heads, -1).transpose(1, 0, 2, 3)  # [2L, P, h, hd]
  key_slots, value_slots = prefix_slots(layers, task)
  return view[key_slots], view[value_slots]
