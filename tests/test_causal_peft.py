"""Hugging Face PEFT CAUSAL_LM adapters both ways, against the real peft and transformers on a tiny random Llama
(grouped-query attention: its prefix is stored per key/value head) and GPT-2: adapters PEFT trains load into
jaxprompt with PEFT's logits, jaxprompt's exports load into `PeftModel` (and `AutoPeftModelForCausalLM`, from
their base_model_name_or_path) with jaxprompt's logits, and a T5 prompt given to a causal LM (or the reverse) is
one clear error, by task type and by fingerprint."""
import copy
import json

import jax
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.checkpoints.hf_causal import load_hf_causal
from jaxprompt.commands import model_check, prompt_files
from jaxprompt.errors import PromptError
from jaxprompt.formats import fingerprint_files
from jaxprompt.methods import p_tuning, peft_adapters, prefix_tuning, prompt_tuning, registry
from jaxprompt.models import fingerprint
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from tests.causal_helpers import build_hf, padded_batch

torch = pytest.importorskip('torch')
peft = pytest.importorskip('peft')
ARCHS = ('llama', 'gpt2')
PLEN = 3


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """{arch: (folder, transformers model, params, config)}, each built and read back once."""
  out = {}
  for seed, arch in enumerate(ARCHS):
    folder = tmp_path_factory.mktemp(arch)
    model = build_hf(arch, folder, seed=seed)
    params, config = load_hf_causal(folder)
    out[arch] = (folder, model, params, config)
  return out


def _batch():
  tokens, valid = padded_batch(seed=3)  # right-padded rows of different lengths, id 0 among the real tokens
  return tokens, valid


def _ours(config, method, params, trainable) -> np.ndarray:
  tokens, valid = _batch()
  batch = {'decoder_input_tokens': tokens, 'decoder_input_mask': valid.astype(np.int32)}
  return np.asarray(jax.jit(build_model(config, method).logits)(params, trainable, batch))


def _theirs(peft_model) -> np.ndarray:
  """PEFT's logits of the token positions (the rows of a prompt it puts in front are dropped)."""
  tokens, valid = _batch()
  with torch.no_grad():
    logits = peft_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                        attention_mask=torch.tensor(valid.astype(np.int64))).logits.numpy()
  return logits[:, logits.shape[1] - tokens.shape[1]:]


def _close(ours, theirs):
  valid = _batch()[1]
  assert np.abs(theirs[valid]).max() > 1.0  # logits of a real size: a misread row would not hide under the bound
  np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-4, rtol=0)


def _one_line(raised) -> str:
  assert '\n' not in str(raised.value)
  return str(raised.value)


# ------------------------------------------------------------------------------------ PEFT -> jaxprompt

PEFT_CONFIGS = {
    'PROMPT_TUNING': lambda: peft.PromptTuningConfig(task_type='CAUSAL_LM', num_virtual_tokens=PLEN),
    'P_TUNING': lambda: peft.PromptEncoderConfig(task_type='CAUSAL_LM', num_virtual_tokens=PLEN, encoder_hidden_size=16
                                                ),
    'PREFIX_TUNING': lambda: peft.PrefixTuningConfig(task_type='CAUSAL_LM', num_virtual_tokens=PLEN),
}
FAST = {('llama', 'PREFIX_TUNING'), ('gpt2', 'PROMPT_TUNING')}


def _cases(kinds):
  return [pytest.param(a, k, marks=() if (a, k) in FAST else pytest.mark.slow) for a in ARCHS for k in kinds]


def _peft_trained(base, peft_config):
  """A PEFT model of `peft_config` over a copy of `base` after two Adam steps, in eval mode."""
  model = peft.get_peft_model(copy.deepcopy(base), peft_config)
  model.train()
  tokens, valid = _batch()
  ids, mask = torch.tensor(tokens, dtype=torch.long), torch.tensor(valid.astype(np.int64))
  opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
  for _ in range(2):
    opt.zero_grad()
    model(input_ids=ids, attention_mask=mask, labels=torch.where(mask > 0, ids, -100)).loss.backward()
    opt.step()
  return model.eval()


@pytest.mark.parametrize('arch,peft_type', _cases(sorted(PEFT_CONFIGS)))
def test_peft_trained_adapters_load_with_peft_logits(models, arch, peft_type, tmp_path):
  _, base, params, config = models[arch]
  trained = _peft_trained(base, PEFT_CONFIGS[peft_type]())
  theirs = _theirs(trained)
  trained.save_pretrained(tmp_path / 'adapter')
  method, trainable = prompt_files.load_tuned(prompt_file=str(tmp_path / 'adapter'), checkpoint=None, step=None,
                                              prompt_length=None, config=config)
  assert isinstance(method, prefix_tuning.PrefixTuning if peft_type == 'PREFIX_TUNING' else prompt_tuning.PromptTuning)
  if peft_type == 'PREFIX_TUNING':  # PEFT's GQA layout: the rows carry the key/value heads
    assert trainable['decoder_self']['key'].shape == (config.num_layers, PLEN, config.num_kv_heads, config.head_dim)
  _close(_ours(config, method, params, trainable), theirs)


# ------------------------------------------------------------------------------------ jaxprompt -> PEFT

METHODS = {  # the method whose inference file is exported, and the file kind that writes its adapter
    'prompt': (lambda c: prompt_tuning.prompt_tuning(c, length=PLEN), 'prompt'),
    'p_tuning': (lambda c: p_tuning.p_tuning(c, length=PLEN, encoder='mlp', hidden=16), 'p_tuning'),
    'prefix': (lambda c: prefix_tuning.prefix_tuning(c, length=PLEN, hidden=16), 'prefix'),
}
EXPORT_FAST = {('llama', 'prefix'), ('gpt2', 'p_tuning')}


def _export(method, trainable, kind_name, config, output, base_model):
  """The method's inference file written as a PEFT adapter by its file kind, as `jaxprompt export --format peft`."""
  arrays = next(iter(method.numpy_copy(trainable).values()))
  arrays = arrays if isinstance(arrays, dict) else {'prompt': arrays}
  kind = next(k for k in registry.kinds() if k.name == kind_name)
  recorded = fingerprint.model_fingerprint(config, None, np.zeros((4, config.emb_dim), np.float32))
  target = registry.PeftTarget(str(output), 'the run', registry.model_sizes(config), str(base_model), recorded)
  return kind.peft(arrays, target)


@pytest.mark.parametrize(
    'arch,name',
    [pytest.param(a, n, marks=() if (a, n) in EXPORT_FAST else pytest.mark.slow) for a in ARCHS for n in METHODS])
def test_jaxprompt_adapters_load_into_peft_with_equal_logits(models, arch, name, tmp_path):
  folder, model, params, config = models[arch]
  factory, kind_name = METHODS[name]
  trained = factory(config)
  training_form = trained.init(jax.random.PRNGKey(1), params)
  peft_type, shape = _export(trained, training_form, kind_name, config, tmp_path / 'adapter', folder)
  method, trainable = trained.inference(training_form)  # the computed prompt / rows (P-tuning's encoder, the MLP)
  written = json.loads((tmp_path / 'adapter' / peft_adapters.CONFIG_FILE).read_text())
  assert (written['task_type'], written['num_transformer_submodules']) == ('CAUSAL_LM', 1)
  assert written['base_model_name_or_path'] == str(folder)
  if name == 'prefix':
    assert peft_type == 'PREFIX_TUNING' and shape == [config.num_layers, PLEN, config.num_kv_heads, config.head_dim]
    assert (written['num_attention_heads'], written['token_dim']) == (config.num_kv_heads,
                                                                      config.num_kv_heads * config.head_dim)
  else:
    assert peft_type == ('P_TUNING' if name == 'p_tuning' else 'PROMPT_TUNING') and shape == [PLEN, config.emb_dim]
    assert (written['num_layers'], written['num_attention_heads']) == (config.num_layers, config.num_heads)
  ours = _ours(config, method, params, trainable)
  _close(ours, _theirs(peft.PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / 'adapter')).eval()))
  if (arch, name) in EXPORT_FAST:  # the base model found from the adapter's base_model_name_or_path alone
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / 'adapter'), attn_implementation='eager')
    _close(ours, _theirs(auto.eval()))
  back, rows = prompt_files.load_tuned(prompt_file=str(tmp_path / 'adapter'), checkpoint=None, step=None,
                                       prompt_length=None, config=config)
  for got, want in zip(jax.tree.leaves(rows), jax.tree.leaves(trainable)):  # and back, bit for bit
    np.testing.assert_array_equal(got, np.asarray(want, np.float32))
  assert type(back) is type(method)


# ------------------------------------------------------------------------------------ another family's prompt


def test_a_t5_prompt_on_a_causal_lm_and_the_reverse_are_refused(models, fixtures_dir, tmp_path):
  _, _, params, config = models['llama']
  t5 = get_config('t5x_tiny')
  t5_params = load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))
  prompt = np.ones((PLEN, 32), np.float32)  # both models embed in 32 dimensions: only the checks tell them apart
  peft_adapters.write_prompt(tmp_path / 't5', prompt)  # a SEQ_2_SEQ_LM adapter
  peft_adapters.write_prompt(tmp_path / 'llama', prompt, family=config.family)
  with pytest.raises(
      PromptError, match=r'is a SEQ_2_SEQ_LM adapter, made for an encoder-decoder \(T5\); this model '
      r'is a decoder-only causal LM, which reads CAUSAL_LM adapters') as raised:
    peft_adapters.read_adapter(tmp_path / 't5', config)
  assert str(tmp_path / 't5') in _one_line(raised)
  with pytest.raises(
      PromptError, match=r'is a CAUSAL_LM adapter, made for a decoder-only causal LM; this model is '
      r'an encoder-decoder \(T5\)') as raised:
    peft_adapters.read_adapter(tmp_path / 'llama', t5)
  _one_line(raised)
  # A plain prompt file says nothing of its model but its fingerprint: T5's is refused on the Llama, and the reverse.
  file = tmp_path / 'prompt.npy'
  np.save(file, prompt)
  fingerprint_files.write(fingerprint_files.sidecar_path(str(file)),
                          fingerprint.model_fingerprint(t5, None, t5_params['token_embedder']['embedding']))
  with pytest.raises(
      PromptError, match=r'was trained on model .*, not on this model .* \(differs in: .*embedding '
      r'table\); pass --allow_other_model') as raised:
    model_check.check_prompt_source(str(file), None, config, None, params)
  _one_line(raised)
  fingerprint_files.write(fingerprint_files.sidecar_path(str(file)),
                          fingerprint.model_fingerprint(config, None, params['token_embedder']['embedding']))
  assert model_check.check_prompt_source(str(file), None, config, None, params) is True
  with pytest.raises(PromptError, match=r'was trained on model .*, not on this model'):
    model_check.check_prompt_source(str(file), None, t5, None, t5_params)


# ------------------------------------------------------------------------------------ initialisation


def test_text_init_with_specials_is_peft_text_init_on_a_llama_tokenizer(tmp_path):
  """PEFT's TEXT init reads `tokenizer(text)` (BOS in front on Llama 3), cycled to the prompt length."""
  from peft.tuners.prompt_tuning.model import PromptEmbedding  # pylint: disable=g-import-not-at-top

  from jaxprompt.data.hf_vocab import HfVocabulary  # pylint: disable=g-import-not-at-top
  from jaxprompt.methods.initializers import from_text  # pylint: disable=g-import-not-at-top
  from tests.hf_tokenizers import llama3_folder  # pylint: disable=g-import-not-at-top
  folder = llama3_folder(tmp_path / 'tokenizer')
  vocab = HfVocabulary(str(folder))
  table = np.random.RandomState(0).normal(size=(vocab.vocab_size, 8)).astype(np.float32)
  text = 'review: great fun'
  config = peft.PromptTuningConfig(task_type='CAUSAL_LM', num_virtual_tokens=9, prompt_tuning_init='TEXT',
                                   prompt_tuning_init_text=text, tokenizer_name_or_path=str(folder), token_dim=8,
                                   num_transformer_submodules=1)
  theirs = PromptEmbedding(config, torch.nn.Embedding.from_pretrained(torch.tensor(table))).embedding.weight
  ours = from_text(text, vocabulary=vocab, specials=True)(jax.random.PRNGKey(0), (9, 8), table)
  np.testing.assert_array_equal(np.asarray(ours), theirs.detach().numpy())
  assert vocab.bos_id in vocab.encode_with_specials(text) and vocab.bos_id not in vocab.encode(text)

  class PiecesOnly:  # a vocabulary that cannot say which specials its tokenizer adds (seqio's SentencePiece)

    def encode(self, s):
      return vocab.encode(s)

  with pytest.raises(
      PromptError, match=r'specials=True needs a Hugging Face tokenizer vocabulary .*PiecesOnly has '
      r'none \(for T5, add_eos=True'):
    from_text(text, vocabulary=PiecesOnly(), specials=True)(jax.random.PRNGKey(0), (9, 8), table)
