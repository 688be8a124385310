"""The Hugging Face T5 reader against transformers' own T5 (logits), plus layouts, dtypes and every bad input."""
import functools
import inspect
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import struct
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from jaxprompt.checkpoints import huggingface as hf_reader
from jaxprompt.checkpoints.huggingface import load_hf_t5
from jaxprompt.errors import CheckpointError
from jaxprompt.models.hooks import Hooks, KVPrefix
from jaxprompt.models.scan import stack_layers
from jaxprompt.models.t5 import Transformer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

VOCAB = 96


def _build(feed_forward_proj: str, tied: bool, seed: int, **sizes):
  torch.manual_seed(seed)
  cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64,
                              feed_forward_proj=feed_forward_proj, relative_attention_num_buckets=32,
                              relative_attention_max_distance=128, tie_word_embeddings=tied, **sizes)
  model = transformers.T5ForConditionalGeneration(cfg)
  if not tied:  # transformers 5 ties lm_head when building, whatever the config says (ENV-NOTES.md)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
    model.config.tie_word_embeddings = False
  return model.eval()


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp('hf')
  v11 = _build('gated-gelu', tied=False, seed=0, num_layers=2, num_decoder_layers=3)
  v10 = _build('relu', tied=True, seed=1, num_layers=2)
  v11.save_pretrained(root / 'v11', safe_serialization=True)
  v11.save_pretrained(root / 'v11_sharded', safe_serialization=True, max_shard_size='20KB')
  v10.save_pretrained(root / 'v10', safe_serialization=True)
  return {
      'root': root, 'v11': root / 'v11', 'v11_sharded': root / 'v11_sharded', 'v10': root / 'v10', 'v11_model': v11,
      'v10_model': v10
  }


def _batch():
  rng = np.random.RandomState(0)
  enc = rng.randint(1, VOCAB, (2, 9))
  enc[1, 5:] = 0  # padding in the second example
  targets = rng.randint(1, VOCAB, (2, 6))  # no padding: t5x masks decoder positions by targets > 0
  dec_inputs = np.concatenate([np.zeros((2, 1), targets.dtype), targets[:, :-1]], axis=1)
  return enc, dec_inputs, targets


def _our_logits(params, cfg):
  enc, dec_inputs, targets = _batch()
  return np.asarray(Transformer(cfg).apply({'params': params}, enc, dec_inputs, targets, enable_dropout=False))


def _hf_logits(model):
  enc, dec_inputs, _ = _batch()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                decoder_input_ids=torch.tensor(dec_inputs))
  return out.logits.numpy()


def _model_shapes(cfg):
  z = jnp.zeros((1, 4), jnp.int32)
  init = functools.partial(Transformer(cfg).init, enable_dropout=False)
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0), z, z, z)['params'])
  return {k: tuple(v.shape) for k, v in flatten_dict(abstract).items()}


def _shapes(params):
  return {k: tuple(v.shape) for k, v in flatten_dict(params).items()}


def _copy(src, dst, *, config=None, drop=(), add=None, convert=None):
  """Copies a single-file checkpoint, editing config.json (None deletes a key) and tensors."""
  os.makedirs(dst)
  tensors = load_file(os.path.join(src, 'model.safetensors'))
  tensors = {k: v for k, v in tensors.items() if k not in drop}
  tensors.update(add or {})
  save_file(convert(tensors) if convert else tensors, os.path.join(dst, 'model.safetensors'), metadata={'format': 'pt'})
  with open(os.path.join(src, 'config.json')) as f:
    hf = json.load(f)
  for key, value in (config or {}).items():
    if value is None:
      hf.pop(key, None)
    else:
      hf[key] = value
  with open(os.path.join(dst, 'config.json'), 'w') as f:
    json.dump(hf, f)
  return dst


def test_t5_1_1_untied_matches_transformers(ckpts):
  params, cfg = load_hf_t5(ckpts['v11'])
  assert (cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim) == (32, 4, 8, 64)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.vocab_size) == (2, 3, VOCAB)
  assert cfg.mlp_activations == ('gelu', 'linear') and not cfg.logits_via_embedding
  assert (cfg.relpos_num_buckets, cfg.relpos_max_distance) == (32, 128)
  assert _shapes(params) == _model_shapes(cfg)
  np.testing.assert_allclose(_our_logits(params, cfg), _hf_logits(ckpts['v11_model']), atol=1e-4, rtol=0)


def test_t5_1_0_tied_matches_transformers_including_output_scale(ckpts):
  params, cfg = load_hf_t5(ckpts['v10'])
  assert cfg.logits_via_embedding and cfg.mlp_activations == ('relu',)
  assert 'logits_dense' not in params['decoder'] and 'wi' in params['encoder']['layers_0']['mlp']
  assert _shapes(params) == _model_shapes(cfg)
  # HF scales the decoder output by d_model**-0.5 before the tied head, as t5x divides by sqrt(emb_dim).
  theirs = _hf_logits(ckpts['v10_model'])
  np.testing.assert_allclose(_our_logits(params, cfg), theirs, atol=1e-4, rtol=0)
  unscaled = _our_logits(params, cfg) * np.sqrt(cfg.emb_dim)
  assert np.abs(unscaled - theirs).max() > 1e-2


class _DecoderSelfPrefix(struct.PyTreeNode):
  """K/V rows [layers, b, p, h, d] for the decoder's self-attention only, at relpos 'positions'."""
  key: jax.Array
  value: jax.Array

  def attention_prefix(self, layer, kind):
    if kind != 'decoder_self':
      return None
    return KVPrefix(self.key, self.value, jnp.ones(self.key.shape[:2], bool), relpos='positions')

  def hidden_states(self, x, layer, stack):
    return x


def test_decoder_prefix_positions_match_transformers_past_key_values(ckpts):
  """relpos 'positions' on decoder self-attention prefixes = transformers' T5 given them as past keys/values
  (queries at positions p.., prefix keys at 0..p-1, bucketed by the decoder's causal bucketing)."""
  from transformers.cache_utils import DynamicCache, EncoderDecoderCache
  params, cfg = load_hf_t5(ckpts['v11'])
  enc, dec_inputs, targets = _batch()
  plen = 5
  rows = np.random.RandomState(3).normal(size=(2, cfg.num_decoder_layers, enc.shape[0], plen, cfg.num_heads,
                                               cfg.head_dim)).astype(np.float32)
  hooks = Hooks(decoder_layers=_DecoderSelfPrefix(rows[0], rows[1]))
  ours = Transformer(cfg).apply({'params': params}, enc, dec_inputs, targets, hooks=hooks, enable_dropout=False)
  past = DynamicCache()
  for layer in range(cfg.num_decoder_layers):  # transformers keeps [b, h, p, d]
    past.update(torch.tensor(rows[0, layer]).transpose(1, 2), torch.tensor(rows[1, layer]).transpose(1, 2), layer)
  model = ckpts['v11_model']
  # transformers 5 renames past_key_values to cache (the old name warns, then goes in 5.40).
  name = 'cache' if 'cache' in inspect.signature(model.forward).parameters else 'past_key_values'
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                   decoder_input_ids=torch.tensor(dec_inputs), **{name: EncoderDecoderCache(past, DynamicCache())
                                                                 }).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
  assert np.abs(theirs - _hf_logits(ckpts['v11_model'])).max() > 1e-2  # the prefix is in effect


def test_sharded_index_and_file_paths_load_identically(ckpts):
  sharded = ckpts['v11_sharded']
  assert (sharded / 'model.safetensors.index.json').exists()
  assert len(list(sharded.glob('model-*.safetensors'))) > 1
  base, cfg = load_hf_t5(ckpts['v11'])
  for path in (sharded, sharded / 'model.safetensors.index.json', ckpts['v11'] / 'model.safetensors'):
    params, cfg2 = load_hf_t5(path)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params, base)


@pytest.mark.parametrize('case', ['untied_config_without_lm_head', 'tied_config_with_distinct_lm_head'])
def test_mixed_head_configs_follow_transformers(ckpts, case, tmp_path):
  if case == 'untied_config_without_lm_head':  # transformers 5 reuses shared.weight, unscaled
    path = _copy(ckpts['v11'], tmp_path / case, drop=('lm_head.weight',))
  else:  # an old-style config.json: tied => scaled, but the stored lm_head is kept
    path = _copy(ckpts['v11'], tmp_path / case, config={'scale_decoder_outputs': None, 'tie_word_embeddings': True})
  params, cfg = load_hf_t5(path)
  assert not cfg.logits_via_embedding
  model = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  np.testing.assert_allclose(_our_logits(params, cfg), _hf_logits(model), atol=1e-4, rtol=0)


def test_scan_layers_config_stacks_layers(ckpts):
  params, cfg = load_hf_t5(ckpts['v11'])
  scanned_cfg = cfg.replace(scan_layers=True)
  scanned, returned = load_hf_t5(ckpts['v11'], config=scanned_cfg)
  assert returned is scanned_cfg
  assert _shapes(scanned) == _model_shapes(scanned_cfg)
  jax.tree.map(np.testing.assert_array_equal, scanned, stack_layers(params))


def test_slices_of_transposed_stacked_tensors(ckpts):
  _, cfg = load_hf_t5(ckpts['v11'])
  tensors, _ = hf_reader._locate(str(ckpts['v11']))
  sources = hf_reader._sources(hf_reader.t5x_plan(cfg.replace(scan_layers=True), 'lm_head.weight'), tensors,
                               cfg.replace(scan_layers=True), 'v11')
  source = sources['decoder/layers/mlp/wo/kernel']
  assert source.shape == (3, 64, 32)
  full = source.start_read((slice(None),) * 3)()
  index = (slice(1, 3), slice(16, 48), slice(0, 8))
  np.testing.assert_array_equal(source.start_read(index)(), full[index])
  torch_wo = ckpts['v11_model'].decoder.block[2].layer[2].DenseReluDense.wo.weight.detach().numpy()
  np.testing.assert_array_equal(full[2], torch_wo.T)


def test_dtype_cast_and_shardings(ckpts):
  base, _ = load_hf_t5(ckpts['v10'])
  cast, _ = load_hf_t5(ckpts['v10'], dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(cast)} == {jnp.dtype(jnp.bfloat16)}
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('model',))
  shardings = jax.tree.map(lambda _: device, base)
  spec = jax.sharding.PartitionSpec(None, 'model')
  shardings['token_embedder']['embedding'] = jax.sharding.NamedSharding(mesh, spec)
  shardings['encoder']['encoder_norm']['scale'] = None
  placed, _ = load_hf_t5(ckpts['v10'], shardings=shardings)
  assert isinstance(placed['token_embedder']['embedding'], jax.Array)
  assert placed['token_embedder']['embedding'].sharding == shardings['token_embedder']['embedding']
  assert isinstance(placed['encoder']['encoder_norm']['scale'], np.ndarray)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), placed, base)


def test_bfloat16_checkpoint_keeps_its_dtype(ckpts, tmp_path):
  to_bf16 = lambda tensors: {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
  path = _copy(ckpts['v10'], tmp_path / 'bf16', convert=to_bf16)
  params, _ = load_hf_t5(path)
  embedding = params['token_embedder']['embedding']
  assert embedding.dtype == ml_dtypes.bfloat16
  shared = ckpts['v10_model'].shared.weight.detach().to(torch.bfloat16).float().numpy()
  np.testing.assert_array_equal(embedding.astype(np.float32), shared)


def test_given_config_is_checked_against_config_json(ckpts):
  _, cfg = load_hf_t5(ckpts['v11'])
  params, same = load_hf_t5(ckpts['v11'], config=cfg)
  assert same is cfg
  with pytest.raises(CheckpointError, match=r'num_heads=4 \(HF num_heads\).*num_heads=8'):
    load_hf_t5(ckpts['v11'], config=cfg.replace(num_heads=8, head_dim=4))
  with pytest.raises(CheckpointError, match='logits_via_embedding=False.*logits_via_embedding=True'):
    load_hf_t5(ckpts['v11'], config=cfg.replace(logits_via_embedding=True))


def test_without_config_json_the_given_config_decides(ckpts, tmp_path):
  os.makedirs(tmp_path / 'bare')
  shutil.copy(ckpts['v11'] / 'model.safetensors', tmp_path / 'bare')
  with pytest.raises(CheckpointError, match='no config.json.*pass config='):
    load_hf_t5(tmp_path / 'bare')
  base, cfg = load_hf_t5(ckpts['v11'])
  params, _ = load_hf_t5(tmp_path / 'bare' / 'model.safetensors', config=cfg)
  jax.tree.map(np.testing.assert_array_equal, params, base)
  with pytest.raises(CheckpointError, match="lm_head.weight' differs from 'shared.weight"):
    load_hf_t5(tmp_path / 'bare', config=cfg.replace(logits_via_embedding=True))


# ------------------------------------------------------------------------------------------ bad inputs


def test_missing_path(tmp_path):
  with pytest.raises(CheckpointError, match=f'{tmp_path / "nope"}: no such file'):
    load_hf_t5(tmp_path / 'nope')


def test_directory_without_safetensors(tmp_path):
  (tmp_path / 'config.json').write_text('{}')
  (tmp_path / 'pytorch_model.bin').write_bytes(b'\0')
  with pytest.raises(CheckpointError, match=r'no model.safetensors or model.safetensors.index.json.*'
                     r'pytorch_model.bin'):
    load_hf_t5(tmp_path)


def test_non_t5_safetensors_names_its_keys(tmp_path):
  bert = {
      'bert.embeddings.word_embeddings.weight': np.zeros((8, 4), np.float32),
      'bert.encoder.layer.0.attention.self.query.weight': np.zeros((4, 4), np.float32)
  }
  save_file(bert, tmp_path / 'model.safetensors')
  with pytest.raises(CheckpointError, match=r"no 'shared.weight'.*bert.embeddings.word_embeddings.weight"):
    load_hf_t5(tmp_path)


def test_config_json_shapes_that_do_not_match_the_weights(ckpts, tmp_path):
  path = _copy(ckpts['v11'], tmp_path / 'dff', config={'d_ff': 48})
  with pytest.raises(
      CheckpointError, match=r"'encoder.block.0.layer.1.DenseReluDense.wi_0.weight' of shape "
      r"\[64, 32\] gives 'encoder/layers_0/mlp/wi_0/kernel' shape \[32, 64\], but "
      r".*dff/config.json implies \[32, 48\]"):
    load_hf_t5(path)


def test_expected_shapes_mismatch_names_parameter_and_shapes(ckpts):
  _, cfg = load_hf_t5(ckpts['v11'])
  expected = _model_shapes(cfg)
  load_hf_t5(ckpts['v11'], expected_shapes={'/'.join(k): v for k, v in expected.items()})  # exact: accepted
  expected[('decoder', 'layers_1', 'mlp', 'wo', 'kernel')] = (64, 33)
  with pytest.raises(CheckpointError, match=r"'decoder/layers_1/mlp/wo/kernel' has shape \[64, 32\].*\[64, 33\]"):
    load_hf_t5(ckpts['v11'], expected_shapes={'/'.join(k): v for k, v in expected.items()})


def test_shard_listed_in_index_but_missing(ckpts, tmp_path):
  path = shutil.copytree(ckpts['v11_sharded'], tmp_path / 'sharded')
  shard = sorted(path.glob('model-*.safetensors'))[2]
  os.remove(shard)
  with pytest.raises(CheckpointError, match=rf"index.json: shard '{shard.name}' \(holding '.*'\) is missing"):
    load_hf_t5(path)


@pytest.mark.parametrize('edit,message', [
    (dict(drop=('encoder.block.1.layer.0.SelfAttention.k.weight',)),
     r"missing: 'encoder.block.1.layer.0.SelfAttention.k.weight' \(for encoder/layers_1/attention/key/kernel\)"),
    (dict(config={'num_layers': 1}), r'do not fit the config \(1 encoder.*encoder.block.1.layer.0.SelfAttention'),
    (dict(config={'feed_forward_proj': 'gated-tanh'}), r"activation 'tanh'.*not implement"),
    (dict(config={'model_type': 'umt5'}), r"model_type 'umt5' is not supported"),
])
def test_bad_checkpoint_contents(ckpts, tmp_path, edit, message):
  with pytest.raises(CheckpointError, match=message):
    load_hf_t5(_copy(ckpts['v11'], tmp_path / 'bad', **edit))


def test_damaged_files(ckpts, tmp_path):
  (tmp_path / 'garbage').mkdir()
  (tmp_path / 'garbage' / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00not json at all!')
  with pytest.raises(CheckpointError, match='garbage/model.safetensors: not a readable safetensors file'):
    load_hf_t5(tmp_path / 'garbage')
  (tmp_path / 'index').mkdir()
  (tmp_path / 'index' / 'model.safetensors.index.json').write_text('{"metadata": {}}')
  with pytest.raises(CheckpointError, match='model.safetensors.index.json: not a safetensors index'):
    load_hf_t5(tmp_path / 'index')
