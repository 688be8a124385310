"""The method file registry (`jaxprompt.methods.registry`): a method defined only here registers its file kind,
writes its file, and the loader `eval` / `infer` / `inspect` use (`commands.prompt_files.load_tuned`) reads it
back; a prompt bank built from it serves it and `export` writes or refuses it as its kind says; every built-in
method's .npz / .safetensors file carries its marker; no file of `commands/` or `methods/prompt_bank.py` names a
concrete method class, and the `Tuning` protocol lists what the trainer reads of a method."""
from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.commands import bank_files, prompt_files
from jaxprompt.commands import export as export_lib
from jaxprompt.errors import PromptError, UsageError
from jaxprompt.formats.npy_io import write_npy, write_npz
from jaxprompt.methods import prompt_bank, registry
from jaxprompt.methods.base import Array, BankRows, Method, Params
from jaxprompt.methods.multitask import multitask_prompt_tuning, multitask_prompts
from jaxprompt.methods.p_tuning import p_tuning
from jaxprompt.methods.per_layer_prompts import per_layer_prompts
from jaxprompt.methods.prefix_tuning import p_tuning_v2, prefix_tuning, write_prefix_file
from jaxprompt.methods.prompt_tuning import PromptInput, PromptTuning, prompt_tuning
from jaxprompt.models.base import Tuning
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.models.hooks import Hooks
from tests.helpers import REPO
from tests.method_helpers import random_batch

CFG = get_config('t5x_tiny')
NAME = 'scaled_prompt'
STEP_FILE = 'scaled_prompt.npz'


@dataclasses.dataclass(frozen=True)
class ScaledPrompt(Method):
  """A test-only input-prompt method: the prompt is `base` [P, d] times a learned scalar `scale`."""
  length: int
  embed_dim: int
  eos_id: int = 1

  def init(self, rng: Array, frozen: Params) -> Params:
    del frozen
    return {
        'base': jax.random.uniform(rng, (self.length, self.embed_dim), jnp.float32, -0.5, 0.5),
        'scale': jnp.asarray(2.0, jnp.float32)
    }

  def abstract(self, network: Params) -> Params:
    raise NotImplementedError  # not trained here

  def prompt(self, trainable: Params) -> np.ndarray:
    return np.asarray(trainable['base'], np.float32) * np.float32(trainable['scale'])

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    del deterministic, rng, task_ids
    prompt = jnp.asarray(trainable['base']) * jnp.asarray(trainable['scale'])
    return Hooks(inputs=PromptInput(prompt, 'prefix', self.eos_id))

  def numpy_copy(self, trainable: Params) -> dict[str, Any]:
    arrays = {'base': np.asarray(trainable['base'], np.float32), 'scale': np.asarray(trainable['scale'], np.float32)}
    return {STEP_FILE: {**arrays, **registry.marker(NAME)}}

  def bank_rows(self, trainable: Params) -> BankRows:
    return BankRows(prompt=self.prompt(trainable), combine='prefix')

  def from_bank_rows(self, rows: BankRows) -> Params:
    return {'base': rows.prompt, 'scale': np.float32(1.0)}

  @classmethod
  def from_arrays(cls, arrays: registry.Arrays, context: registry.ReadContext) -> tuple[ScaledPrompt, Params]:
    base = np.asarray(arrays['base'], np.float32)
    if base.shape[1:] != (context.config.emb_dim,):
      raise PromptError(f'{context.source}: base {base.shape} does not fit embed {context.config.emb_dim}')
    return cls(base.shape[0], context.config.emb_dim, context.eos_id), {'base': base, 'scale': arrays['scale']}


# What the method's module does on import: its file kind, found by the marker it writes (no `holds`).
registry.register(registry.FileKind(NAME, STEP_FILE, ScaledPrompt.from_arrays, 'a scaled prompt .npz'))


@pytest.fixture(scope='module')
def frozen(fixtures_dir):
  return load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))


@pytest.fixture(scope='module')
def trained():
  method = ScaledPrompt(3, CFG.emb_dim)
  return method, jax.tree.map(np.asarray, method.init(jax.random.PRNGKey(0), None))


def _load(*, prompt_file=None, checkpoint=None):
  return prompt_files.load_tuned(prompt_file=prompt_file, checkpoint=checkpoint, step=None, prompt_length=None,
                                 config=CFG)


def _logits(method, frozen, params, batch):
  return np.asarray(jax.jit(build_model(CFG, method).logits)(frozen, params, batch))


def test_a_method_reads_back_the_file_it_writes(trained, frozen, tmp_path):
  method, params = trained
  (name, arrays), = method.numpy_copy(params).items()
  path = write_npz(arrays, tmp_path / name)
  loaded, back = _load(prompt_file=path)
  assert loaded == method
  jax.tree.map(np.testing.assert_array_equal, back, params)
  batch = random_batch()
  np.testing.assert_allclose(_logits(loaded, frozen, back, batch), _logits(method, frozen, params, batch))
  # The same file in a training step's numpy dir: found through `registry.step_files`.
  step_dir = tmp_path / 'run' / 'numpy_checkpoints' / 'checkpoint_3'
  write_npz(arrays, step_dir / name)
  assert prompt_files.step_file(str(step_dir)) == str(step_dir / name)
  loaded, back = _load(checkpoint=str(step_dir))
  assert loaded == method
  # .safetensors: the marker is a metadata entry, {'method': 'scaled_prompt'}.
  tensors = {k: np.array(v) for k, v in arrays.items() if not k.startswith(registry.MARKER_KEY)}  # marker: metadata
  save_file(tensors, str(tmp_path / 'scaled.safetensors'), metadata={'method': NAME, 'format': 'np'})
  loaded, back = _load(prompt_file=str(tmp_path / 'scaled.safetensors'))
  assert loaded == method
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_a_prompt_bank_serves_the_new_method(trained, frozen, tmp_path):
  method, params = trained
  (name, arrays), = method.numpy_copy(params).items()
  ours = write_npz(arrays, tmp_path / name)
  other = PromptTuning(length=5, embed_dim=CFG.emb_dim)
  other_prompt = np.random.RandomState(1).uniform(-0.5, 0.5, other.shape).astype(np.float32)
  theirs = write_npy(other_prompt, tmp_path / 'other.npy')
  bank, tree = bank_files.load_bank({'scaled': ours, 'plain': theirs}, config=CFG)
  assert bank.task_names == ('scaled', 'plain')
  batch = dict(random_batch(batch=4), task_ids=np.asarray([0, 1, 1, 0], np.int32))
  mixed = _logits(bank, frozen, tree, batch)
  alone = {k: v for k, v in batch.items() if k != 'task_ids'}
  rows = np.asarray([0, 3])
  want = _logits(method, frozen, params, {k: v[rows] for k, v in alone.items()})
  np.testing.assert_allclose(mixed[rows], want, atol=1e-5, rtol=1e-5)
  # Run alone from the bank: the method it came from, holding the computed prompt.
  again, again_params = prompt_bank.single(bank, tree, 'scaled')
  assert type(again) is ScaledPrompt
  np.testing.assert_allclose(again.prompt(again_params), method.prompt(params), rtol=1e-6)


def test_markers_and_unknown_files_give_one_clear_error(tmp_path):
  two = {'base': np.zeros((2, CFG.emb_dim), np.float32), **registry.marker(NAME), **registry.marker('prompt')}
  with pytest.raises(PromptError, match=r"holds 2 method markers \['prompt', 'scaled_prompt'\]"):
    registry.from_arrays(two, registry.ReadContext(CFG, source='two.npz'))
  unknown = {'base': np.zeros((2, CFG.emb_dim), np.float32), **registry.marker('nobody')}
  with pytest.raises(PromptError, match=r"odd.npz: written by method file kind 'nobody', which is not registered"):
    registry.from_arrays(unknown, registry.ReadContext(CFG, source='odd.npz'))
  path = write_npz({'x': np.zeros((2, 3, 4), np.float32)}, tmp_path / 'x.npz')
  with pytest.raises(
      PromptError, match=r"x.npz: unknown kind of prompt file \(keys \['x'\]\); expected .*a prompt "
      r'.npy.*, a scaled prompt .npz'):
    _load(prompt_file=path)
  assert STEP_FILE in registry.step_files()
  # A damaged file is named for what it is known to be, a prompt file (not, say, a multi-task prompts file).
  prefix = write_npz({'cross/key': np.zeros((2, 3, 4, 8), np.float32)}, tmp_path / 'prefix.npz')
  truncated = tmp_path / 'truncated.npz'
  truncated.write_bytes(pathlib.Path(prefix).read_bytes()[:100])
  with pytest.raises(PromptError, match=r'prompt file .*truncated.npz is truncated or damaged: not a readable .npz') \
      as info:
    _load(prompt_file=str(truncated))
  assert 'multi-task' not in str(info.value)


def test_export_writes_and_refuses_by_the_files_kind(trained, tmp_path):
  """`export` of the test-only method's step: the suffix and writer its kind gives (an .npz with its marker), and
  the default refusal of a PEFT adapter; export.py itself asks the registry, never a method module."""
  method, params = trained
  (name, arrays), = method.numpy_copy(params).items()
  step_dir = str(tmp_path / 'run' / 'numpy_checkpoints' / 'checkpoint_3')
  write_npz(arrays, f'{step_dir}/{name}')
  written = export_lib.export(str(tmp_path / 'out.npz'), checkpoint=step_dir)
  assert sorted(registry.read_arrays(written['output'])) == sorted(arrays) and written['shapes']['base'] == [3, 32]
  with pytest.raises(UsageError, match=r'scaled_prompt.npz of .*checkpoint_3 exports as .npz; got --output .*out.npy'):
    export_lib.export(str(tmp_path / 'out.npy'), checkpoint=step_dir)
  with pytest.raises(PromptError,
                     match=r'cannot export .*scaled_prompt.npz as a PEFT adapter: .* this file is neither'):
    export_lib.export(str(tmp_path / 'adapter'), checkpoint=step_dir, format='peft')
  imports = re.findall(r'^from jaxprompt\.methods(\S*) import (.+)$',
                       (REPO / 'jaxprompt/commands/export.py').read_text(), re.M)
  assert imports == [('', 'registry')]


BUILT_IN = {  # every built-in method, small
    'prompt_tuning': lambda: prompt_tuning(CFG, length=2),
    'p_tuning': lambda: p_tuning(CFG, length=2, encoder='mlp', hidden=8),
    'prefix_tuning': lambda: prefix_tuning(CFG, length=2, hidden=8),
    'p_tuning_v2': lambda: p_tuning_v2(CFG, length=2),
    'per_layer_prompts': lambda: per_layer_prompts(CFG, length=2),
    'multitask_prompts': lambda: multitask_prompts(CFG, tasks=['a', 'b'], length=2),
    'multitask_prompt_tuning': lambda: multitask_prompt_tuning(CFG, tasks=['a', 'b'], length=2),
}


def test_every_builtin_file_carries_its_marker(frozen, tmp_path):
  """Each built-in method's .npz (and a prefix's .safetensors) is recognised by its marker alone, still by its keys
  without it (files written before markers), and reads back; an input prompt stays a plain [P, d] .npy."""
  rng = np.random.RandomState(0)
  for name, factory in BUILT_IN.items():
    method = factory()
    shapes = jax.eval_shape(method.init, jax.random.PRNGKey(0), frozen)  # traced, not run: random values suffice
    params = jax.tree.map(lambda s: rng.uniform(-0.5, 0.5, s.shape).astype(s.dtype), shapes)
    (file, value), = method.numpy_copy(params).items()
    if not isinstance(value, Mapping):
      assert np.load(write_npy(value, tmp_path / name / file)).shape == (2, CFG.emb_dim), name
      continue
    paths = [write_npz(value, tmp_path / name / file)]
    if name == 'prefix_tuning':
      paths.append(write_prefix_file(tmp_path / name / 'prefix.safetensors', method, params))
    for path in paths:
      arrays = registry.read_arrays(path)
      kind = registry.kind_of(arrays, path)
      assert [k for k in arrays if k.startswith(registry.MARKER_KEY + '/')] == [registry.marker_key(kind.name)], path
      assert kind.step_file == file and registry.kind_of(registry.marker(kind.name), 'the marker alone') is kind
      assert registry.kind_of(registry.unmarked(arrays), 'an older file') is kind
      _load(prompt_file=path)


def test_the_builtin_file_kinds_exclude_each_other():
  """A file without a marker is claimed by at most one kind (so registration order never decides)."""
  d = CFG.emb_dim
  files = {
      'prompt': {'prompt': np.zeros(
          (3, d))}, 'prefix': {'decoder_self/key': np.zeros((2, 3, 4, 8)), 'relpos/positions': np.zeros((0,), np.int8)},
      'per_layer_prompts': {
          'prompt': np.zeros((3, d)), 'layers': np.zeros((1, 3, d)), 'mode/add': np.zeros((0,), np.int8)
      }, 'multitask': {'rte': np.zeros((3, d)), 'sst2': np.zeros((4, d))}
  }
  for name, arrays in files.items():
    claims = [k.name for k in registry.kinds() if k.holds is not None and k.holds(arrays)]
    assert claims == [name], (name, claims)


def test_commands_and_prompt_banks_name_no_method_class():
  classes = {c.__name__ for c in _subclasses(Method)} - {'ScaledPrompt'}
  assert {'PromptTuning', 'PrefixTuning', 'PerLayerPrompts', 'PTuning', 'PromptBank'} <= classes
  sources = sorted((REPO / 'jaxprompt' / 'commands').glob('*.py')) + [REPO / 'jaxprompt/methods/prompt_bank.py']
  for source in sources:
    text = source.read_text()
    allowed = {'PromptBank'} if source.name == 'prompt_bank.py' else set()
    named = sorted(c for c in classes - allowed if re.search(rf'\b{c}\b', text))
    assert not named, f'{source.relative_to(REPO)} names method classes {named}: ask jaxprompt.methods.registry'


def test_the_tuning_protocol_lists_what_the_trainer_reads():
  members = {n for n in dir(Tuning) if not n.startswith('_')} | set(Tuning.__annotations__)
  read = set()
  for folder in ('runtime', 'train', 'eval', 'commands', 'models'):
    for source in (REPO / 'jaxprompt' / folder).rglob('*.py'):
      read |= set(re.findall(r'\b(?:method|tuning)\.([a-z_]+)\b', source.read_text()))
  assert read and read <= members, sorted(read - members)
  assert 'task_ids' in inspect.signature(Tuning.hooks).parameters
  assert 'task_ids' in inspect.signature(Method.hooks).parameters
  for cls in _subclasses(Method):
    if 'hooks' in vars(cls):
      assert 'task_ids' in inspect.signature(cls.hooks).parameters, cls.__name__


def _subclasses(cls: type) -> set[type]:
  out = set()
  for sub in cls.__subclasses__():
    out |= {sub} | _subclasses(sub)
  return out
