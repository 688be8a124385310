"""`jaxprompt export --format hf_model` (`checkpoints/hf_writer.py`): a T5X model as a Hugging Face T5 folder that
transformers loads with jaxprompt's logits (T5 1.1 untied; T5 1.0 tied and scaled), that jaxprompt's HF reader
reads back bit for bit, whose tokenizer encodes like seqio, and that serves a PEFT adapter of the same run."""
import functools
import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import seqio
from safetensors import safe_open

from jaxprompt.checkpoints import common, flatten_params, hf_names, hf_tokenizer, load_t5x_checkpoint
from jaxprompt.checkpoints.hf_writer import save_hf_t5
from jaxprompt.checkpoints.huggingface import INDEX_FILE, load_hf_t5
from jaxprompt.cli.main import main as cli_main
from jaxprompt.commands import export as export_lib
from jaxprompt.data import vocab as vocab_lib
from jaxprompt.demo import model as demo_model
from jaxprompt.errors import CheckpointError
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models import layers
from jaxprompt.models.config import T5Config, get_config
from jaxprompt.models.families import build_model
from jaxprompt.models.scan import stack_layers
from jaxprompt.models.t5 import Transformer
from jaxprompt.runtime import optim
from tests.method_helpers import make_batch, save_run, train

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')

TINY = get_config('t5x_tiny')
# T5 1.0-style: ReLU, the head tied to the embedding and scaled; heads x d_kv (24) != d_model (32), 2 + 3 layers.
V10 = T5Config(vocab_size=96, emb_dim=32, num_heads=4, head_dim=6, mlp_dim=64, num_encoder_layers=2,
               num_decoder_layers=3, mlp_activations=('relu',), logits_via_embedding=True, relpos_num_buckets=8,
               relpos_max_distance=16)
TEXTS = ['good movie plot', 'awful film acting story', 'superb story']
CLI_EXPORT = ['export', '--gin_file=models/t5x_tiny.gin', '--format', 'hf_model']


@pytest.fixture(scope='module')
def tiny_params(fixtures_dir):
  return load_t5x_checkpoint(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0')


@pytest.fixture(scope='module')
def tiny_hf(tiny_gin, tmp_path_factory):
  """The fixture model (T5 1.1-style) with the tiny task's vocabulary, written by the command line."""
  out = tmp_path_factory.mktemp('hf_export') / 'tiny'
  try:
    assert cli_main([*CLI_EXPORT, f'--gin_file={tiny_gin}', '--output', str(out)]) == 0
  finally:
    gin.clear_config()
  return out


@pytest.fixture(scope='module')
def v10(tmp_path_factory):
  """A random T5 1.0-style model written by the API: (folder, params)."""
  z = jnp.ones((1, 4), jnp.int32)
  init = functools.partial(Transformer(V10).init, enable_dropout=False)
  shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0), z, z, z)['params'])
  rng = np.random.RandomState(0)  # numpy draws: no init to compile. Kernels ~ fan_in**-0.5, scales ~ 1.
  params = jax.tree.map(
      lambda s: (rng.normal(0, s.shape[0]**-0.5
                            if len(s.shape) == 2 else 0.1, s.shape) + (len(s.shape) == 1)).astype(np.float32), shapes)
  params['token_embedder']['embedding'] *= V10.vocab_size**0.5  # T5's embedding is ~ N(0, 1)
  out = tmp_path_factory.mktemp('hf_export_v10') / 'model'
  save_hf_t5(params, V10, out)
  return out, params


def _batch(vocab_size):
  rng = np.random.RandomState(0)
  enc = rng.randint(2, vocab_size, (2, 9))
  enc[1, 5:] = 0
  targets = rng.randint(2, vocab_size, (2, 6))
  return make_batch(enc, targets)


@functools.cache
def _jitted(config, method=None):
  return jax.jit(build_model(config, method).logits)


def _our_logits(config, params, batch, method=None, trainable=None):
  return np.asarray(_jitted(config, method)(params, trainable, batch))


def _hf_logits(model, batch):
  with torch.no_grad():
    enc = torch.tensor(batch['encoder_input_tokens'], dtype=torch.long)
    return model(input_ids=enc, attention_mask=(enc > 0).long(),
                 decoder_input_ids=torch.tensor(batch['decoder_input_tokens'], dtype=torch.long)).logits.numpy()


def _load(folder):
  model, info = transformers.T5ForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  return model.eval()


# ------------------------------------------------------------------------------------ transformers' view


def test_t5_1_1_style_keeps_its_own_head_and_jaxprompts_logits(tiny_hf, tiny_params):
  model = _load(tiny_hf)
  # transformers 5 ties every T5's head to the embedding unless both are stored and differ: both survive here.
  np.testing.assert_array_equal(model.shared.weight.detach().numpy(), tiny_params['token_embedder']['embedding'])
  np.testing.assert_array_equal(model.lm_head.weight.detach().numpy().T,
                                tiny_params['decoder']['logits_dense']['kernel'])
  assert model.config.scale_decoder_outputs is False and model.config.feed_forward_proj == 'gated-gelu'
  batch = _batch(TINY.vocab_size)
  np.testing.assert_allclose(_hf_logits(model, batch), _our_logits(TINY, tiny_params, batch), atol=1e-4, rtol=0)


def test_t5_1_0_style_ties_and_scales_the_head_with_jaxprompts_logits(v10):
  folder, params = v10
  with safe_open(folder / 'model.safetensors', 'np') as f:
    assert hf_names.HEAD_KEY not in f.keys()  # transformers ties the missing head to shared.weight
  model = _load(folder)
  assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
  assert model.config.scale_decoder_outputs is True and model.config.d_kv == 6
  batch = _batch(V10.vocab_size)
  ours = _our_logits(V10, params, batch)
  np.testing.assert_allclose(_hf_logits(model, batch), ours, atol=1e-4, rtol=0)
  assert np.abs(ours).max() > 0.1  # the logits are not all near zero (the scale is in effect)


def test_the_hf_reader_reads_back_the_same_params_and_config(tiny_hf, tiny_params, v10):
  for folder, params, config in ((tiny_hf, tiny_params, TINY), (v10[0], v10[1], V10)):
    back, read_config = load_hf_t5(folder)
    assert read_config == config
    ours, theirs = flatten_params(params), flatten_params(back)
    assert sorted(ours) == sorted(theirs)
    for name, value in ours.items():
      np.testing.assert_array_equal(theirs[name], value, err_msg=name)


def test_a_scanned_tree_sharded_and_cast_to_bfloat16(v10, tmp_path):
  _, params = v10
  out = tmp_path / 'sharded'
  summary = save_hf_t5(stack_layers(params), V10.replace(scan_layers=True), out, max_shard_bytes=20_000,
                       dtype=ml_dtypes.bfloat16)
  index = json.loads((out / INDEX_FILE).read_text())
  shards = sorted(set(index['weight_map'].values()))
  assert len(shards) > 2 and shards == [
      f'model-{i:05d}-of-{len(shards):05d}.safetensors' for i in range(1,
                                                                       len(shards) + 1)
  ]
  for shard in shards:
    with safe_open(out / shard, 'np') as f:
      sizes = [f.get_tensor(k).nbytes for k in f.keys()]
    assert sum(sizes) <= 20_000 or len(sizes) == 1, (shard, sizes)
  assert index['metadata']['total_size'] == summary['bytes'] == sum(v.size * 2 for v in flatten_params(params).values())
  back, config = load_hf_t5(out)
  assert config == V10 and json.loads((out / 'config.json').read_text())['dtype'] == 'bfloat16'
  for name, value in flatten_params(params).items():
    np.testing.assert_array_equal(flatten_params(back)[name], value.astype(ml_dtypes.bfloat16), err_msg=name)
  assert _load(out).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ the tokenizer

_STRINGS = [
    'good movie plot', 'Hello world, this is a test!', 'sentiment: a great movie 1234', '  two  spaces ',
    'tab\there\nnew line', 'ünïcode ☃ ½ ﬁ Ａ', '', 'a <extra_id_3> b'
]


@pytest.mark.parametrize('name', ['t5', 'demo', 'tiny'])
def test_the_tokenizer_encodes_and_decodes_like_seqio(name, tiny_files, tmp_path):
  path, extra_ids = {
      't5': (vocab_lib.default_vocabulary_path(), 100), 'demo': (demo_model.vocabulary_path(), 0),
      'tiny': (str(tiny_files['vocab']), 0)
  }[name]
  vocab = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
  hf_tokenizer.write_tokenizer(str(tmp_path), open(path, 'rb').read(), extra_ids, path)
  loaded = [transformers.AutoTokenizer.from_pretrained(tmp_path)]
  if name != 'demo':  # a unigram model: T5Tokenizer itself (transformers 5's is unigram-only; the demo's is BPE)
    loaded.append(transformers.T5Tokenizer.from_pretrained(tmp_path))
  for tokenizer in loaded:
    assert len(tokenizer) == vocab.vocab_size and tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    for text in _STRINGS:
      ids = vocab.encode(text)
      assert tokenizer(text).input_ids == ids + [1], (type(tokenizer).__name__, text)
      if vocab.unk_id not in ids and '<extra_id' not in text:  # seqio spells those out; HF skips them as special
        assert tokenizer.decode(ids, skip_special_tokens=True) == vocab.decode(ids), text
    if extra_ids:
      assert tokenizer.convert_tokens_to_ids('<extra_id_0>') == vocab.vocab_size - 1 == vocab.encode('<extra_id_0>')[0]


# ------------------------------------------------------------------------------------------ the name map


@pytest.mark.parametrize('acts', [('relu',), ('gelu', 'linear'), ('gelu_exact', 'linear'), ('gelu',), ('gelu_exact',),
                                  ('silu', 'linear'), ('linear',)])
def test_feed_forward_proj_reads_back_and_runs_the_same_activation(acts):
  ffp = hf_names.feed_forward_proj(acts)
  assert hf_names.activations(ffp, 'config.json') == acts
  hf = transformers.T5Config(feed_forward_proj=ffp)
  assert hf.is_gated_act == (len(acts) == 2)
  x = np.linspace(-4, 4, 41, dtype=np.float32)
  theirs = transformers.activations.ACT2FN[hf.dense_act_fn](torch.tensor(x)).numpy()
  np.testing.assert_allclose(theirs, np.asarray(layers._ACTIVATIONS[acts[0]](x)), atol=1e-6, err_msg=ffp)


# ------------------------------------------------------------------------------------------ refusals


class _Failing(common.ArraySource):
  """A parameter whose read fails (a damaged checkpoint chunk)."""

  def __init__(self, name, shape):
    self.name, self._shape, self.where = name, shape, 'a damaged chunk'

  @property
  def shape(self):
    return self._shape

  def start_read(self, index):

    def fail():
      raise OSError('checksum mismatch')

    return fail


def test_an_output_folder_is_never_clobbered_unasked(v10, tmp_path):
  _, params = v10
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'README.md').write_text('mine')
  with pytest.raises(CheckpointError, match=r'out is not empty \(README.md\): pass --overwrite'):
    save_hf_t5(params, V10, out)
  save_hf_t5(params, V10, out, overwrite=True, max_shard_bytes=20_000)
  assert len(list(out.glob('model-*-of-*.safetensors'))) > 2
  # A damaged parameter mid-way: the earlier export is untouched and no staging folder is left.
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  damaged = dict(flatten_params(params), **{'decoder/layers_2/mlp/wo/kernel': _Failing('wo', (64, 32))})
  with pytest.raises(CheckpointError, match=r"parameter 'wo': cannot read its data at a damaged chunk"):
    save_hf_t5(damaged, V10, out, overwrite=True)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  # overwrite replaces the model files, drops the earlier shards and keeps the rest.
  save_hf_t5(params, V10, out, overwrite=True)
  assert sorted(os.listdir(out)) == ['README.md', 'config.json', 'generation_config.json', 'model.safetensors']
  assert sorted(os.listdir(tmp_path)) == ['out']
  (tmp_path / 'file').write_text('x')
  with pytest.raises(CheckpointError, match='file is a file; a Hugging Face model is a folder'):
    save_hf_t5(params, V10, tmp_path / 'file')
  with pytest.raises(CheckpointError, match='written to a local path'):
    save_hf_t5(params, V10, 'gs://bucket/model')


def test_bad_inputs_fail_before_anything_is_written(v10, tiny_files, tmp_path):
  _, params = v10
  out = tmp_path / 'out'
  with pytest.raises(CheckpointError, match=r"'token_embedder/embedding' has shape \[96, 32\] .* expects \[128, 32\]"):
    save_hf_t5(params, V10.replace(vocab_size=128), out)
  with pytest.raises(CheckpointError, match="missing from the checkpoint: 'decoder/layers_3/"):
    save_hf_t5(params, V10.replace(num_decoder_layers=4), out)
  with pytest.raises(CheckpointError, match=r"\('linear', 'gelu'\) has no Hugging Face T5 form"):
    save_hf_t5(params, V10.replace(mlp_activations=('linear', 'gelu')), out)
  spm = tiny_files['vocab'].read_bytes()
  with pytest.raises(CheckpointError, match=r'tiny.model: 1\d\d token ids with 100 extra ids, but the model embeds '
                     r'only 96'):
    save_hf_t5(params, V10, out, spm_model=spm, extra_ids=100, spm_where=str(tiny_files['vocab']))
  with pytest.raises(CheckpointError, match='vocab.txt: not a SentencePiece model'):
    save_hf_t5(params, V10, out, spm_model=b'not a model', spm_where='vocab.txt')
  assert sorted(os.listdir(tmp_path)) == []


# ------------------------------------------------------------------------------------------ the command line


def test_cli_export_hf_model(tiny_hf, tiny_gin, tmp_path, capsys, clean_gin):
  """The fixture folder's files; an HF folder as INITIAL_CHECKPOINT_PATH exports the same tensors; one error line
  for each misuse."""
  assert sorted(os.listdir(tiny_hf)) == sorted([
      'config.json', 'generation_config.json', 'model.safetensors', *hf_tokenizer.FILES
  ])
  out = tmp_path / 'again'
  assert cli_main([
      *CLI_EXPORT, f'--gin_file={tiny_gin}', f"--gin.INITIAL_CHECKPOINT_PATH='{tiny_hf}'", '--output',
      str(out)
  ]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['checkpoint'] == str(tiny_hf) and summary['tokenizer'] and not summary['tied_head']
  assert (out / 'model.safetensors').read_bytes() == (tiny_hf / 'model.safetensors').read_bytes()
  cases = [
      ([*CLI_EXPORT, f'--gin_file={tiny_gin}', '--output', str(out)], 'again is not empty'),
      ([*CLI_EXPORT, f'--gin_file={tiny_gin}', '--checkpoint',
        str(tmp_path), '--output',
        str(out)], 'it takes no --checkpoint'),
      (['export', '--format', 'hf_model', '--output', str(out)], 'give it, e.g. --gin_file=models/demo.gin'),
      (['export', '--checkpoint',
        str(tmp_path), '--output',
        str(tmp_path / 'p.npy'), '--overwrite'], '--overwrite is for --format hf_model'),
  ]
  for argv, message in cases:
    gin.clear_config()  # a real process starts without the previous command's bindings
    assert cli_main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith('jaxprompt: error:') and message in err and 'Traceback' not in err, err


# ------------------------------------------------------------------------------------------ PEFT on top


def test_a_trained_prompt_as_peft_over_the_export_predicts_like_jaxprompt(tiny_hf, tiny_params, tmp_path):
  """Train a prompt (2 steps), export it as PEFT, load it over the exported model: the logits and the rank
  classification scores and predictions are jaxprompt's."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_hf)
  enc = tokenizer(TEXTS, padding=True, return_tensors='np')['input_ids']
  labels = tokenizer(['negative', 'positive'], padding=True, return_tensors='np')['input_ids']  # EOS, 0-padded
  method = PromptTuning(length=5, embed_dim=TINY.emb_dim)
  batch = make_batch(enc, np.repeat(labels[1:], len(TEXTS), 0))
  state, history = train(build_model(TINY, method), tiny_params, batch, 2, optim.make_optimizer(optim.adam, 0.05))
  assert history[-1] < history[0]
  export_lib.export(str(tmp_path / 'adapter'), checkpoint=str(save_run(tmp_path / 'run', method, state)), format='peft')
  model = peft.PeftModel.from_pretrained(_load(tiny_hf), str(tmp_path / 'adapter')).eval()
  ours = _our_logits(TINY, tiny_params, batch, method, state.trainable)
  real = batch['decoder_target_tokens'] > 0  # t5x masks the decoder by its targets, transformers does not
  np.testing.assert_allclose(_hf_logits(model, batch)[real], ours[real], atol=1e-4, rtol=0)
  our_scores = np.asarray(
      jax.jit(build_model(TINY, method).rank_classify)(tiny_params, state.trainable, {'encoder_input_tokens': enc},
                                                       labels))
  their_scores = np.stack([_hf_scores(model, enc, label) for label in labels], axis=1)
  np.testing.assert_allclose(their_scores, our_scores, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(their_scores.argmax(1), our_scores.argmax(1))


def _hf_scores(model, enc, label):
  """Log-likelihood of the EOS-terminated `label` after every input: [b]."""
  target = np.repeat(label[None], len(enc), 0)
  logits = _hf_logits(model, make_batch(enc, target))
  logp = jax.nn.log_softmax(logits, -1)
  return np.asarray(jnp.sum(jnp.take_along_axis(logp, target[..., None], -1)[..., 0] * (target > 0), -1))
