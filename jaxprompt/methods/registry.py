"""The inference files of the tuning methods, read back by what they hold, never by their suffix.

A method module whose `Method.numpy_copy` writes a file registers one `FileKind` beside it: the name of the file
it leaves in a checkpoint step dir, how its arrays are recognised, and `read(arrays, context) -> (method,
params)`. Reading a file is two steps:

  read_arrays   the container -> named arrays: a .npz's arrays; a .safetensors file's tensors, each metadata
                entry `<entry>: <value>` becoming the marker key `<entry>/<value>` (the .npz form of the same
                fact: a string array would need a pickle). The suffix chooses only the container.
  from_arrays   named arrays -> (method, params), by the kind that claims them:
                  1. a marker key `method/<kind name>` (int8 [0], `marker(name)`), which a method writes into its
                     file; a file may hold one at most;
                  2. else the kind whose `holds(arrays)` recognises the keys: how the files written before
                     markers existed are told apart (an input prompt {'prompt' [P, d]}; a prefix's
                     '<kind>/key' and 'relpos/<mode>'; per-layer prompts' 'layers' and 'mode/<mode>'; a
                     multi-task run's {task: [P, d]}). These predicates exclude each other.

`eval`, `infer`, `inspect`, `export` and prompt banks ask only this module, so a new method is one module (its
`register` call included) and one gin file. `export` asks a kind which suffixes its file is written as and how,
and how it becomes a Hugging Face PEFT adapter folder (or why it cannot); two methods writing the same step file
(prompt tuning's and P-tuning's prompt.npy) are told apart by `made_by`, from what the run trained.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from safetensors import safe_open

from jaxprompt.errors import PromptError
from jaxprompt.formats import npy_io
from jaxprompt.methods.base import Method, Params
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.hooks import STACK_OF_KIND

Arrays = Mapping[str, np.ndarray]
MARKER_KEY = 'method'  # reserved: `method/<kind name>` names the kind that wrote a file
_SKIPPED_METADATA = ('format',)  # safetensors' own bookkeeping (PEFT writes {'format': 'pt'}), not a marker


@dataclasses.dataclass(frozen=True)
class ReadContext:
  """What a file leaves to its reader: the frozen model's `config` (shapes are checked against it), the EOS id,
  an input prompt's combination mode and expected length (None: the file's), and the `source` errors name."""
  config: ModelConfig
  eos_id: int = 1
  combine: str = 'prefix'
  prompt_length: int | None = None
  source: str = 'prompt file'


@dataclasses.dataclass(frozen=True)
class PeftTarget:
  """What `export --format peft` writes besides the arrays: the adapter folder `output`, the `source` errors name,
  the frozen model's `sizes` it knows (`model_sizes`, from gin's MODEL_CONFIG, or the step's fingerprint's
  T5Config fields; any may be missing, and no 'family' means T5), `base_model` (base_model_name_or_path) and the
  `fingerprint` to record. An encoder run's head (`peft_heads`): its `task_type` (SEQ_CLS / TOKEN_CLS; None: the
  family's) and the `modules` PEFT saves beside the prompt (modules_to_save tensors by their adapter-file names)."""
  output: str
  source: str
  sizes: Mapping[str, Any]
  base_model: str | None = None
  fingerprint: Mapping[str, Any] | None = None
  task_type: str | None = None
  modules: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """What a training run says about its method: the top-level names of its trainable tree (None when its state
  is unreadable) and its config.gin text ('' when absent)."""
  trainable: frozenset[str] | None = None
  config_gin: str = ''


def model_sizes(config: ModelConfig) -> dict[str, Any]:
  """The `PeftTarget.sizes` of a model: its family, emb_dim, num_heads, num_kv_heads, head_dim, and the depth of
  each stack as `num_<stack>_layers` (T5Config's names: num_encoder_layers, num_decoder_layers)."""
  stacks = dict.fromkeys([config.input_stack] + [STACK_OF_KIND[k] for k in config.attention_kinds])
  sizes = {k: getattr(config, k) for k in ('family', 'emb_dim', 'num_heads', 'num_kv_heads', 'head_dim')}
  return {**sizes, **{f'num_{stack}_layers': config.stack_depth(stack) for stack in stacks}}


Reader = Callable[[Arrays, ReadContext], tuple[Method, Params]]
Writer = Callable[[Arrays, str], str]  # (arrays, path) -> the path written
PeftWriter = Callable[[Arrays, PeftTarget], tuple[str, list[int]]]  # writes the folder -> (peft_type, shape)
# (arrays, the method and params read from the step's main file, context) -> (method, params) with this file joined
Joiner = Callable[[Arrays, Method, Params, ReadContext], tuple[Method, Params]]
NO_PEFT = ("PEFT's prompt-learning adapters hold an input prompt or a K/V prefix, and this file is neither; use "
           '--format file')


@dataclasses.dataclass(frozen=True)
class FileKind:
  """One method's inference file: `name` (its marker), `step_file` (its `numpy_copy` name in a checkpoint step
  dir), `read` (arrays without markers of this module -> (method, params) checked against the context),
  `describe` (for the error naming what a file could be), and `holds` (recognises files without a marker).

  What `export` needs: `suffixes`, what the file is written as (`--output`'s suffix), by `write` (None: an .npz
  with the kind's marker); `peft`, the writer of a PEFT adapter folder, or the one-line reason there is none;
  `made_by`, for a kind writing another kind's step file, whether a run's method is this kind's.

  `joins`: the file accompanies another kind's file in a step dir (a task head beside its method's prompt): read
  after that file, it turns its (method, params) into the joined pair (`join_file`); read alone, by `read`."""
  name: str
  step_file: str
  read: Reader
  describe: str
  holds: Callable[[Arrays], bool] | None = None
  suffixes: tuple[str, ...] = ('.npz',)
  write: Writer | None = None
  peft: PeftWriter | str = NO_PEFT
  made_by: Callable[[TrainedRun], bool] | None = None
  joins: Joiner | None = None


_KINDS: dict[str, FileKind] = {}


def register(kind: FileKind) -> FileKind:
  """Adds `kind` (replacing one of the same name: a module imported again); returns it."""
  if not kind.name or '/' in kind.name:
    raise PromptError(f'a method file kind needs a name without "/", got {kind.name!r}')
  _KINDS[kind.name] = kind
  return kind


def kinds() -> tuple[FileKind, ...]:
  """Every registered kind, in registration order."""
  return tuple(_KINDS.values())


def step_files() -> tuple[str, ...]:
  """The file names a training step may leave beside its checkpoint (`Method.numpy_copy`): the main files first,
  then the files that join one (`FileKind.joins`), so the first one a step dir holds is its method's."""
  ordered = sorted(_KINDS.values(), key=lambda k: k.joins is not None)
  return tuple(dict.fromkeys(k.step_file for k in ordered))


def joining_files() -> tuple[str, ...]:
  """The step file names of the kinds that join another kind's file (a step dir's task head)."""
  return tuple(dict.fromkeys(k.step_file for k in _KINDS.values() if k.joins is not None))


def join_file(method: Method, params: Params, path: str | os.PathLike, context: ReadContext) -> tuple[Method, Params]:
  """(method, params) read from a step's main file, with the joining file at `path` (`joining_files`) added."""
  path = os.fspath(path)
  arrays = read_arrays(path)
  kind = kind_of(arrays, path)
  if kind.joins is None:
    raise PromptError(f'{path}: holds a {kind.name} file, which is a method of its own, not one joining another')
  return kind.joins(unmarked(arrays), method, params, dataclasses.replace(context, source=path))


def marker_key(name: str) -> str:
  """The key of kind `name`'s marker: 'method/<name>'."""
  return f'{MARKER_KEY}/{name}'


def marker(name: str) -> dict[str, np.ndarray]:
  """The marker array a method of kind `name` writes into its file: {'method/<name>': int8 [0]}."""
  return {marker_key(name): np.zeros((0,), np.int8)}


def kind_of(arrays: Arrays, source: str) -> FileKind:
  """The kind that claims `arrays` (module docstring), or one PromptError naming `source` and the kinds known."""
  named = [k.split('/', 1)[1] for k in arrays if k.startswith(MARKER_KEY + '/')]
  if len(named) > 1:
    raise PromptError(f'{source}: holds {len(named)} method markers {sorted(named)}; a file holds one at most')
  if named:
    if named[0] not in _KINDS:
      raise PromptError(f'{source}: written by method file kind {named[0]!r}, which is not registered (known: '
                        f'{", ".join(_KINDS)}); import the module that defines it')
    return _KINDS[named[0]]
  for kind in _KINDS.values():
    if kind.holds is not None and kind.holds(arrays):
      return kind
  expected = ', '.join(k.describe for k in _KINDS.values() if k.made_by is None)
  raise PromptError(f'{source}: unknown kind of prompt file (keys {sorted(arrays)}); expected {expected}')


def trained_kind(kind: FileKind, run: TrainedRun) -> FileKind:
  """`kind`, or the kind writing the same step file whose `made_by` says `run`'s method is its own."""
  return next(
      (k for k in _KINDS.values() if k.step_file == kind.step_file and k.made_by is not None and k.made_by(run)), kind)


def unmarked(arrays: Arrays) -> dict[str, np.ndarray]:
  """The arrays without a method marker (what a kind's reader checks)."""
  return {k: v for k, v in arrays.items() if not k.startswith(MARKER_KEY + '/')}


def from_arrays(arrays: Arrays, context: ReadContext) -> tuple[Method, Params]:
  """(method, params) of a file's named arrays, read by the kind that claims them (its marker removed)."""
  return kind_of(arrays, context.source).read(unmarked(arrays), context)


def write(kind: FileKind, arrays: Arrays, path: str) -> str:
  """Writes a kind's arrays to `path` (its suffix one of `kind.suffixes`; the kind's `write`, else an .npz with
  the kind's marker); returns the path."""
  if kind.write is not None:
    return kind.write(arrays, path)
  return npy_io.write_npz({**arrays, **marker(kind.name)}, path, what=f'{kind.name} file')


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The named arrays of a .npz or .safetensors file (module docstring); never unpickles."""
  path = os.fspath(path)
  if path.endswith('.npz'):
    return npy_io.read_npz(path, what='prompt file')
  if not path.endswith('.safetensors'):
    raise PromptError(f'prompt file {path}: unknown kind; expected a .npy, .npz or .safetensors file (or a PEFT '
                      'adapter folder)')
  if '://' not in path and not os.path.exists(path):
    raise PromptError(f'prompt file {path} does not exist')
  try:
    with safe_open(path, framework='np') as f:
      metadata: dict[str, Any] = f.metadata() or {}
      arrays = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # not a safetensors file, or damaged
    raise PromptError(f'cannot load prompt file {path} as .safetensors ({e})') from e
  for entry, value in metadata.items():
    if entry not in _SKIPPED_METADATA:
      arrays[f'{entry}/{value}'] = np.zeros((0,), np.int8)
  return arrays
