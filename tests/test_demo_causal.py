"""The causal demo: the shipped tiny Llama read by the package's real Hugging Face readers (and by transformers),
pretraining's `--family causal` path end to end (a few steps), and `jaxprompt demo --family causal` meeting the
demo's quality bar on a small budget."""
import json
import os
import pathlib

import numpy as np
import pytest
import safetensors.numpy

from jaxprompt.checkpoints import readers
from jaxprompt.checkpoints.hf_causal import hf_causal_config, load_hf_causal
from jaxprompt.data.hf_vocab import HfVocabulary
from jaxprompt.demo import causal_model, data, families
from jaxprompt.demo import model as demo_model
from jaxprompt.errors import CheckpointError, ConfigError

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
ASSET = pathlib.Path(causal_model.asset_dir())
FILES = {
    'config.json', 'model.safetensors', 'tokenizer.model', 'tokenizer_config.json', 'pretraining.json', 'README.md'
}

pytestmark = pytest.mark.usefixtures('clean_gin_and_demo_tasks')

# ------------------------------------------------------------------------------------------ shipped model


def test_shipped_folder_is_a_llama_the_hf_reader_loads():
  assert {p.name for p in ASSET.iterdir()} == FILES  # no dot-files: everything survives a wheel build
  hf = json.loads((ASSET / 'config.json').read_text())
  assert hf['architectures'] == ['LlamaForCausalLM'] and hf['model_type'] == 'llama'
  config = hf_causal_config(ASSET)
  assert config == causal_model.CAUSAL_CONFIG  # pretraining recorded the architecture it trained
  assert (config.norm, config.positions, config.mlp_activations) == ('rms', 'rotary', ('silu', 'linear'))
  assert config.num_heads == 4 and config.num_kv_heads == 2 and not config.tie_word_embeddings  # GQA, untied
  params, read = load_hf_causal(ASSET)
  assert read == config
  layer = params['decoder']['layers_0']['self_attention']
  assert layer['query']['kernel'].shape == (128, 4 * 32) and layer['key']['kernel'].shape == (128, 2 * 32)
  # The package's family-dispatching reader gives the same weights (what `jaxprompt train` reads).
  same = readers.load(str(ASSET), config)
  np.testing.assert_array_equal(same['token_embedder']['embedding'], params['token_embedder']['embedding'])
  tensors = safetensors.numpy.load_file(ASSET / 'model.safetensors')
  assert all(t.dtype == np.float32 for t in tensors.values()) and 'lm_head.weight' in tensors
  size = sum(t.size for t in tensors.values())
  assert 0.5e6 < size < 2e6 and (ASSET / 'model.safetensors').stat().st_size < 8e6  # a few MB


def test_shipped_tokenizer_is_the_demo_vocabulary():
  """The T5 demo's SentencePiece model, byte for byte: the demo tasks encode the same ids for both families."""
  assert (ASSET / 'tokenizer.model').read_bytes() == (pathlib.Path(demo_model.asset_dir()) / 'vocab.model').read_bytes()
  vocab = causal_model.vocabulary()
  assert isinstance(vocab, HfVocabulary) and vocab is causal_model.vocabulary(str(ASSET))
  assert (vocab.bos_id, vocab.eos_id, vocab.pad_id, vocab.adds_bos) == (None, 1, 0, False)
  text = data.heldout_examples('topic', 1, seed=1)[0][0]
  assert vocab.encode(text) == list(demo_model.vocabulary().encode(text))


def test_shipped_model_knows_its_skills():
  """pretraining.json: the recipe, and the instructed skills the demo builds on learned well."""
  info = causal_model.read_info()
  assert info['pretraining']['gin_files'] == ['runs/demo_causal_pretrain.gin']
  assert '--family causal' in info['pretraining']['command']
  assert info['validation']['demo_topic/accuracy'] >= 90 and info['validation']['demo_sentiment/accuracy'] >= 90


def test_causal_family_errors_name_the_folder(tmp_path):
  with pytest.raises(CheckpointError, match='no causal demo model'):
    causal_model.causal_model_dir(str(tmp_path))
  with pytest.raises(CheckpointError, match='tokenizer.model does not exist'):
    causal_model.vocabulary(str(tmp_path))
  with pytest.raises(ConfigError, match="unknown demo model family 'bert'"):
    families.get('bert')


@pytest.mark.slow
def test_shipped_model_matches_transformers():
  """transformers' LlamaForCausalLM and LlamaTokenizer read the folder as jaxprompt does: same ids, same logits."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  import jax.numpy as jnp

  from jaxprompt.models.causal_lm import CausalTransformer
  text = data.heldout_examples('sentiment', 1, seed=1)[0][0]
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(ASSET))
  ids = tokenizer(text).input_ids
  assert ids == causal_model.vocabulary().encode(text)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(ASSET)).eval()
  with torch.no_grad():
    theirs = model(torch.tensor([ids])).logits.numpy()
  params, config = load_hf_causal(ASSET)
  ours = CausalTransformer(config).apply({'params': params}, jnp.asarray([ids]), enable_dropout=False)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


def test_demo_causal_gin_reads_the_shipped_folder_as_any_llama():
  """models/demo_causal.gin is models/hf_causal.gin with HF_MODEL_DIR = the shipped folder (or DEMO_MODEL_DIR)."""
  import gin

  from jaxprompt.cli import gin_config
  from jaxprompt.demo import GIN_MODULES
  gin_config.import_configurables(GIN_MODULES)
  from jaxprompt.commands import configs
  gin_config.parse(('models/demo_causal.gin', 'runs/demo.gin'), ["MODEL_DIR = '/tmp/unused'"])
  assert causal_model.causal_model_dir() == str(ASSET)
  assert configs.hf_model_config() == causal_model.CAUSAL_CONFIG  # pylint: disable=no-value-for-parameter
  gin_config.parse(('models/demo_causal.gin', 'runs/demo.gin'),
                   ["MODEL_DIR = '/tmp/unused'", "DEMO_MODEL_DIR = '/nowhere/model'"])
  with pytest.raises(CheckpointError, match='/nowhere/model holds no causal demo model'):
    configs.hf_model_config()  # pylint: disable=no-value-for-parameter
  assert gin.query_parameter('jaxprompt.ModelSource.vocabulary') is not None  # the model's tokenizer reads the tasks


# ------------------------------------------------------------------------------------------ pretraining


@pytest.mark.slow
def test_pretrain_causal_family_end_to_end(tmp_path):
  """`--family causal`: the T5 demo's recipe into a Hugging Face Llama folder the reader loads."""
  from jaxprompt.demo import pretrain
  out = tmp_path / 'model'
  code = pretrain.main([
      '--family', 'causal', '--output',
      str(out), '--steps', '3', '--eval_examples', '2', '--log_dir',
      str(tmp_path / 'logs')
  ])
  assert code == 0
  assert {p.name for p in out.iterdir()} == FILES - {'README.md'}
  assert (out / 'tokenizer.model').read_bytes() == (ASSET / 'tokenizer.model').read_bytes()  # same seed, same vocab
  info = json.loads((out / causal_model.INFO_FILE).read_text())
  assert info['pretraining']['steps'] == 3 and info['pretraining']['gin_files'] == ['runs/demo_causal_pretrain.gin']
  assert {k.split('/')[0] for k in info['validation']} == {f'demo_{s}' for s in data.SKILLS}
  params, config = load_hf_causal(out)
  assert config == causal_model.CAUSAL_CONFIG
  shipped, _ = load_hf_causal(ASSET)
  import jax
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, shipped)
  assert pretrain.main(['--family', 'causal', '--output', str(out), '--steps', '1']) == 2  # never overwritten


# ------------------------------------------------------------------------------------------ the demo


@pytest.mark.slow
def test_causal_demo_meets_the_quality_bar_on_a_small_budget(tmp_path, capsys):
  from jaxprompt.demo import run
  code = run.main([
      '--family', 'causal', '--output',
      str(tmp_path), '--steps', '20', '--baseline_steps', '10', '--eval_period', '10', '--eval_examples', '100'
  ])
  out = capsys.readouterr().out
  assert code == 0, out
  summary = json.loads((tmp_path / run.SUMMARY_FILE).read_text())
  assert summary['family'] == 'causal' and summary['meets_quality_bar'] is True, out
  assert summary['prompt_accuracy'] >= 0.9 * summary['model_accuracy']
  assert summary['prompt_accuracy'] >= summary['frozen_accuracy'] + 40
  assert 'quality bar MET' in out and 'causal demo model' in out
  prompt = np.load(tmp_path / 'prompt.npy')
  assert prompt.shape == (20, causal_model.CAUSAL_CONFIG.emb_dim)
  recorded = json.loads((tmp_path / 'prompt.npy.fingerprint.json').read_text())  # the causal model it belongs to
  assert recorded['config']['num_kv_heads'] == 2


def test_causal_demo_bad_model_dir(tmp_path, capsys):
  from jaxprompt.demo import run
  assert run.main(['--family', 'causal', '--output', str(tmp_path), '--model', str(tmp_path / 'nope')]) == 2
  assert 'nope' in capsys.readouterr().err
