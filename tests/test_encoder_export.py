"""An encoder run's exports for transformers and PEFT (docs/peft.md#encoders-with-a-task-head): tiny random BERT /
RoBERTa *For* models built with transformers, a random prompt, P-tuning (v1) prompt encoder or P-tuning v2 prefix
and head in a run's step dir.
`export --format peft` writes a SEQ_CLS / TOKEN_CLS adapter with the head in modules_to_save, which
`PeftModel.from_pretrained` loads over the original model (its own random head replaced) and over the
`hf_encoder_writer` folder (which `AutoModelFor*` loads with no missing or unexpected key), both giving jaxprompt's
head scores; the adapter read back as a --prompt_file is the same method and head. Heads PEFT or transformers has
no class for are one line each."""
import json

import jax
import numpy as np
import pytest

from jaxprompt.checkpoints import hf_encoder_writer
from jaxprompt.checkpoints.hf_encoder import load_hf_encoder
from jaxprompt.cli.main import main as cli_main
from jaxprompt.commands import export, prompt_files
from jaxprompt.errors import CheckpointError, PromptError
from jaxprompt.formats import fingerprint_files
from jaxprompt.methods import peft_adapters, peft_layouts, with_head
from jaxprompt.methods.p_tuning import p_tuning
from jaxprompt.methods.prefix_tuning import p_tuning_v2
from jaxprompt.methods.prompt_tuning import PromptTuning, prompt_tuning
from jaxprompt.methods.with_head import WithHead
from jaxprompt.models import families, fingerprint
from jaxprompt.models.heads import HeadConfig
from tests.causal_helpers import randomize
from tests.encoder_helpers import randomized, write_files

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')
_SHAPE = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
_ROBERTA = dict(pad_token_id=1, max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5)
P = 3  # prompt / prefix rows
# name -> (transformers class, its config fields, jaxprompt head, method)
CASES = {
    'bert_classification_prompt': ('BertForSequenceClassification', dict(num_labels=3),
                                   HeadConfig('classification', 3, use_pooler=True), 'prompt'),
    'roberta_classification_prefix': ('RobertaForSequenceClassification', dict(num_labels=2, **_ROBERTA),
                                      HeadConfig('classification', 2), 'prefix'),
    'bert_regression_prefix': ('BertForSequenceClassification', dict(num_labels=1),
                               HeadConfig('regression', use_pooler=True), 'prefix'),
    'roberta_tagging_prompt': ('RobertaForTokenClassification', dict(num_labels=4,
                                                                     **_ROBERTA), HeadConfig('tagging', 4), 'prompt'),
    'bert_classification_p_tuning': ('BertForSequenceClassification', dict(num_labels=2),
                                     HeadConfig('classification', 2, use_pooler=True), 'p_tuning'),
    # the default head on [CLS]: its first layer goes to transformers as BERT's pooler (modules_to_save)
    'bert_classification_cls_prompt': ('BertForSequenceClassification', dict(num_labels=3),
                                       HeadConfig('classification', 3), 'prompt'),
}
PEFT_TYPES = {'prompt': 'PROMPT_TUNING', 'prefix': 'PREFIX_TUNING', 'p_tuning': 'P_TUNING'}


def _run(tmp_path, name):
  """(the base folder, jaxprompt config and frozen params, method, trainable, a run's numpy step dir holding them)."""
  cls, fields, head, inner = CASES[name]
  config_cls = transformers.RobertaConfig if cls.startswith('Roberta') else transformers.BertConfig
  layers = 2 if inner == 'prefix' else 1  # a prefix's layer slots need two layers; a prompt enters below layer 0
  hf_config = config_cls(**{**_SHAPE, 'num_hidden_layers': layers}, **fields)
  hf_config._attn_implementation = 'eager'  # pylint: disable=protected-access
  base = tmp_path / 'base'
  randomize(getattr(transformers, cls)(hf_config).eval(), 3).save_pretrained(base, safe_serialization=True)
  frozen, config = load_hf_encoder(base)
  method = {
      'prefix': lambda: p_tuning_v2(config, length=P, projection=False),
      'prompt': lambda: prompt_tuning(config, length=P), 'p_tuning': lambda: p_tuning(config, length=P, encoder='mlp')
  }[inner]()
  method = WithHead.for_config(config, method, head)
  trainable = randomized(jax.eval_shape(method.init, jax.random.PRNGKey(0), frozen), 5)
  run = tmp_path / 'run'
  step = run / 'numpy_checkpoints' / 'checkpoint_3'
  step.mkdir(parents=True)
  write_files(step, method.numpy_copy(trainable))
  recorded = fingerprint.model_fingerprint(config, None, frozen['token_embedder']['embedding'])  # BERT or RoBERTa
  (step / fingerprint_files.STEP_FILE).write_text(fingerprint_files.to_json(recorded))
  if inner == 'p_tuning':  # its step dir holds the computed prompt.npy; the run's config.gin says P-tuning made it
    (run / 'config.gin').write_text('METHOD = @jaxprompt.methods.p_tuning\n')
  return base, config, frozen, method, trainable, step


def _batch(roberta: bool):
  rs = np.random.RandomState(0)
  valid = np.arange(6)[None] < np.array([6, 4, 2])[:, None]
  tokens = np.where(valid, rs.randint(3, 96, valid.shape), 1 if roberta else 0).astype(np.int32)
  types = None if roberta else ((np.arange(6)[None] >= 3) * valid).astype(np.int32)
  return tokens, valid, types


def _peft_logits(model, tokens, valid, types):
  """What `PeftModelFor*.forward` computes. A PREFIX_TUNING adapter: its `_prefix_tuning_forward` spelled out,
  because peft 0.21 looks for a `past_key_values` argument that transformers 5's BertModel / RobertaModel call
  `cache` (docs/peft.md); the rest is PEFT's: its past keys (`get_prompt`), P ones in front of the mask, the
  backbone's second output (BERT's pooler) or first, and the head."""
  kwargs = dict(input_ids=torch.tensor(tokens, dtype=torch.int64), attention_mask=torch.tensor(valid.astype(np.int64)))
  if types is not None:
    kwargs['token_type_ids'] = torch.tensor(types, dtype=torch.int64)
  with torch.no_grad():
    if model.active_peft_config.peft_type != 'PREFIX_TUNING':
      return model(**kwargs).logits.numpy()
    kwargs['attention_mask'] = torch.cat([torch.ones(len(tokens), P, dtype=torch.int64), kwargs['attention_mask']], 1)
    base = model.base_model
    outputs = base.get_submodule(model.transformer_backbone_name)(**kwargs, cache=model.get_prompt(len(tokens)))
    sequence = model.active_peft_config.task_type == 'SEQ_CLS'
    hidden = outputs[1] if sequence and outputs.pooler_output is not None else outputs[0]
    return base.get_submodule(model.cls_layer_name)(hidden).numpy()


@pytest.mark.parametrize('name', list(CASES))
def test_the_peft_adapter_over_transformers_gives_jaxprompts_head_scores(tmp_path, name, clean_gin):
  base, config, frozen, method, trainable, run = _run(tmp_path, name)
  cls, _, head, inner = CASES[name]
  tokens, valid, types = _batch(cls.startswith('Roberta'))
  batch = dict(encoder_input_tokens=tokens, encoder_input_mask=valid)
  if types is not None:
    batch['encoder_token_types'] = types
  predict = jax.jit(lambda m, t: families.build_model(config, m).predict_labels(frozen, t, batch), static_argnums=0)
  _, want = predict(*method.inference(trainable))
  adapter, folder = tmp_path / 'adapter', tmp_path / 'hf'
  assert cli_main(['export', '--checkpoint', str(run), '--format', 'peft', '--output', str(adapter)]) == 0
  assert json.loads((adapter / 'adapter_config.json').read_text())['peft_type'] == PEFT_TYPES[inner]
  assert cli_main([
      'export', '--gin_file=models/hf_encoder.gin', f"--gin.HF_MODEL_DIR='{base}'", '--checkpoint',
      str(run), '--format', 'hf_model', '--output',
      str(folder)
  ]) == 0
  auto = 'AutoModelForTokenClassification' if head.kind == 'tagging' else 'AutoModelForSequenceClassification'
  exported, info = getattr(transformers, auto).from_pretrained(folder, output_loading_info=True)
  assert type(exported).__name__ == cls and not any(info.values()), info  # no missing / unexpected key
  assert exported.config.num_labels == head.outputs
  if head.kind == 'regression':
    assert exported.config.problem_type == 'regression' and exported.config.num_labels == 1
  original = getattr(transformers, auto).from_pretrained(base)
  for model in (original, exported):  # over the original, modules_to_save replaces its own random head
    got = _peft_logits(peft.PeftModel.from_pretrained(model.eval(), adapter).eval(), tokens, valid, types)
    got, ours = (got[..., 0] if head.kind == 'regression' else got), np.asarray(want)
    if head.kind == 'tagging':  # the tokens' tags: PEFT scores the prompt rows too, and (RoBERTa given
      got, ours = got[:, -valid.shape[1]:][valid], ours[valid]  # inputs_embeds) numbers padding on
    assert np.abs(got).max() > 0.3
    np.testing.assert_allclose(got, ours, rtol=0, atol=1e-4)
  read, params = prompt_files.load_tuned(prompt_file=str(adapter), checkpoint=None, step=None, prompt_length=None,
                                         config=config)
  # P-tuning's adapter holds its computed prompt: read back as that prompt (its MLP is not in PEFT's inference file)
  assert read.head == head and type(read.inner) is (PromptTuning if inner == 'p_tuning' else type(method.inner))
  np.testing.assert_allclose(predict(read, params)[1], want, rtol=0, atol=1e-5)


def test_heads_without_a_peft_task_or_a_transformers_class_are_one_line(tmp_path):
  base, config, frozen, method, trainable, run = _run(tmp_path, 'bert_classification_prompt')
  del base, method, trainable
  for head, culprit in ((HeadConfig('multiple_choice', use_pooler=True), 'PEFT has no multiple-choice task type'),):
    wrapped = WithHead.for_config(config, prompt_tuning(config, length=P), head)
    other = tmp_path / head.kind / 'numpy_checkpoints' / 'checkpoint_3'
    other.mkdir(parents=True)
    write_files(other, wrapped.numpy_copy(randomized(jax.eval_shape(wrapped.init, jax.random.PRNGKey(0), frozen), 1)))
    (other / fingerprint_files.STEP_FILE).write_text((run / fingerprint_files.STEP_FILE).read_text())  # a BERT's
    with pytest.raises(PromptError, match=culprit) as raised:
      export.export(str(tmp_path / 'adapter'), checkpoint=str(other), format='peft')
    assert '\n' not in str(raised.value) and not (tmp_path / 'adapter').exists()
  arrays = WithHead.for_config(config, None, HeadConfig('tagging', 2)).numpy_copy({
      'head': {'classifier': {'kernel': np.ones((32, 2)), 'bias': np.zeros(2)}}
  })[with_head.HEAD_FILE]
  assert with_head.parse_head(arrays, 'h.npz')[0] == HeadConfig('tagging', 2)
  with pytest.raises(PromptError, match='h.npz: this head was trained with the whole encoder'):  # model tuning's
    with_head.parse_head({**arrays, with_head.TUNED_ENCODER: np.zeros((0,), np.int8)}, 'h.npz')
  with pytest.raises(CheckpointError, match='a multiple-choice head on the first token'):
    hf_encoder_writer.transformers_class(HeadConfig('multiple_choice'), roberta=True)
  with pytest.raises(CheckpointError, match='has no RoBERTa class'):
    hf_encoder_writer.save_hf_encoder_with_head(frozen, config.replace(position_offset=2),
                                                HeadConfig('classification', 3, use_pooler=True), {}, tmp_path / 'hf')
  assert not (tmp_path / 'hf').exists()
  head = {'base_model.classifier.weight': np.ones((3, 32)), 'base_model.classifier.bias': np.zeros(3)}
  pooler = {'base_model.bert.pooler.dense.weight': np.ones((32, 32)), 'base_model.bert.pooler.dense.bias': np.zeros(32)}
  for extra, culprit in (({'base_model.roberta.pooler.dense.bias': np.zeros(32)}, 'saves .*roberta.pooler.* beside '
                          'the classifier'), ({'base_model.bert.pooler.dense.bias': np.zeros(32)},
                                              "BERT's pooler and classifier are .*; it saves"), ({}, None), (pooler,
                                                                                                             None)):
    adapter = str(tmp_path / f'peft{len(extra)}')
    peft_adapters.write_prompt(adapter, np.ones((P, 32)), task=peft_layouts.SEQ_CLS, modules={**head, **extra})
    if culprit is None:  # a PEFT-trained BERT adapter: a one-layer sequence head reads the pooler; with the pooler
      read = prompt_files.load_tuned(prompt_file=adapter, checkpoint=None, step=None, prompt_length=None,
                                     config=config)[0].head  # trained beside it, the two layers read [CLS]
      assert read == HeadConfig('classification', 3, use_pooler=not extra)
      continue
    with pytest.raises(PromptError, match=culprit):
      prompt_files.load_tuned(prompt_file=adapter, checkpoint=None, step=None, prompt_length=None, config=config)
  saved = json.loads((tmp_path / 'peft2' / 'adapter_config.json').read_text())['modules_to_save']
  assert saved == ['classifier', 'pooler']  # what PEFT wraps: each module whose name ends with an entry


def test_config_json_names_the_tasks_labels():
  config = families.named_config('bert_test_tiny')
  tags = hf_encoder_writer.config_json(config, HeadConfig('tagging', 3), 'BertForTokenClassification', ['O', 'B', 'I'])
  assert tags['id2label'] == {'0': 'O', '1': 'B', '2': 'I'} and tags['label2id'] == {'O': 0, 'B': 1, 'I': 2}
  assert tags['architectures'] == ['BertForTokenClassification'] and 'problem_type' not in tags
  pooled = HeadConfig('classification', 2, use_pooler=True)
  classes = hf_encoder_writer.config_json(config, pooled, 'BertForSequenceClassification', None)
  assert classes['problem_type'] == 'single_label_classification' and classes['id2label'] == {
      '0': 'LABEL_0', '1': 'LABEL_1'
  }
