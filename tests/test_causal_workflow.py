"""`jaxprompt train / eval / infer` on a causal LM exactly as on T5: a tiny random Llama-style model and its tokenizer
saved as a Hugging Face folder (tests/causal_tiny.py), read through `models/hf_causal.gin`, a `--task` TSV, in-process
CLI runs. What the commands rank and decode is checked against the model scored and decoded directly; a checkpoint
of the other family is one line, exit 2; GLUE reads with the model's tokenizer."""
import functools
import json
import re
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import seqio

from jaxprompt.checkpoints.hf_causal import load_hf_causal
from jaxprompt.cli.main import main as cli_main
from jaxprompt.commands import configs, groups
from jaxprompt.data import causal, custom, instructions
from jaxprompt.data import pipeline as data
from jaxprompt.data.hf_vocab import HfVocabulary
from jaxprompt.errors import ConfigError
from jaxprompt.methods.prompt_tuning import prompt_tuning
from jaxprompt.models import families
from jaxprompt.models.decoder_config import DecoderConfig
from tests.test_cli import main_error
from tests.test_data_tfds_offline import SST2, data_dir  # noqa: F401  (the locally built TFDS data, a fixture)
from tests.tiny_task import LABELS

TASK = 'jp_causal_tiny'
LENGTHS = {'inputs': 16, 'targets': 8}
PROMPT, STEPS = 3, 4
TEXTS = ('good movie', 'awful plot story')


def model_flags(folder) -> list[str]:
  return ['--gin_file=models/hf_causal.gin', f"--gin.HF_MODEL_DIR='{folder}'"]


def train_argv(folder, model_dir, spec: str, task: str, steps: int = STEPS) -> list[str]:
  return [
      'train', *model_flags(folder), '--gin_file=runs/prompt_tuning.gin', '--task', spec,
      f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}',
      '--gin.BATCH_SIZE=4', f'--gin.TRAIN_STEPS={steps}', f'--gin.PROMPT_LENGTH={PROMPT}', f'--gin.EVAL_PERIOD={steps}',
      f'--gin.CHECKPOINT_PERIOD={steps}'
  ]


@pytest.fixture(scope='module')
def run(tiny_causal, tiny_files, tmp_path_factory):
  """A prompt trained for STEPS steps on the tiny TSV task (evaluated at the end); its MODEL_DIR."""
  model_dir = tmp_path_factory.mktemp('causal') / 'run'
  spec = f"name={TASK},train={tiny_files['train']},validation={tiny_files['validation']},labels={'|'.join(LABELS)}"
  try:
    assert cli_main(train_argv(tiny_causal, model_dir, spec, TASK)) == 0
  finally:
    gin.clear_config()
  yield model_dir
  custom.unregister_file_task(TASK)


@functools.cache
def _frozen(folder: str):
  return load_hf_causal(folder)


@functools.cache
def _model(folder: str, length: int):
  params, config = _frozen(folder)
  model = families.build_model(config, prompt_tuning(config, config.eos_id, length=length), eos_id=config.eos_id)
  return model, jax.jit(model.score_batch), jax.jit(model.logits)


def direct_scores(folder, prompt: np.ndarray, texts, labels) -> np.ndarray:
  """log p(label + EOS | [BOS] text) [texts, labels] under `prompt`, scoring each whole stream with the model."""
  vocab = HfVocabulary(str(folder))
  model, score, _ = _model(str(folder), len(prompt))
  inputs = [vocab.encode(t) for t in texts for _ in labels]
  targets = [vocab.encode(label) + [vocab.eos_id] for _ in texts for label in labels]
  features = data.to_features(inputs, targets, LENGTHS, 'decoder_only', causal.StreamTokens(vocab.bos_id))
  scores = score(_frozen(str(folder))[0], {'prompt': prompt}, {k: jnp.asarray(v) for k, v in features.items()})
  return np.asarray(scores).reshape(len(texts), len(labels))


def greedy_text(folder, prompt: np.ndarray, text: str) -> str:
  """The greedy continuation of [BOS] text under `prompt`, one whole-stream forward pass per token, read to EOS."""
  vocab = HfVocabulary(str(folder))
  model, _, logits_fn = _model(str(folder), len(prompt))
  stream = [vocab.bos_id] + vocab.encode(text)
  width = 1 + LENGTHS['inputs'] + LENGTHS['targets']
  for _ in range(LENGTHS['targets']):
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :len(stream)] = stream
    batch = {'decoder_input_tokens': tokens, 'decoder_input_mask': (np.arange(width) < len(stream))[None]}
    logits = logits_fn(_frozen(str(folder))[0], {'prompt': prompt}, batch)
    stream.append(int(np.argmax(logits[0, len(stream) - 1])))
  return vocab.decode(stream[2 + len(vocab.encode(text)) - 1:])


def test_model_config_finds_a_name_in_every_family_and_reads_hf_folders(tiny_causal):
  assert configs.model_config('llama3_1_8b', dtype='bfloat16').dtype == jnp.bfloat16
  assert type(configs.model_config('t5_1_1_small')).family == 'encoder_decoder'
  with pytest.raises(ConfigError) as e:
    configs.model_config('llama3_2_1')
  assert "did you mean llama3_2_1b" in str(e.value) and 't5_1_1_base' in str(e.value), e.value
  config = configs.hf_model_config(str(tiny_causal), scan_layers=True, param_dtype='bfloat16')
  assert isinstance(config, DecoderConfig) and config.num_kv_heads == 2 and config.rope_scaling is not None
  assert config.scan_layers and config.param_dtype == jnp.bfloat16
  with pytest.raises(ConfigError, match='HF_MODEL_DIR is not set'):
    configs.hf_model_config(None)
  source = groups.ModelSource(config, str(tiny_causal), vocabulary=str(tiny_causal))
  assert source.family == 'decoder_only' and source.vocabulary == HfVocabulary(str(tiny_causal))
  with pytest.raises(ConfigError, match='VOCABULARY must be a vocabulary such as'):
    groups.ModelSource(config, str(tiny_causal), vocabulary=3)


def test_train_writes_the_prompt_and_scores_the_task_by_rank_classification(run, tiny_causal):
  prompt = np.load(run / 'final_prompt.npy')
  assert prompt.shape == (PROMPT, 32) and np.isfinite(prompt).all()
  metrics = json.loads((run / 'eval_metrics.json').read_text())
  assert {'loss', 'token_accuracy', 'accuracy'} <= set(metrics[str(STEPS)] if str(STEPS) in metrics else metrics)
  assert json.loads((run / 'final_prompt.npy.fingerprint.json').read_text())['embedding']['shape'] == [96, 32]
  # gin writes a long value on the line after `NAME = \\`
  assert re.search(rf"HF_MODEL_DIR = (\\\s*)?'{re.escape(str(tiny_causal))}'", (run / 'config.gin').read_text())


def test_eval_and_infer_rank_labels_as_the_model_scores_them(run, tiny_causal, tmp_path, capsys):
  predictions, output = tmp_path / 'predictions.jsonl', tmp_path / 'eval.json'
  try:
    assert cli_main(['eval', f'--checkpoint={run}', f'--output={output}', f'--predictions_file={predictions}']) == 0
    texts = tmp_path / 'texts.txt'
    texts.write_text(''.join(f'{t}\n' for t in TEXTS))
    infer = tmp_path / 'infer.jsonl'
    assert cli_main([
        'infer', f'--checkpoint={run}', f'--input_file={texts}', f'--output={infer}', '--labels',
        f"{TASK}={'|'.join(LABELS)}"
    ]) == 0
  finally:
    gin.clear_config()
  prompt = np.load(run / 'final_prompt.npy')
  records = [json.loads(line) for line in predictions.read_text().splitlines()]
  scores = direct_scores(tiny_causal, prompt, [r['input'] for r in records], LABELS)
  assert [r['prediction'] for r in records] == [LABELS[i] for i in scores.argmax(1)]
  np.testing.assert_allclose([r['log_likelihood'] for r in records], scores.max(1), atol=1e-4)
  accuracy = 100 * np.mean([r['prediction'] == r['target'] for r in records])
  assert json.loads(output.read_text())['metrics']['accuracy'] == pytest.approx(accuracy)
  ranked = [json.loads(line) for line in infer.read_text().splitlines()]
  scores = direct_scores(tiny_causal, prompt, TEXTS, LABELS)
  assert [r['input'] for r in ranked] == list(TEXTS) and {r['prediction_by'] for r in ranked} == {'rank_classification'}
  np.testing.assert_allclose([r['log_likelihood'] for r in ranked], scores.max(1), atol=1e-4)


def test_infer_decodes_text_inputs_as_the_model_continues_them(run, tiny_causal, tmp_path):
  texts, output = tmp_path / 'texts.txt', tmp_path / 'decoded.jsonl'
  texts.write_text(''.join(f'{t}\n' for t in TEXTS))
  try:
    assert cli_main([
        'infer', *model_flags(tiny_causal), '--gin_file=runs/prompt_infer.gin', f'--prompt_file={run}/final_prompt.npy',
        f'--input_file={texts}', f'--output={output}', f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}',
        "--gin.jaxprompt.decoding.method='sample'"
    ]) == 0  # temperature 0: greedy
  finally:
    gin.clear_config()
  prompt = np.load(run / 'final_prompt.npy')
  decoded = [json.loads(line) for line in output.read_text().splitlines()]
  assert [r['prediction'] for r in decoded] == [greedy_text(tiny_causal, prompt, t) for t in TEXTS]
  assert {r['prediction_by'] for r in decoded} == {'sampling'}


def test_a_checkpoint_of_the_other_family_is_one_line(run, tiny_causal, tiny_files, fixtures_dir, tmp_path, capsys):
  texts = tmp_path / 'texts.txt'
  texts.write_text('good movie\n')
  t5x = fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'
  common = [f'--prompt_file={run}/final_prompt.npy', f'--input_file={texts}', f'--output={tmp_path}/out.jsonl']
  try:
    infer = ['infer', *model_flags(tiny_causal), '--gin_file=runs/prompt_infer.gin']
    code, line = main_error(capsys, [*infer, f"--gin.INITIAL_CHECKPOINT_PATH='{t5x}'", *common])
    assert code == 2 and 'is a T5X checkpoint but MODEL_CONFIG is a decoder-only config' in line, line
    code, line = main_error(capsys, [
        'infer', '--gin_file=models/t5x_tiny.gin', '--gin_file=runs/prompt_infer.gin',
        f"--gin.INITIAL_CHECKPOINT_PATH='{tiny_causal}'", f"--gin.VOCABULARY_PATH='{tiny_files['vocab']}'", *common
    ])
    assert code == 2 and 'is a Hugging Face causal LM (LlamaForCausalLM) but MODEL_CONFIG is a T5 config' in line, line
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_a_run_resumes_where_it_stopped(run, tiny_causal, tiny_files, tmp_path, capsys):
  model_dir = tmp_path / 'resumed'
  shutil.copytree(run, model_dir)
  spec = f"name={TASK},train={tiny_files['train']},validation={tiny_files['validation']},labels={'|'.join(LABELS)}"
  try:
    assert cli_main([*train_argv(tiny_causal, model_dir, spec, TASK, steps=STEPS + 2), '--gin.EVAL_SPLIT=None']) == 0
  finally:
    gin.clear_config()
  assert f'resuming from {model_dir} at step {STEPS}' in capsys.readouterr().err
  assert sorted(int(p.name) for p in (model_dir / 'checkpoints').iterdir() if p.name.isdigit()) == [STEPS, STEPS + 2]
  assert not np.array_equal(np.load(model_dir / 'final_prompt.npy'), np.load(run / 'final_prompt.npy'))


@pytest.mark.slow
def test_instruction_jsonl_trains_and_evaluates_by_decoding(tiny_causal, tmp_path):
  rows = [{'instruction': 'name the word', 'input': w, 'output': w} for w in ('good', 'awful', 'movie', 'plot')]
  for split in ('train', 'validation'):
    (tmp_path / f'{split}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  name = 'jp_causal_sft'
  spec = f"name={name},train={tmp_path / 'train.jsonl'},validation={tmp_path / 'validation.jsonl'},format=alpaca"
  try:
    assert cli_main([
        *train_argv(tiny_causal, tmp_path / 'run', spec, name, steps=2), '--gin_file=prompts/sampled_vocab.gin'
    ]) == 0  # no class labels to start from
  finally:
    gin.clear_config()
    custom.unregister_file_task(name)
  metrics = json.loads((tmp_path / 'run' / 'eval_metrics.json').read_text())
  metrics = metrics.get('2', metrics)
  assert metrics['num_examples'] == 4 and 'accuracy' in metrics  # the decodes scored against `output`
  assert instructions.prompt('name the word', 'good').startswith('### Instruction:')


def test_glue_reads_with_the_causal_models_tokenizer(data_dir, tiny_causal):  # noqa: F811
  del data_dir
  vocab = HfVocabulary(str(tiny_causal))
  task = data.get_provider('glue_sst2_v200', vocab, 'decoder_only')
  assert task.name == 'glue_sst2_v200' and task is not seqio.get_mixture_or_task('glue_sst2_v200')
  assert data.get_provider('glue_sst2_v200', vocab, 'decoder_only') is task  # one copy per vocabulary
  assert data.targets_vocabulary(task) == vocab and not task.output_features['inputs'].add_eos
  examples, _ = data.read_examples(task, LENGTHS, 'validation')
  assert len(examples) == len(SST2['dev'])
  for ex in examples:
    assert ex['inputs'].tolist() == vocab.encode(ex['inputs_pretokenized'].decode())[:LENGTHS['inputs']]  # no EOS
    assert ex['targets'].tolist() == vocab.encode(ex['targets_pretokenized'].decode()) + [vocab.eos_id]
  mixture = data.get_provider('glue_v200', vocab, 'decoder_only')
  assert all(data.targets_vocabulary(t) == vocab for t in mixture.tasks)
  assert [mixture.get_rate(t) for t in mixture.tasks] == [
      seqio.get_mixture_or_task('glue_v200').get_rate(t) for t in seqio.get_mixture_or_task('glue_v200').tasks
  ]
  assert data.get_provider('glue_sst2_v200') is seqio.get_mixture_or_task('glue_sst2_v200')  # T5: its own


def test_export_writes_a_causal_lm_peft_adapter_from_the_runs_fingerprint(run, tmp_path, capsys):
  """`jaxprompt export --format peft` on a causal run: the fingerprint records the family, so the adapter is a
  CAUSAL_LM one whose prompt reads back as the run's."""
  out = tmp_path / 'adapter'
  assert cli_main(['export', f'--checkpoint={run}', '--format=peft', f'--output={out}']) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['peft_type'] == 'PROMPT_TUNING'
  adapter = json.loads((out / 'adapter_config.json').read_text())
  assert adapter['task_type'] == 'CAUSAL_LM' and adapter['num_transformer_submodules'] == 1
  rows = safetensors.numpy.load_file(str(out / 'adapter_model.safetensors'))['prompt_embeddings']
  np.testing.assert_allclose(rows, np.load(run / 'final_prompt.npy'), rtol=0, atol=0)
