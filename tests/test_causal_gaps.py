"""The causal family's loose ends (issue 23): packing with a K/V prefix, inspect and fingerprints of any family, the
position limit of a learned table, and left padding with a prompt against transformers."""
import copy
import functools
import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import traverse_util
from safetensors.numpy import save_file

from jaxprompt.checkpoints import hf_causal, hf_causal_names
from jaxprompt.commands import inspect as inspect_lib
from jaxprompt.commands import prompt_files
from jaxprompt.data import causal, converters
from jaxprompt.data import pipeline as data
from jaxprompt.data.hf_vocab import HfVocabulary
from jaxprompt.errors import ConfigError
from jaxprompt.methods import prefix_tuning, prompt_tuning
from jaxprompt.models import fingerprint
from jaxprompt.models.config import get_config
from jaxprompt.models.decoder_config import DecoderConfig
from jaxprompt.models.decoder_only import DecoderOnlyModel
from jaxprompt.models.families import build_model
from jaxprompt.runtime import runtime as runtime_lib
from tests import causal_helpers

LENGTHS = {'inputs': 6, 'targets': 3}
FAMILY = converters.DECODER_ONLY
# A Llama-shaped model (rotary, grouped-query attention) and a GPT-2-shaped one (learned positions, LayerNorm).
CONFIGS = {
    'rotary': DecoderConfig(vocab_size=40, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48),
    'learned': DecoderConfig(vocab_size=40, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48, mlp_activations=('gelu',),
                             norm='layer', positions='learned', max_positions=32, qkv_bias=True, out_bias=True,
                             mlp_bias=True, tie_word_embeddings=True),
}


def _examples(count: int = 7):
  rs = np.random.RandomState(0)
  return [(rs.randint(0, 40, rs.randint(1, LENGTHS['inputs'] + 1)).astype(np.int32),
           np.append(rs.randint(3, 40, rs.randint(0, LENGTHS['targets'])), 2).astype(np.int32)) for _ in range(count)]


def _packed(examples, tokens):
  """The training pipeline's packed rows (seqio's packing through `CausalFeatureConverter`)."""
  signature = {'inputs': tf.TensorSpec([None], tf.int32), 'targets': tf.TensorSpec([None], tf.int32)}
  ds = tf.data.Dataset.from_generator(lambda: iter([{'inputs': i, 'targets': t} for i, t in examples]),
                                      output_signature=signature)
  rows = list(data.convert_features(ds, LENGTHS, True, 0, FAMILY, tokens).as_numpy_iterator())
  return data.as_float_weights({k: np.stack([r[k] for r in rows]) for k in rows[0]}, FAMILY)


@pytest.mark.parametrize('positions', ['rotary', pytest.param('learned', marks=pytest.mark.slow)])
def test_packed_rows_under_a_kv_prefix_score_each_example_as_its_own_row(positions):
  """Every packed example sees the whole prefix and numbers its tokens from the prefix's end, as unpacked (P-tuning
  v2's rows; prefix tuning's MLP only computes them)."""
  config = CONFIGS[positions]
  method = prefix_tuning.p_tuning_v2(config, length=3, initializer='normal')
  assert method.packing_slots == 0  # relpos 'positions' (the default) packs on a model without relative bias
  model = build_model(config, method)
  frozen = causal_helpers.random_params(config)
  trainable = method.init(np.asarray([0, 1], np.uint32), frozen)
  examples, tokens = _examples(), causal.StreamTokens(bos=1)
  packed = _packed(examples, tokens)
  assert packed['decoder_segment_ids'].max() > 1  # several examples share a row
  unpacked = data.to_features([i for i, _ in examples], [t for _, t in examples], LENGTHS, FAMILY, tokens)
  score = jax.jit(functools.partial(model.score_batch, return_intermediates=True))
  alone = np.asarray(score(frozen, trainable, unpacked)).sum(-1)
  scores = np.asarray(score(frozen, trainable, packed))
  found = []
  for row, segments in enumerate(packed['decoder_segment_ids']):
    for segment in range(1, segments.max() + 1):
      at = segments == segment
      stream = packed['decoder_input_tokens'][row][at]
      match = [
          k for k in range(len(examples))
          if k not in found and np.array_equal(unpacked['decoder_input_tokens'][k][:at.sum()], stream)
      ]
      found.append(match[0])
      np.testing.assert_allclose(scores[row][at].sum(), alone[match[0]], rtol=1e-5, atol=1e-5)
  assert sorted(found) == list(range(len(examples)))


def test_t5_still_refuses_packing_with_a_relative_position_prefix():
  """T5's relative bias measures prefix distances from the row start: packed examples would see other ones."""
  config = get_config('t5x_tiny')
  with pytest.raises(ConfigError, match="relative-position bias.*PACK=False"):
    prefix_tuning.p_tuning_v2(config).packing_slots  # pylint: disable=expression-not-assigned
  assert prefix_tuning.p_tuning_v2(config, relpos='none').packing_slots == 0


def _gpt2_folder(folder):
  """A random GPT-2 folder as GPT2LMHeadModel saves it (its tensors under 'transformer.'), without torch."""
  hf = {
      'architectures': ['GPT2LMHeadModel'], 'vocab_size': 40, 'n_embd': 16, 'n_head': 2, 'n_layer': 3, 'n_positions': 32
  }
  folder.mkdir(parents=True, exist_ok=True)
  (folder / 'config.json').write_text(json.dumps(hf))
  config, arch = hf_causal_names.decoder_config(hf, 'config.json')
  params = traverse_util.flatten_dict(causal_helpers.random_params(config), sep='/')
  plan = hf_causal_names.causal_plan(config, arch, 'transformer.')
  tensors = {
      e.key: np.ascontiguousarray(np.asarray(params[p]).T if e.transpose else params[p])
      for p, e in plan.items()
      if e.part is None
  }
  for p, e in plan.items():  # c_attn holds query, key and value side by side
    if e.part is not None:
      tensors.setdefault(e.key, []).append(np.asarray(params[p]))
  tensors = {k: np.concatenate(v, -1) if isinstance(v, list) else v for k, v in tensors.items()}
  save_file(tensors, str(folder / 'model.safetensors'))
  return folder, config, params['token_embedder/embedding']


@pytest.fixture(scope='module')
def causal_folders(tiny_causal, tmp_path_factory):
  """{name: (folder, config, token embedding)}: the tiny Llama folder and a GPT-2 one."""
  llama = hf_causal.hf_causal_config(tiny_causal)
  table = hf_causal.load_hf_causal(tiny_causal)[0]['token_embedder']['embedding']
  return {'llama': (tiny_causal, llama, table), 'gpt2': _gpt2_folder(tmp_path_factory.mktemp('gpt2'))}


@pytest.mark.parametrize('name', ['llama', 'gpt2'])
def test_inspect_reads_the_token_embedding_of_a_causal_folder_and_names_its_stack(name, causal_folders, tiny_causal,
                                                                                  tmp_path, clean_gin):
  folder, config, table = causal_folders[name]
  np.testing.assert_array_equal(inspect_lib.read_token_embedding(str(folder), config), table)
  ids = [5, 17, 30]
  path = tmp_path / 'per_layer.npz'
  blocks = np.ones((config.num_layers - 1, 3, config.emb_dim), np.float32)
  np.savez(path, prompt=np.asarray(table)[ids], layers=blocks, **{'mode/add': np.zeros((0,), np.int8)})
  report = inspect_lib.inspect(str(path), model_config=config, initial_checkpoint_path=str(folder), top_k=1,
                               vocabulary=HfVocabulary(str(tiny_causal)))
  assert [p['nearest'][0]['id'] for p in report['positions']] == ids
  assert [(r['stack'], r['layer']) for r in report['layers']] == [('decoder', i) for i in range(1, config.num_layers)]
  loaded = report['model']['loaded']['config']
  assert loaded['family'] == 'decoder_only' and loaded['num_decoder_layers'] == config.num_layers


def test_inspect_refuses_a_t5_config_over_a_causal_folder(tiny_causal):
  with pytest.raises(ConfigError, match='needs a DecoderConfig'):
    inspect_lib.read_token_embedding(str(tiny_causal), get_config('t5x_tiny'))


def test_describe_prints_the_sizes_the_family_recorded():
  """A causal record names its family, its one stack and its key/value heads; a T5 record both stacks (ids as
  before: the record is unchanged, only its description)."""
  causal = fingerprint.model_fingerprint(CONFIGS['rotary'], None, np.ones((40, 32), np.float32))
  assert fingerprint.describe(causal) == (
      f"model {causal['id']} (family=decoder_only, emb_dim=32, num_decoder_layers=2, "
      'num_heads=4, num_kv_heads=2, vocab_size=40)')
  t5 = get_config('t5x_tiny')
  record = fingerprint.model_fingerprint(t5, None, np.ones((t5.vocab_size, t5.emb_dim), np.float32))
  assert 'family' not in record['config'] and 'num_kv_heads' not in record['config']
  assert fingerprint.describe(record) == (
      f"model {record['id']} (emb_dim={t5.emb_dim}, num_encoder_layers={t5.num_encoder_layers}, num_decoder_layers="
      f'{t5.num_decoder_layers}, num_heads={t5.num_heads}, vocab_size={t5.vocab_size})')


@pytest.mark.parametrize('name,make', [('prompt_tuning', prompt_tuning.prompt_tuning),
                                       ('p_tuning_v2', prefix_tuning.p_tuning_v2)])
def test_rows_past_a_learned_position_table_fail_at_start_up(name, make):
  """GPT-2's table of 32 positions: a prompt of 5 and inputs 20 + targets 10 need 35; a gather would clip."""
  config = CONFIGS['learned']
  params = causal_helpers.random_params(config)
  method = make(config, length=5, initializer='normal') if name == 'p_tuning_v2' else make(config, length=5)
  with pytest.raises(ConfigError) as raised:
    runtime_lib.build_runtime(config, method, None, {'inputs': 20, 'targets': 10}, network=params)
  assert str(raised.value).startswith('a row needs 35 positions (a prompt of 5 + 30 for TASK_FEATURE_LENGTHS inputs '
                                      '20, targets 10) but this model has 32')
  runtime_lib.build_runtime(config, method, None, {'inputs': 17, 'targets': 10}, network=params)  # 32 fit
  rotary = CONFIGS['rotary']  # no table: no limit
  assert rotary.position_limit is None and get_config('t5x_tiny').position_limit is None
  runtime_lib.build_runtime(rotary, make(rotary, length=5), None, {'inputs': 200, 'targets': 100},
                            network=causal_helpers.random_params(rotary))


# ------------------------------------------------------------------ left padding with a prompt, against transformers

NEW_TOKENS = 5


@pytest.fixture(scope='module')
def peft_adapter(tmp_path_factory):
  """(arch, peft type) -> (PEFT model, our config, params, method, trainable): a random PEFT CAUSAL_LM prompt (3
  virtual tokens) over a tiny random transformers model, read back by jaxprompt; each built once, when asked."""
  torch = pytest.importorskip('torch')
  peft = pytest.importorskip('peft')
  makers = {'PROMPT_TUNING': peft.PromptTuningConfig, 'PREFIX_TUNING': peft.PrefixTuningConfig}

  @functools.cache
  def base(arch):
    folder = tmp_path_factory.mktemp(arch)
    return folder, causal_helpers.build_hf(arch, folder, seed=2), *hf_causal.load_hf_causal(folder)

  @functools.cache
  def adapter(arch, kind):
    folder, model, params, config = base(arch)
    torch.manual_seed(1)
    model = peft.get_peft_model(copy.deepcopy(model), makers[kind](task_type='CAUSAL_LM', num_virtual_tokens=3))
    model.eval().save_pretrained(folder / kind)
    method, trainable = prompt_files.load_tuned(prompt_file=str(folder / kind), checkpoint=None, step=None,
                                                prompt_length=None, config=config)
    return model, config, params, method, trainable

  return adapter


def _peft_alone(model, row):
  """transformers + PEFT's forward on one unpadded row: (logits of its tokens [l, vocab], the greedy continuation
  its forward gives token by token). Not PEFT's generate(): with transformers 5.25 / peft 0.21 it departs from that
  forward (docs/methods.md, "Left padding")."""
  import torch  # pylint: disable=g-import-not-at-top
  stream, passes = list(row), []
  with torch.no_grad():
    for _ in range(NEW_TOKENS):
      ids = torch.tensor([stream], dtype=torch.long)
      passes.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy())
      stream.append(int(passes[-1][-1].argmax()))
  return passes[0][-len(row):], np.asarray(stream[len(row):])


@pytest.mark.parametrize('arch,kind,once', [('llama', 'PROMPT_TUNING', True), *[
    pytest.param(*case, marks=pytest.mark.slow)
    for case in [('llama', 'PROMPT_TUNING', False), ('llama', 'PREFIX_TUNING', True), ('gpt2', 'PROMPT_TUNING', True),
                 ('gpt2', 'PROMPT_TUNING', False), ('gpt2', 'PREFIX_TUNING', True)]
]])
def test_a_left_padded_row_with_a_prompt_is_the_row_alone_in_transformers(peft_adapter, arch, kind, once):
  """Position-consistent left padding (docs/methods.md): a left-padded row behind a prompt or prefix has the logits
  and greedy tokens transformers + PEFT give the row unpadded (PEFT's own generate() on the padded batch does not:
  its inserted prompt's positions count the pads). `once`: the prompt run once per batch, or in every row."""
  model, config, params, method, trainable = peft_adapter(arch, kind)
  tokens, valid = causal_helpers.padded_batch(seed=5, length=6, left=True)  # id 0 among the real tokens
  ours = DecoderOnlyModel(config, method, eos_id=config.vocab_size, prompt_once=once)  # no EOS: every step compared
  mask = valid.astype(np.int32)
  logits = np.asarray(
      jax.jit(ours.logits)(params, trainable, {'decoder_input_tokens': tokens, 'decoder_input_mask': mask}))
  batch = {
      'decoder_input_tokens': tokens, 'decoder_input_mask': mask, 'decoder_target_tokens': np.zeros(
          (len(tokens), NEW_TOKENS), np.int32)
  }
  decodes = np.asarray(
      jax.jit(functools.partial(ours.predict_batch, method='sample', temperature=0.0))(params, trainable, batch)[0])
  for row in range(len(tokens)):
    theirs, greedy = _peft_alone(model, tokens[row][valid[row]].tolist())
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(logits[row][valid[row]], theirs, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(decodes[row], greedy)
