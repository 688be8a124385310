"""The Hugging Face BERT / RoBERTa reader, and BertEncoder against transformers running the same tiny random models:
BERT (token types, pooler, saved from BertForSequenceClassification in shards: `bert.` names, a classifier to skip)
and RoBERTa (position offset 2, one token type, saved as RobertaModel). Hidden states and pooled outputs agree within
1e-4 on the real rows of padded batches, with a prompt inserted in front (PEFT: transformers given inputs_embeds) and
with a K/V prefix (P-tuning v2: transformers given past_key_values, which moves the tokens' positions behind it).
Damaged folders fail in one line naming the file."""
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxprompt.checkpoints import readers
from jaxprompt.checkpoints.hf_encoder import hf_encoder_config, load_hf_encoder
from jaxprompt.errors import CheckpointError, ConfigError
from jaxprompt.models import families
from jaxprompt.models.bert import BertEncoder
from jaxprompt.models.hooks import Hooks
from jaxprompt.models.scan import stack_layers
from tests.causal_helpers import PrefixHook, PromptHook, randomize
from tests.helpers import REPO, run_with_devices

torch = pytest.importorskip('torch')
ATOL = 1e-4
VOCAB = 96
_SHAPE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
# name: (config class, model class saved, the model's encoder attribute (None: the model is the encoder), fields)
MODELS = {
    'bert': ('BertConfig', 'BertForSequenceClassification', 'bert', dict(max_position_embeddings=64, pad_token_id=0)),
    'roberta': ('RobertaConfig', 'RobertaModel', None,
                dict(max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)),
}


def build_hf(name: str, folder, seed: int = 0, **save):
  """A random `name` model (eval mode, eager attention) saved to `folder` as safetensors; returns its encoder."""
  import transformers  # pylint: disable=g-import-not-at-top
  config_cls, model_cls, attribute, fields = MODELS[name]
  config = getattr(transformers, config_cls)(**_SHAPE, **fields)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  model = randomize(getattr(transformers, model_cls)(config).eval(), seed)
  model.save_pretrained(folder, safe_serialization=True, **save)
  return getattr(model, attribute) if attribute else model


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """{name: (transformers encoder, params, config, folder)}, each built, saved and read back once."""
  out = {}
  for name in MODELS:
    folder = tmp_path_factory.mktemp(name)
    model = build_hf(name, folder, seed=len(out), **(dict(max_shard_size='40KB') if name == 'bert' else {}))
    params, config = load_hf_encoder(folder)
    out[name] = (model, params, config, folder)
  assert (out['bert'][3] / 'model.safetensors.index.json').is_file()
  return out


def batch(name: str, seed: int = 0, length: int = 7):
  """(tokens, valid, token types): right-padded rows of different lengths; pads carry the model's pad id."""
  rs = np.random.RandomState(seed)
  valid = np.arange(length)[None, :] < np.array([length, 5, 2])[:, None]
  pad = MODELS[name][3]['pad_token_id']
  tokens = np.where(valid, rs.randint(3, VOCAB, valid.shape), pad).astype(np.int32)
  types = np.where(valid, rs.randint(0, 2 if name == 'bert' else 1, valid.shape), 0).astype(np.int32)
  return tokens, valid, types


@functools.cache
def forward(config):
  model = BertEncoder(config)

  @jax.jit
  def run(params, tokens, valid, types, hooks=None):
    return model.apply({'params': params}, tokens, valid=valid, token_types=types, hooks=hooks or Hooks(),
                       enable_dropout=False)

  return run


def hf_forward(model, mask, **kwargs):
  kwargs = {k: torch.tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
  with torch.no_grad():
    out = model(attention_mask=torch.tensor(np.asarray(mask, np.int64)), **kwargs)
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _close(got, want, rows=slice(None)):
  got, want = np.asarray(got)[rows], np.asarray(want)[rows]
  assert np.abs(want).max() > 0.5  # outputs of a real size: a misread weight would not hide under ATOL
  np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize('name', list(MODELS))
def test_hidden_states_and_pooled_output_match_transformers_with_padding(models, name):
  model, params, config, _ = models[name]
  assert (config.position_offset, config.type_vocab_size, config.pooler) == ((0, 2, True) if name == 'bert' else
                                                                             (2, 1, True))
  tokens, valid, types = batch(name)
  hidden, pooled = forward(config)(params, tokens, valid, types)
  want_hidden, want_pooled = hf_forward(model, valid, input_ids=tokens.astype(np.int64),
                                        token_type_ids=types.astype(np.int64))
  _close(hidden, want_hidden, valid)
  _close(pooled, want_pooled)


@pytest.mark.parametrize('name', list(MODELS))
def test_inserted_prompt_matches_transformers_given_inputs_embeds(models, name):
  """p prompt rows in front take positions 0..p-1 and token type 0 before the embedding LayerNorm; tokens follow."""
  model, params, config, _ = models[name]
  prompt = np.random.RandomState(5).normal(size=(3, config.emb_dim)).astype(np.float32)
  tokens, valid, types = batch(name, seed=1)
  mask = np.concatenate([np.ones((len(tokens), 3), bool), valid], axis=1)
  with torch.no_grad():
    embedded = model.get_input_embeddings()(torch.tensor(tokens, dtype=torch.int64)).numpy()
  embeds = np.concatenate([np.broadcast_to(prompt, (len(tokens),) + prompt.shape), embedded], axis=1)
  want = hf_forward(model, mask, inputs_embeds=embeds, token_type_ids=np.pad(types, ((0, 0), (3, 0))).astype(np.int64))
  hidden, pooled = forward(config)(params, tokens, valid, types, Hooks(inputs=PromptHook(prompt)))
  _close(hidden, want[0], mask)
  _close(pooled, want[1])


@pytest.mark.parametrize('name,shift', [('bert', True), ('roberta', True), ('roberta', False)])
def test_kv_prefix_matches_transformers_given_past_key_values(models, name, shift):
  """P-tuning v2's deep prompt: p K/V rows per layer; transformers numbers the tokens from p behind them."""
  from transformers import DynamicCache  # pylint: disable=g-import-not-at-top
  model, params, config, _ = models[name]
  tokens, valid, types = batch(name, seed=2)
  rows = np.random.RandomState(7).normal(size=(2, config.num_layers, len(tokens), 2, config.num_heads,
                                               config.head_dim)).astype(np.float32)
  hooks = Hooks(encoder_layers=PrefixHook(rows[0], rows[1]))
  mask = np.concatenate([np.ones((len(tokens), 2), bool), valid], axis=1)

  def hf(**kwargs):  # a fresh cache per call: the forward appends to it
    past = DynamicCache(
        ddp_cache_data=[(torch.tensor(rows[0, i].transpose(0, 2, 1, 3)), torch.tensor(rows[1, i].transpose(0, 2, 1, 3)))
                        for i in range(config.num_layers)], config=model.config)
    return hf_forward(model, mask, input_ids=tokens.astype(np.int64), token_type_ids=types.astype(np.int64), cache=past,
                      **kwargs)

  if not shift:  # tokens at their own positions: transformers given explicit position ids from the table's start
    keep = config.replace(kv_prefix_shifts_positions=False)
    start = np.arange(tokens.shape[1])[None].repeat(len(tokens), 0) + config.position_offset
    hidden = forward(keep)(params, tokens, valid, types, hooks)[0]
    _close(hidden, hf(position_ids=start)[0], valid)
    assert np.abs(np.asarray(hidden) - hf()[0])[valid].max() > 1e-2  # the two choices differ
    return
  hidden, pooled = forward(config)(params, tokens, valid, types, hooks)
  _close(hidden, hf()[0], valid)
  _close(pooled, hf()[1])


def test_scanned_remat_load_runs_the_same_network(models):
  _, params, config, folder = models['bert']
  scanned = config.replace(scan_layers=True, remat_policy='full')
  got, _ = load_hf_encoder(folder, config=scanned)
  want = stack_layers(params)
  assert got['encoder']['layers']['attention']['key']['kernel'].shape == (2, 32, 32)
  tokens, valid, types = batch('bert', seed=3)
  np.testing.assert_allclose(
      forward(scanned)(got, tokens, valid, types)[0],
      forward(config)(params, tokens, valid, types)[0], atol=1e-5)
  np.testing.assert_array_equal(got['encoder']['layers']['mlp']['wi']['kernel'],
                                want['encoder']['layers']['mlp']['wi']['kernel'])


def test_bfloat16_load_and_forward(models):
  _, params, config, folder = models['bert']
  tokens, valid, types = batch('bert', seed=3)
  half, _ = load_hf_encoder(folder, config=config.replace(param_dtype=jnp.bfloat16))
  leaf = half['encoder']['layers_1']['mlp']['wi']['kernel']
  assert leaf.dtype == jnp.bfloat16
  np.testing.assert_array_equal(leaf, np.asarray(params['encoder']['layers_1']['mlp']['wi']['kernel'], jnp.bfloat16))
  hidden, _ = forward(config.replace(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16))(half, tokens, valid, types)
  assert hidden.dtype == jnp.bfloat16 and np.isfinite(np.asarray(hidden, np.float32)).all()


def test_the_family_seam_knows_the_configs_and_the_reader(models):
  _, params, config, folder = models['roberta']
  for name in ('bert_base_uncased', 'bert_large_uncased', 'roberta_base', 'roberta_large'):
    named = families.named_config(name)
    assert named.family == 'encoder_only' and named.input_stack == 'encoder' and named.num_kv_heads == named.num_heads
  assert families.named_config('roberta_base').max_length == 512
  got = readers.load(folder, config)
  np.testing.assert_array_equal(got['pooler']['kernel'], params['pooler']['kernel'])


def _copy(models, name, tmp_path):
  folder = tmp_path / name
  shutil.copytree(models[name][3], folder)
  return folder


def _one_line(raised):
  assert '\n' not in str(raised.value)
  return str(raised.value)


def test_masked_lm_files_and_old_layer_norm_names_read_the_encoder_alone(models, tmp_path):
  """A RobertaForMaskedLM file has `roberta.` names, an lm_head and no pooler; old files say LayerNorm.gamma/beta."""
  _, params, _, folder = models['roberta']
  mlm = _copy(models, 'roberta', tmp_path)
  tensors = {f'roberta.{k}': v for k, v in load_file(folder / 'model.safetensors').items() if 'pooler' not in k}
  tensors = {
      k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta'): v
      for k, v in tensors.items()
  }
  tensors['lm_head.dense.weight'] = np.zeros((32, 32), np.float32)
  save_file(tensors, mlm / 'model.safetensors')
  config = json.loads((mlm / 'config.json').read_text())
  (mlm / 'config.json').write_text(json.dumps(dict(config, architectures=['RobertaForMaskedLM'])))
  got, read = load_hf_encoder(mlm)
  assert not read.pooler and 'pooler' not in got
  np.testing.assert_array_equal(got['encoder']['layers_1']['mlp_layer_norm']['bias'],
                                params['encoder']['layers_1']['mlp_layer_norm']['bias'])


def test_unsupported_models_and_mismatched_configs_are_refused_in_one_line(models, tmp_path):
  folder = _copy(models, 'bert', tmp_path)
  original = json.loads((folder / 'config.json').read_text())
  for changes, culprit in [(dict(architectures=['DebertaV2Model']), 'is not one BERT / RoBERTa model jaxprompt reads; '
                            'supported: BertModel, BertForMaskedLM'),
                           (dict(position_embedding_type='relative_key'), "position_embedding_type 'relative_key'"),
                           (dict(hidden_act='mish'), "hidden_act 'mish' is not implemented")]:
    (folder / 'config.json').write_text(json.dumps(dict(original, **changes)))
    with pytest.raises(ConfigError, match=culprit) as raised:
      load_hf_encoder(folder)
    assert str(folder / 'config.json') in _one_line(raised)
  with pytest.raises(ConfigError, match='implies type_vocab_size=2 but the given config has type_vocab_size=1'):
    load_hf_encoder(models['bert'][3], config=models['bert'][2].replace(type_vocab_size=1))
  (folder / 'config.json').unlink()
  with pytest.raises(CheckpointError, match='config.json: no such file; a Hugging Face BERT / RoBERTa folder'):
    hf_encoder_config(folder)


def test_a_missing_shard_tensor_or_wrong_shape_names_the_file_and_tensor(models, tmp_path):
  folder = _copy(models, 'bert', tmp_path)
  shard = sorted(folder.glob('model-*.safetensors'))[-1]
  shard.unlink()
  with pytest.raises(CheckpointError, match=f"shard '{shard.name}' \\(holding '.*'\\) is missing") as raised:
    load_hf_encoder(folder)
  _one_line(raised)
  folder = _copy(models, 'roberta', tmp_path)
  original = json.loads((folder / 'config.json').read_text())
  (folder / 'config.json').write_text(json.dumps(dict(original, intermediate_size=48)))
  with pytest.raises(
      CheckpointError, match=f"{folder / 'model.safetensors'}: tensor 'encoder.layer.0.intermediate"
      r".dense.weight' has shape \[64, 32\] but .*config.json implies \[48, 32\]") as raised:
    load_hf_encoder(folder)
  _one_line(raised)
  (folder / 'config.json').write_text(json.dumps(original))
  tensors = load_file(folder / 'model.safetensors')
  del tensors['encoder.layer.1.output.dense.bias']
  save_file(tensors, folder / 'model.safetensors')
  with pytest.raises(CheckpointError, match="tensor 'encoder.layer.1.output.dense.bias' is missing") as raised:
    load_hf_encoder(folder)
  _one_line(raised)


@pytest.mark.slow
def test_sharded_on_8_devices_equals_one_device(models):
  """8 devices, mesh 4 x 2: the reader places each tensor in its shards; the sharded forward equals one device."""
  out = run_with_devices(REPO / 'tests' / 'scripts' / 'sharded_encoder.py', 8, str(models['bert'][3]))
  assert out.strip().endswith('OK')
