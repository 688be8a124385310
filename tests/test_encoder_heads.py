"""The encoder-only family's task heads against transformers' *For* models running the same tiny random weights: a
P-tuning v2 prefix + BERT's pooled classification head equals BertForSequenceClassification given the prefix as
past_key_values; an input prompt + RoBERTa's two-layer head equals RobertaForSequenceClassification given
inputs_embeds (both read row 0). The head file is written by the checkpointer beside the method's and read back
joined to it; bad head configs fail in one line."""
import jax
import numpy as np
import pytest

from jaxprompt.checkpoints.hf_encoder import load_hf_encoder
from jaxprompt.checkpoints.hf_head import head_from_hf, head_to_hf
from jaxprompt.commands import prompt_files
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import registry
from jaxprompt.methods.prefix_tuning import PrefixTuning, p_tuning_v2
from jaxprompt.methods.prompt_tuning import prompt_tuning
from jaxprompt.methods.with_head import HEAD_FILE, WithHead
from jaxprompt.models import families
from jaxprompt.models.heads import HeadConfig
from jaxprompt.runtime.optim import make_optimizer
from jaxprompt.runtime.state import init_train_state
from tests.causal_helpers import randomize
from tests.encoder_helpers import tiny
from tests.helpers import assert_trees_equal
from tests.method_helpers import save_run

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
_SHAPE = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _hf(name: str, folder, **fields):
  """A random transformers `name` model (eval mode, eager attention) saved as safetensors in `folder`."""
  config_cls = transformers.BertConfig if name.startswith('Bert') else transformers.RobertaConfig
  config = config_cls(**_SHAPE, **fields)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  model = randomize(getattr(transformers, name)(config).eval(), 3)
  model.save_pretrained(folder, safe_serialization=True)
  return model


def _batch(rows=3, length=6, vocab=96, pad=0):
  rs = np.random.RandomState(0)
  valid = np.arange(length)[None] < np.array([length, 4, 2][:rows])[:, None]
  return np.where(valid, rs.randint(3, vocab, valid.shape), pad).astype(np.int32), valid


def _logits(hf_model, **kwargs):
  kwargs = {k: torch.tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
  with torch.no_grad():
    return hf_model(**kwargs).logits.numpy()


def test_p_tuning_v2_prefix_and_pooled_head_equal_bert_for_sequence_classification(tmp_path):
  from transformers import DynamicCache  # pylint: disable=g-import-not-at-top
  hf = _hf('BertForSequenceClassification', tmp_path, num_labels=3, max_position_embeddings=64)
  params, config = load_hf_encoder(tmp_path)
  tokens, valid = _batch()
  types = (np.arange(6)[None] >= 3) * valid
  rows = np.random.RandomState(1).normal(size=(2, 2, 4, 4, 8)).astype(np.float32)  # [k|v, layers, P, heads, d]
  prefix = PrefixTuning.for_config(config, length=4, kinds=('encoder_self',), projection=False)
  method = WithHead.for_config(config, prefix, HeadConfig('classification', 3, use_pooler=True))
  head = head_from_hf({k: v.numpy() for k, v in hf.state_dict().items()}, 'BertForSequenceClassification')
  trainable = {'encoder_self': {'key': rows[0], 'value': rows[1]}, 'head': head}
  labels, scores = jax.jit(families.build_model(config, method).predict_labels)(
      params, trainable, dict(encoder_input_tokens=tokens, encoder_input_mask=valid, encoder_token_types=types))
  past = DynamicCache(
      ddp_cache_data=[(torch.tensor(rows[0, i][None].transpose(0, 2, 1, 3)).expand(3, -1, -1, -1),
                       torch.tensor(rows[1, i][None].transpose(0, 2, 1, 3)).expand(3, -1, -1, -1))
                      for i in range(2)], config=hf.config)
  want = _logits(hf, input_ids=tokens.astype(np.int64), token_type_ids=types.astype(np.int64),
                 attention_mask=np.concatenate([np.ones((3, 4)), valid], 1).astype(np.int64), cache=past)
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(scores, want, rtol=0, atol=1e-4)
  np.testing.assert_array_equal(labels, want.argmax(-1))
  for name, tensor in head_to_hf(head).items():  # and back to transformers' names and layout
    np.testing.assert_array_equal(tensor, hf.state_dict()[name].numpy())


def test_input_prompt_and_two_layer_head_equal_roberta_for_sequence_classification(tmp_path):
  """RoBERTa's dense + tanh + out_proj head on row 0, the prompt's first row (transformers given inputs_embeds,
  PEFT's prompt tuning); its file has no pooler, so a pooled head is refused."""
  hf = _hf('RobertaForSequenceClassification', tmp_path, num_labels=2, max_position_embeddings=66, type_vocab_size=1,
           pad_token_id=1, layer_norm_eps=1e-5)
  params, config = load_hf_encoder(tmp_path)
  assert not config.pooler
  with pytest.raises(ConfigError, match='reads the pooler output but EncoderConfig has no pooler') as raised:
    WithHead.for_config(config, None, HeadConfig('classification', 2, use_pooler=True))
  assert '\n' not in str(raised.value)
  tokens, valid = _batch(pad=1)
  prompt = np.random.RandomState(2).normal(size=(3, 32)).astype(np.float32)
  method = WithHead.for_config(config, prompt_tuning(config, length=3), HeadConfig('classification', 2))
  head = head_from_hf({k: v.numpy() for k, v in hf.state_dict().items()})
  assert set(head['classifier']) == {'dense', 'out_proj'}
  _, scores = jax.jit(families.build_model(config, method).predict_labels)(params, {'prompt': prompt, 'head': head},
                                                                           dict(encoder_input_tokens=tokens,
                                                                                encoder_input_mask=valid))
  with torch.no_grad():
    embedded = hf.get_input_embeddings()(torch.tensor(tokens, dtype=torch.int64)).numpy()
  embeds = np.concatenate([np.broadcast_to(prompt, (3, 3, 32)), embedded], axis=1)
  want = _logits(hf, inputs_embeds=embeds, attention_mask=np.pad(valid, ((0, 0), (3, 0)),
                                                                 constant_values=1).astype(np.int64))
  np.testing.assert_allclose(scores, want, rtol=0, atol=1e-4)


def test_the_head_file_is_written_beside_the_method_file_and_read_back_joined(tmp_path):
  config, frozen = tiny()
  method = WithHead.for_config(config, p_tuning_v2(config, length=2, projection=True, hidden=8),
                               HeadConfig('tagging', 5))
  trainable = jax.jit(method.init)(jax.random.PRNGKey(1), frozen)
  state = init_train_state(trainable, make_optimizer().tx, jax.random.PRNGKey(2))
  save_run(tmp_path, method, state)
  main = prompt_files.step_file(str(tmp_path))
  assert main.endswith('prefix.npz') and (tmp_path / 'numpy_checkpoints' / 'checkpoint_3' / HEAD_FILE).is_file()
  context = registry.ReadContext(config)
  inner, params = registry.from_arrays(registry.read_arrays(main), context)
  read, read_params = registry.join_file(inner, params, tmp_path / 'numpy_checkpoints' / 'checkpoint_3' / HEAD_FILE,
                                         context)
  plain, plain_params = method.inference(trainable)
  assert read.head == HeadConfig('tagging', 5) and not read.inner.projection and read.inner.length == 2
  assert_trees_equal(jax.tree.map(np.asarray, read_params), jax.tree.map(np.asarray, plain_params))
  np.testing.assert_array_equal(read_params['head']['classifier']['kernel'],
                                plain_params['head']['classifier']['kernel'])
  alone, alone_params = registry.from_arrays(
      registry.read_arrays(tmp_path / 'numpy_checkpoints' / 'checkpoint_3' / HEAD_FILE), context)
  assert alone.inner is None and set(alone_params) == {'head'}  # the head alone: a probe on the frozen encoder
  with pytest.raises(PromptError, match='a tagging head for a model of width 16 holds'):
    registry.from_arrays(registry.read_arrays(tmp_path / 'numpy_checkpoints' / 'checkpoint_3' / HEAD_FILE),
                         registry.ReadContext(config.replace(emb_dim=16)))


@pytest.mark.parametrize('fields,culprit', [
    (dict(num_labels=0), 'HeadConfig.num_labels must be an integer >= 1 for a classification head, got 0'),
    (dict(), 'a classification head needs its number of labels'),
    (dict(kind='regression', num_labels=3), 'a regression head outputs one value per example'),
    (dict(kind='tagging', num_labels=3, use_pooler=True), 'a tagging head reads every token'),
    (dict(kind='ranking', num_labels=3), "HeadConfig.kind 'ranking' is not one of"),
    (dict(num_labels=2, dropout=1.0), r'HeadConfig.dropout must be in \[0, 1\)'),
])
def test_a_bad_head_config_is_one_clear_error(fields, culprit):
  with pytest.raises(ConfigError, match=culprit) as raised:
    HeadConfig(**fields)
  assert '\n' not in str(raised.value)


def test_a_model_without_a_head_or_asked_for_text_says_how_the_family_predicts():
  config = families.named_config('bert_test_tiny')
  model = families.build_model(config, prompt_tuning(config, length=2))
  batch = dict(encoder_input_tokens=np.ones((1, 4), np.int32), encoder_input_mask=np.ones((1, 4), np.int32))
  with pytest.raises(ConfigError, match='trains a task head beside the method: wrap it with'):
    model.loss_fn({}, {}, batch)
  headed = families.build_model(config, WithHead.for_config(config, None, HeadConfig('regression')))
  for call in (lambda: headed.rank_classify({}, {}, batch, np.ones(
      (2, 3), np.int32)), lambda: headed.predict_batch({}, {}, batch)):
    with pytest.raises(ConfigError, match='predicts labels with its task head'):
      call()
  with pytest.raises(ConfigError, match='already trains a task head'):
    WithHead.for_config(config, headed.method, HeadConfig('regression'))
  with pytest.raises(ConfigError, match="in front of the tokens \\(combine='prefix'.*not combine='suffix_after_eos'"):
    families.build_model(config, prompt_tuning(config, length=2, combine='suffix_after_eos'))
