"""`jaxprompt inspect PROMPT`: what a trained prompt looks like from its frozen model.

For an input prompt (prompt tuning, P-tuning, a per-layer prompts file's input block): each position's top-k
nearest vocabulary tokens by cosine similarity to the model's token embedding (Lester et al. 2021, §7) and its
L2 norm, with summary norms beside the vocabulary's own; for a per-layer prompts file also each deeper block's
norms; for a prefix file (prefix tuning, P-tuning v2) each attention kind's key / value norms per layer (they
live in attention space, so they have no nearest tokens). Always: the model the prompt records
(`jaxprompt.models.fingerprint`) and whether it is the model loaded now (inspect reports, it never refuses).

Only the frozen checkpoint's token embedding is read (T5X any format, a Hugging Face T5 or causal LM folder), never
the whole model.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gin
import numpy as np
from etils import epath

from jaxprompt.checkpoints import hf_names, readers
from jaxprompt.checkpoints.common import flatten_params
from jaxprompt.commands import configs, prompt_files
from jaxprompt.data import vocab as vocab_lib
from jaxprompt.errors import CheckpointError, ConfigError
from jaxprompt.eval import writers
from jaxprompt.formats import validation
from jaxprompt.formats.keys import PROMPT_KEY
from jaxprompt.methods import peft_adapters
from jaxprompt.methods.per_layer_prompts import LAYERS_KEY
from jaxprompt.models import families
from jaxprompt.models import fingerprint as fingerprint_lib
from jaxprompt.models.base import ModelConfig

if TYPE_CHECKING:
  import seqio

log = logging.getLogger('jaxprompt')
EMBEDDING = 'token_embedder/embedding'


def _vocabulary(vocabulary: Any) -> Any:
  """A vocabulary from an object or a SentencePiece path; None: T5's default one."""
  if not (vocabulary is None or vocab_lib.is_vocabulary(vocabulary) or isinstance(vocabulary, (str, os.PathLike))):
    raise ConfigError(f'inspect vocabulary must be a vocabulary (e.g. @jaxprompt.vocabulary()) or a SentencePiece '
                      f'path, got {vocabulary!r}')
  return vocab_lib.resolve(vocabulary)


def read_token_embedding(path: str, config: ModelConfig) -> np.ndarray:
  """Only the [vocab, embed] token embedding of a frozen checkpoint, found through its reader's name map: a T5X
  checkpoint (any format) or model dir, a Hugging Face T5 folder, a Hugging Face causal LM folder (Llama, Mistral,
  Qwen2, GPT-2). In `config.param_dtype` as training loads it, checked against `config`."""
  from jaxprompt.checkpoints import common  # pylint: disable=g-import-not-at-top
  if readers.causal_architecture(path) is not None:
    from jaxprompt.checkpoints import hf_causal  # pylint: disable=g-import-not-at-top
    source = hf_causal.causal_sources(path, config)[0][EMBEDDING]  # checks every tensor's shape against `config`
    array, where = common.materialize({EMBEDDING: source}, ckpt=path)['token_embedder']['embedding'], path
  elif readers.is_hf_checkpoint(path):
    from jaxprompt.checkpoints import huggingface  # pylint: disable=g-import-not-at-top
    tensors, _ = huggingface._locate(path)  # pylint: disable=protected-access  (its one-tensor index)
    if hf_names.EMBEDDING_KEY not in tensors:
      raise CheckpointError(f"{path}: not a Hugging Face T5 checkpoint: it has no '{hf_names.EMBEDDING_KEY}'")
    tensor = tensors[hf_names.EMBEDDING_KEY]
    array, where = tensor.array(), f"{tensor.file} ('{hf_names.EMBEDDING_KEY}')"
  else:
    from jaxprompt.checkpoints import t5x  # pylint: disable=g-import-not-at-top
    where = t5x.latest_checkpoint(path)
    source = t5x.t5x_sources(where).get(EMBEDDING)
    if source is None:
      raise CheckpointError(f'{where}: no {EMBEDDING} parameter: not a T5 checkpoint')
    array = common.materialize({EMBEDDING: source}, ckpt=where)['token_embedder']['embedding']
  wanted = (config.vocab_size, config.emb_dim)
  if tuple(array.shape) != wanted:
    raise CheckpointError(f'{where}: token embedding has shape {tuple(array.shape)} but MODEL_CONFIG needs '
                          f'{wanted} (vocab_size, emb_dim): another model?')
  return np.asarray(array).astype(np.dtype(config.param_dtype))


def token_piece(vocabulary: seqio.Vocabulary, token_id: int) -> str:
  """The piece of `token_id` ('▁good', '</s>', '▁<extra_id_0>'), or its decoded text for other vocabularies."""
  tokenizer = getattr(vocabulary, 'tokenizer', None)
  if tokenizer is not None and token_id < tokenizer.get_piece_size():
    return tokenizer.id_to_piece(int(token_id))
  try:
    return vocabulary.decode([int(token_id)])
  except Exception:  # pylint: disable=broad-except  (a vocabulary that cannot decode one id on its own)
    return f'<id {token_id}>'


def nearest_tokens(prompt: np.ndarray, embedding: np.ndarray, top_k: int,
                   num_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(ids [P, k], cosines [P, k]) of the `top_k` embedding rows nearest each prompt row [P, d], best first.

  Only the first `num_tokens` rows are tokens (a model pads its table past its vocabulary: 32100 ids in 32128
  rows); all-zero rows have no direction and are never nearest.
  """
  table = np.asarray(embedding[:num_tokens], np.float32)
  norms = np.linalg.norm(table, axis=-1)
  rows = np.asarray(prompt, np.float32)
  unit = rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-30)
  cosine = (unit @ table.T) / np.where(norms > 0, norms, 1.0)  # [P, V], without a normalised table copy
  cosine[:, norms == 0] = -np.inf
  k = min(top_k, cosine.shape[1])
  ids = np.argpartition(-cosine, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(cosine, ids, axis=1), axis=1, kind='stable')
  ids = np.take_along_axis(ids, order, axis=1)
  return ids, np.take_along_axis(cosine, ids, axis=1)


def _norm_summary(norms: np.ndarray) -> dict[str, float]:
  return {'mean': _num(norms.mean()), 'min': _num(norms.min()), 'max': _num(norms.max())}


def _num(x: Any) -> float:
  return round(float(x), 6)


def _positions(prompt: np.ndarray, embedding: np.ndarray, vocabulary: seqio.Vocabulary,
               top_k: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
  """Per position {'position', 'norm', 'nearest': [{'id', 'token', 'cosine'}]}, and the summary norms."""
  num_tokens = min(embedding.shape[0], vocabulary.vocab_size)
  ids, cosines = nearest_tokens(prompt, embedding, top_k, num_tokens)
  norms = np.linalg.norm(np.asarray(prompt, np.float32), axis=-1)
  positions = [{
      'position': p, 'norm': _num(norms[p]),
      'nearest': [{'id': int(i), 'token': token_piece(vocabulary, int(i)), 'cosine': _num(c)}
                  for i, c in zip(ids[p], cosines[p])]
  }
               for p in range(len(prompt))]
  token_norms = np.linalg.norm(np.asarray(embedding[:num_tokens], np.float32), axis=-1)
  return positions, dict(_norm_summary(norms), vocabulary_mean=_num(token_norms.mean()))


def _layer_norms(blocks: np.ndarray, first_layer: int, stack: str) -> list[dict[str, Any]]:
  """Per-layer prompts' deeper blocks [L-1, P, d] on `stack`: each layer's position norms, summarised."""
  norms = np.linalg.norm(np.asarray(blocks, np.float32), axis=-1)  # [L-1, P]
  return [dict(_norm_summary(n), stack=stack, layer=first_layer + i) for i, n in enumerate(norms)]


def _prefix_norms(trainable: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
  """{kind: [{'layer', 'key_norm', 'value_norm'}]}: the mean over positions of each row's L2 norm (its heads x
  head_dim values), of plain prefix rows {kind: {'key', 'value': [layers, P, heads, head_dim]}}."""
  out = {}
  for kind, parts in trainable.items():
    key, value = (np.asarray(parts[p], np.float32) for p in ('key', 'value'))
    key_norms, value_norms = (np.linalg.norm(x.reshape(*x.shape[:2], -1), axis=-1).mean(axis=1) for x in (key, value))
    out[kind] = [
        {'layer': i, 'key_norm': _num(k), 'value_norm': _num(v)} for i, (k, v) in enumerate(zip(key_norms, value_norms))
    ]
  return out


def _is_prefix(trainable: Mapping[str, Any]) -> bool:
  return bool(trainable) and all(isinstance(v, Mapping) and {'key', 'value'} <= set(v) for v in trainable.values())


def _model_report(source: str, step: int | None, actual: Mapping[str, Any]) -> dict[str, Any]:
  recorded = prompt_files.recorded_fingerprint(source, step)
  same = fingerprint_lib.matches(recorded, actual)
  if same is False:
    log.warning('%s was trained on %s', source, fingerprint_lib.mismatch(recorded, actual))
  return {
      'matches': same, 'loaded': dict(actual), 'recorded': None if recorded is None else dict(recorded),
      'differences': [] if not recorded else fingerprint_lib.differences(recorded, actual)
  }


def _log_table(report: Mapping[str, Any]) -> None:
  """The report as readable lines (the JSON is what the CLI prints)."""
  model = report['model']
  state = {
      True: 'the recorded model', False: f'NOT the recorded {fingerprint_lib.describe(model["recorded"])}',
      None: 'no model recorded'
  }[model['matches']]
  lines = [
      f"{report['prompt']}: {report['method']} {report['shapes']}",
      f"loaded {fingerprint_lib.describe(model['loaded'])}: {state}"
  ]
  if 'positions' in report:
    lines.append(f"{'pos':>4} {'norm':>9}  nearest tokens (cosine)")
    for row in report['positions']:
      near = ' | '.join(f"{n['token']} {n['cosine']:.3f}" for n in row['nearest'])
      lines.append(f"{row['position']:>4} {row['norm']:>9.4f}  {near}")
    n = report['norms']
    lines.append(f"norms: mean {n['mean']:.4f}, min {n['min']:.4f}, max {n['max']:.4f}; vocabulary rows: mean "
                 f"{n['vocabulary_mean']:.4f}")
  for row in report.get('layers', []):
    lines.append(f"{row['stack']} layer {row['layer']:>2} block norms: mean {row['mean']:.4f}, max {row['max']:.4f}")
  for kind, rows in report.get('prefix', {}).items():
    for row in rows:
      lines.append(f"{kind:>13} layer {row['layer']:>2}: key norm {row['key_norm']:.4f}, value norm "
                   f"{row['value_norm']:.4f}")
  log.info('\n'.join(lines))


@gin.configurable(module='jaxprompt')
def inspect(prompt: str, *, top_k: int = 5, output_file: str | None = None, model_config: ModelConfig | None = None,
            initial_checkpoint_path: str | None = None, vocabulary: Any = None,
            checkpoint_step: int | None = None) -> dict[str, Any]:
  """Reports a prompt's nearest tokens per position, its norms and its recorded model (module docstring).

  Args:
    prompt: a prompt .npy, a prefix .npz / .safetensors, a per_layer_prompts .npz, a PEFT adapter folder, or a
      training MODEL_DIR / step dir (its `checkpoint_step`, default the latest).
    top_k: nearest tokens per position. output_file: also write the report there as JSON (local or gs://).
    model_config, initial_checkpoint_path, vocabulary: the frozen model; None takes the gin macros
      MODEL_CONFIG, INITIAL_CHECKPOINT_PATH and VOCABULARY, so `--gin_file=models/<model>.gin` is enough
      (no VOCABULARY either: T5's default vocabulary).

  Returns:
    The JSON-able report: 'prompt', 'step', 'method', 'shapes', 'model' ({'matches': True / False / None (no
    record), 'loaded', 'recorded': fingerprints, 'differences'}), and 'positions' + 'norms' (an input prompt),
    'layers' (per-layer prompts), 'prefix' (prefix rows) as they apply.
  """
  config = validation.require(model_config if model_config is not None else configs.macro_value('MODEL_CONFIG'),
                              'MODEL_CONFIG', '"@jaxprompt.model_config()" (a models/*.gin)')
  if not families.is_model_config(config):
    raise ConfigError(f'model_config must be a model config (e.g. @jaxprompt.model_config()), got {config!r}')
  checkpoint = validation.require(
      initial_checkpoint_path
      if initial_checkpoint_path is not None else configs.macro_value('INITIAL_CHECKPOINT_PATH'),
      'INITIAL_CHECKPOINT_PATH', "\"'/path/to/checkpoint'\" (a models/*.gin)")
  validation.check_positive(top_k=top_k, checkpoint_step=checkpoint_step)
  vocab = _vocabulary(vocabulary if vocabulary is not None else configs.macro_value('VOCABULARY'))
  source = os.fspath(prompt)
  is_dir = epath.Path(source).is_dir() and not peft_adapters.is_adapter_dir(source)  # a PEFT folder is a file kind
  embedding = read_token_embedding(os.fspath(checkpoint), config)  # the model first: the prompt must fit it
  method, trainable = prompt_files.load_tuned(prompt_file=None if is_dir else source,
                                              checkpoint=source if is_dir else None, step=checkpoint_step,
                                              prompt_length=None, config=config, eos_id=vocab.eos_id)
  report: dict[str, Any] = {
      'prompt': source, 'step': checkpoint_step, 'method': type(method).__name__,
      'shapes': {path: list(np.shape(x)) for path, x in sorted(flatten_params(trainable).items())},
      'model': _model_report(source, checkpoint_step, fingerprint_lib.model_fingerprint(config, vocab, embedding))
  }
  if PROMPT_KEY in trainable and np.ndim(trainable[PROMPT_KEY]) == 2:
    report['positions'], report['norms'] = _positions(trainable[PROMPT_KEY], embedding, vocab, top_k)
  if LAYERS_KEY in trainable:  # row i acts at layer i + 1 of the stack reading the tokens
    report['layers'] = _layer_norms(trainable[LAYERS_KEY], first_layer=1, stack=config.input_stack)
  if _is_prefix(trainable):
    report['prefix'] = _prefix_norms(trainable)
  _log_table(report)
  if output_file:
    writers.write_json(output_file, report)
  return report
