"""Hugging Face PEFT adapter folders against the real peft and transformers: jaxprompt's exports give PeftModel the
logits of jaxprompt's `BaseModel`, PEFT's own adapters give jaxprompt PEFT's logits, and what PEFT cannot
represent (or another model's adapter, an unknown type, missing or unsafe files) is one clear PromptError."""
import functools
import importlib
import json
import pickle

import jax
import numpy as np
import pytest

from jaxprompt.checkpoints.huggingface import load_hf_t5
from jaxprompt.cli.main import main as cli_main
from jaxprompt.commands import export as export_lib
from jaxprompt.commands import prompt_files
from jaxprompt.errors import PromptError
from jaxprompt.methods import peft_adapters
from jaxprompt.methods.p_tuning import PTuning
from jaxprompt.methods.prefix_tuning import PrefixTuning
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models import fingerprint
from jaxprompt.models.families import build_model
from jaxprompt.runtime import optim
from jaxprompt.runtime.state import init_train_state
from tests.method_helpers import make_batch, save_run, train

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')

VOCAB, PLEN = 80, 5


def _build(path, seed, **sizes):
  """A random untied T5 1.1-style model saved at `path`: (its folder, jaxprompt params, config)."""
  torch.manual_seed(seed)
  cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, num_heads=4, d_ff=48, feed_forward_proj='gated-gelu',
                              relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                              decoder_start_token_id=0, pad_token_id=0, **sizes)
  model = transformers.T5ForConditionalGeneration(cfg)
  model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))  # transformers 5 ties when building
  model.config.tie_word_embeddings = False
  model.save_pretrained(path, safe_serialization=True)
  params, config = load_hf_t5(path)
  return path, params, config


@pytest.fixture(scope='module')
def hf(tmp_path_factory):
  """heads x d_kv = d_model, 2 + 2 layers (PEFT's even-L layer sharing)."""
  return _build(tmp_path_factory.mktemp('peft_hf') / 'model', 0, d_kv=8, num_layers=2, num_decoder_layers=2)


@pytest.fixture(scope='module')
def hf_odd(tmp_path_factory):
  """heads x d_kv = 24 != d_model 32 and a 3-layer decoder over a 2-layer encoder (PEFT's odd-L mapping)."""
  return _build(tmp_path_factory.mktemp('peft_hf_odd') / 'model', 1, d_kv=6, num_layers=2, num_decoder_layers=3)


def _batch():
  rng = np.random.RandomState(1)
  enc = rng.randint(2, VOCAB, (2, 7))
  enc[:, -1] = 1
  enc[1, 4:] = 0
  targets = rng.randint(2, VOCAB, (2, 4))
  targets[:, -1] = 1
  return make_batch(enc, targets)


@functools.cache
def _jitted_logits(config, method):
  return jax.jit(build_model(config, method).logits)


def _logits(config, method, params, trainable, batch):
  """jaxprompt's teacher-forced logits, jitted once per (config, method): tests sharing shapes share a compile."""
  return np.asarray(_jitted_logits(config, method)(params, trainable, batch))


def _base(folder):
  return transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()


def _torch_logits(model, batch):
  with torch.no_grad():
    enc = torch.tensor(batch['encoder_input_tokens'], dtype=torch.long)
    return model(input_ids=enc, attention_mask=(enc > 0).long(),
                 decoder_input_ids=torch.tensor(batch['decoder_input_tokens'], dtype=torch.long)).logits.numpy()


# ------------------------------------------------------------------------------------ jaxprompt -> PEFT


def test_trained_p_tuning_run_exports_to_peft_with_the_same_logits(hf, tmp_path):
  """A short real P-tuning run's checkpoint -> export --format peft -> PeftModel: jaxprompt's logits. The type is
  P_TUNING (read from the orbax state), the sizes come from the step's fingerprint, which the adapter records."""
  folder, params, config = hf
  method = PTuning(length=PLEN, embed_dim=config.emb_dim, encoder='mlp', hidden=16)
  batch = _batch()
  state, history = train(build_model(config, method), params, batch, 2, optim.make_optimizer(optim.adam, 0.05))
  assert history[-1] < history[0]
  recorded = fingerprint.model_fingerprint(config, None, params['token_embedder']['embedding'])
  run = save_run(tmp_path / 'run', method, state, recorded)
  written = export_lib.export(str(tmp_path / 'adapter'), checkpoint=str(run), format='peft', base_model='tiny-t5')
  assert written['peft_type'] == 'P_TUNING' and written['fingerprint_id'] == recorded['id']
  config_json = json.loads((tmp_path / 'adapter' / peft_adapters.CONFIG_FILE).read_text())
  assert config_json['num_layers'] == 2 and config_json['num_attention_heads'] == 4  # from the fingerprint
  assert config_json['base_model_name_or_path'] == 'tiny-t5' and config_json['inference_mode'] is True
  plain, computed = method.inference(state.trainable)  # PTuning's computed prompt, as plain prompt tuning
  ours = _logits(config, plain, params, computed, batch)
  theirs = _torch_logits(peft.PeftModel.from_pretrained(_base(folder), str(tmp_path / 'adapter')).eval(), batch)
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  assert np.abs(theirs - _torch_logits(_base(folder), batch)).max() > 1e-2  # the prompt is in effect
  # jaxprompt reads it back: the same prompt and the recorded fingerprint.
  assert prompt_files.recorded_fingerprint(str(tmp_path / 'adapter')) == recorded
  assert prompt_files.recorded_fingerprint(str(run)) == recorded
  _, trainable = prompt_files.load_tuned(prompt_file=str(tmp_path / 'adapter'), checkpoint=None, step=None,
                                         prompt_length=None, config=config)
  np.testing.assert_array_equal(trainable['prompt'], np.asarray(computed['prompt']))


def _rows(config, kinds, length, seed=0):
  """Random prefix rows {kind: (key, value)} [layers, P, heads, head_dim] for `config`."""
  rng = np.random.RandomState(seed)
  out = {}
  for kind in kinds:
    layers = config.num_encoder_layers if kind == 'encoder_self' else config.num_decoder_layers
    shape = (layers, length, config.num_heads, config.head_dim)
    out[kind] = (rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32))
  return out


def test_odd_depth_prefix_with_narrow_heads_exports_exactly(hf_odd, tmp_path):
  folder, params, config = hf_odd
  method = PrefixTuning.for_config(config, length=3, kinds=('decoder_self',), projection=False, relpos='positions')
  rows = _rows(config, ('decoder_self',), 3)
  peft_adapters.write_prefix(tmp_path / 'prefix', rows, 'positions')
  batch = _batch()
  trainable = {'decoder_self': dict(zip(('key', 'value'), rows['decoder_self']))}
  ours = _logits(config, method, params, trainable, batch)
  theirs = _torch_logits(peft.PeftModel.from_pretrained(_base(folder), str(tmp_path / 'prefix')).eval(), batch)
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  adapter = peft_adapters.read_adapter(tmp_path / 'prefix', config)  # and back, bit for bit
  np.testing.assert_array_equal(adapter.arrays['decoder_self/key'], rows['decoder_self'][0])
  np.testing.assert_array_equal(adapter.arrays['decoder_self/value'], rows['decoder_self'][1])


def test_what_peft_cannot_represent_is_refused(hf):
  _, _, config = hf
  rows = _rows(config, ('encoder_self', 'decoder_self'), 2)
  with pytest.raises(PromptError, match=r"\['encoder_self'\] prefixes.*T5's encoder ignores"):
    peft_adapters.prefix_tensor(rows, 'positions', 'x')
  decoder = {'decoder_self': rows['decoder_self']}
  with pytest.raises(PromptError, match=r"relpos is 'none'.*only relpos 'positions'"):
    peft_adapters.prefix_tensor(decoder, 'none', 'x')
  with pytest.raises(PromptError, match=r'decoder layers 0 and 1 of 2 one shared prefix.*key rows differ'):
    peft_adapters.prefix_tensor(decoder, 'positions', 'x')
  key, value = (np.repeat(x[:1], 2, axis=0) for x in decoder['decoder_self'])  # layers that agree: representable
  assert peft_adapters.prefix_tensor({'decoder_self': (key, value)}, 'positions', 'x').shape == (2, 2 * 2 * 32)


# ------------------------------------------------------------------------------------ PEFT -> jaxprompt


def _peft_trained(folder, peft_config, batch, steps=2):
  """A PEFT model of `peft_config` after a few Adam steps (so it is not its init), in eval mode."""
  model = peft.get_peft_model(_base(folder), peft_config)
  model.train()
  opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
  enc = torch.tensor(batch['encoder_input_tokens'], dtype=torch.long)
  labels = torch.tensor(batch['decoder_target_tokens'], dtype=torch.long)
  for _ in range(steps):
    opt.zero_grad()
    model(input_ids=enc, attention_mask=(enc > 0).long(), labels=labels).loss.backward()
    opt.step()
  return model.eval()


PEFT_CONFIGS = {
    'PROMPT_TUNING': lambda: peft.PromptTuningConfig(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=PLEN),
    'P_TUNING': lambda: peft.PromptEncoderConfig(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=PLEN, encoder_hidden_size=
                                                 16),
    'PREFIX_TUNING': lambda: peft.PrefixTuningConfig(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=3),
}


@pytest.mark.parametrize('peft_type', sorted(PEFT_CONFIGS))
def test_peft_adapters_load_with_peft_logits(hf, peft_type, tmp_path):
  folder, params, config = hf
  batch = _batch()
  trained = _peft_trained(folder, PEFT_CONFIGS[peft_type](), batch)
  theirs = _torch_logits(trained, batch)
  trained.save_pretrained(tmp_path / 'adapter')
  method, trainable = prompt_files.load_tuned(prompt_file=str(tmp_path / 'adapter'), checkpoint=None, step=None,
                                              prompt_length=None, config=config)
  assert isinstance(method, PrefixTuning if peft_type == 'PREFIX_TUNING' else PromptTuning)
  ours = _logits(config, method, params, trainable, batch)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  assert prompt_files.recorded_fingerprint(str(tmp_path / 'adapter')) is None


def test_peft_prefix_for_narrow_heads_is_refused(hf_odd, tmp_path):
  """PEFT derives head_dim = token_dim // heads = 8 from d_model; the model's is 6 (PEFT issue #385)."""
  folder, _, config = hf_odd
  peft.get_peft_model(_base(folder), PEFT_CONFIGS['PREFIX_TUNING']()).save_pretrained(tmp_path / 'adapter')
  with pytest.raises(PromptError, match=r"adapter_config.json num_layers is 2 but the model's num_decoder_layers is 3"):
    peft_adapters.read_adapter(tmp_path / 'adapter', config)
  config_json = json.loads((tmp_path / 'adapter' / peft_adapters.CONFIG_FILE).read_text())
  (tmp_path / 'adapter' / peft_adapters.CONFIG_FILE).write_text(json.dumps({**config_json, 'num_layers': 3}))
  with pytest.raises(PromptError, match=r"token_dim // num_attention_heads is 8 but the model's head_dim is 6"):
    peft_adapters.read_adapter(tmp_path / 'adapter', config)


# ------------------------------------------------------------------------------------ bad folders


class _Bomb:

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


def test_bad_adapters_are_one_clear_error(hf, tmp_path):
  folder, _, config = hf
  peft_adapters.write_prompt(tmp_path / 'ok', np.ones((PLEN, 32), np.float32))
  with pytest.raises(
      PromptError, match=r"width \(token_dim\) of 'prompt_embeddings' \(10, 32\) is 32 but the "
      r"model's emb_dim is 16"):
    peft_adapters.read_adapter(tmp_path / 'ok', config.replace(emb_dim=16))
  with pytest.raises(PromptError, match=r'holds a prompt of 5 virtual tokens but PROMPT_LENGTH is 4'):
    prompt_files.load_tuned(prompt_file=str(tmp_path / 'ok'), checkpoint=None, step=None, prompt_length=4,
                            config=config)
  lora = tmp_path / 'lora'
  lora.mkdir()
  (lora / peft_adapters.CONFIG_FILE).write_text(json.dumps({'peft_type': 'LORA', 'r': 8}))
  with pytest.raises(
      PromptError, match=r"peft_type 'LORA' is not supported; jaxprompt reads the prompt-learning "
      r'types PROMPT_TUNING, P_TUNING, PREFIX_TUNING'):
    peft_adapters.read_adapter(lora)
  with pytest.raises(PromptError, match=r'no adapter_config.json'):
    peft_adapters.read_adapter(tmp_path)
  with pytest.raises(PromptError, match=r'nope does not exist'):
    peft_adapters.read_adapter(tmp_path / 'nope')
  (tmp_path / 'ok' / peft_adapters.WEIGHTS_FILE).unlink()
  with pytest.raises(PromptError, match=r'no adapter_model.safetensors \(nor adapter_model.bin\)'):
    peft_adapters.read_adapter(tmp_path / 'ok')
  # adapter_model.bin: tensors load through torch's weights-only unpickler, anything else is refused unexecuted.
  peft.get_peft_model(_base(folder),
                      PEFT_CONFIGS['PROMPT_TUNING']()).save_pretrained(tmp_path / 'bin', safe_serialization=False)
  assert peft_adapters.read_adapter(tmp_path / 'bin', config).arrays['prompt'].shape == (PLEN, 32)
  marker = tmp_path / 'executed'
  bomb = pickle.dumps({'prompt_embeddings': _Bomb(str(marker))}, protocol=2)
  (tmp_path / 'bin' / peft_adapters.PICKLE_FILE).write_bytes(bomb)
  with pytest.raises(PromptError, match=r'refusing .*adapter_model.bin: it cannot be loaded with weights_only=True'):
    peft_adapters.read_adapter(tmp_path / 'bin', config)
  assert not marker.exists()


def test_per_layer_prompts_and_bad_formats_are_refused(tmp_path):
  numpy_dir = tmp_path / 'run' / 'numpy_checkpoints' / 'checkpoint_2'
  numpy_dir.mkdir(parents=True)
  np.savez(numpy_dir / 'per_layer_prompts.npz', prompt=np.ones((2, 4), np.float32), layers=np.ones((1, 2, 4)))
  with pytest.raises(PromptError, match=r'PEFT has no per-layer prompt type'):
    export_lib.export(str(tmp_path / 'out'), checkpoint=str(numpy_dir), format='peft')
  code = cli_main(['export', '--checkpoint', str(numpy_dir), '--output', str(tmp_path / 'out'), '--base_model', 'x'])
  assert code == 2


# ------------------------------------------------------------------------------------ the command line


def test_cli_export_format_peft(hf, tmp_path, capsys):
  """`jaxprompt export --format peft` on a small run dir; gin's MODEL_CONFIG, when given, fills the sizes."""
  import gin  # pylint: disable=g-import-not-at-top
  importlib.import_module('jaxprompt.commands.configs')  # registers jaxprompt.model_config with gin
  folder, params, config = hf
  method = PromptTuning(length=PLEN, embed_dim=config.emb_dim)
  trainable = {'prompt': np.random.RandomState(0).uniform(-0.5, 0.5, (PLEN, 32)).astype(np.float32)}
  state = init_train_state(trainable, optim.make_optimizer().tx, jax.random.PRNGKey(0))
  run = save_run(tmp_path / 'run', method, state)
  out = tmp_path / 'adapter'
  assert cli_main(['export', '--checkpoint', str(run), '--format', 'peft', '--output', str(out)]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['peft_type'] == 'PROMPT_TUNING' and summary['output'] == str(out)
  assert summary['fingerprint_id'] is None
  config_json = json.loads((out / peft_adapters.CONFIG_FILE).read_text())
  assert config_json['num_layers'] is None and config_json['token_dim'] == 32  # PEFT fills the rest from T5
  batch = _batch()
  theirs = _torch_logits(peft.PeftModel.from_pretrained(_base(folder), str(out)).eval(), batch)
  np.testing.assert_allclose(theirs, _logits(config, method, params, trainable, batch), atol=1e-4, rtol=0)
  try:
    gin.parse_config("MODEL_CONFIG = @jaxprompt.model_config()\njaxprompt.model_config.name = 't5x_tiny'")
    export_lib.export(str(out), checkpoint=str(run), format='peft')
    assert json.loads((out / peft_adapters.CONFIG_FILE).read_text())['num_layers'] == 2
    gin.parse_config("jaxprompt.model_config.name = 'test_tiny'")
    with pytest.raises(PromptError, match=r'has shape \(5, 32\) but the model config has emb_dim 16'):
      export_lib.export(str(out), checkpoint=str(run), format='peft')
  finally:
    gin.clear_config()
