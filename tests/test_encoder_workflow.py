"""`jaxprompt train / eval / infer` on an encoder-only model with a task head, through the CLI in this process: a
tiny random BERT folder (tests/encoder_tiny.py), P-tuning v2 + a classification head on the tiny TSV task read as
label ids. eval of the run equals the run's own final evaluation, the head is read back beside the method's file,
infer prints the task's label names, its binary head scores ReCoRD per query; a head of the wrong size and a prompt
of another model are one line each."""
import json

import gin
import numpy as np
import pytest
from safetensors import safe_open

from jaxprompt.cli.main import main as cli_main
from jaxprompt.data import label_files, label_tasks, tasks
from jaxprompt.data.metrics import squad
from tests.encoder_tiny import CONLL
from tests.test_cli import main_error
from tests.tiny_task import LABELS

TASK = 'jp_encoder_tiny'
LENGTHS = "{'inputs': 16, 'targets': 1}"


def model_flags(folder) -> list[str]:
  return ['--gin_file=models/hf_encoder.gin', f"--gin.HF_MODEL_DIR='{folder}'", f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}']


def train_argv(folder, model_dir, *extra: str) -> list[str]:
  return [
      'train', *model_flags(folder), '--gin_file=runs/prompt_tuning.gin', '--gin_file=methods/p_tuning_v2.gin',
      '--gin_file=heads/classification.gin', f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.MODEL_DIR='{model_dir}'",
      '--gin.BATCH_SIZE=8', '--gin.TRAIN_STEPS=2', '--gin.EVAL_PERIOD=2', '--gin.CHECKPOINT_PERIOD=2',
      '--gin.PREFIX_LENGTH=2', *extra
  ]


@pytest.fixture(scope='module')
def run(tiny_bert, tiny_files, tmp_path_factory):
  """P-tuning v2 + a classification head trained 2 steps on the tiny task (evaluated at the end); its MODEL_DIR."""
  label_files.register_label_file_task(TASK, train=str(tiny_files['train']), validation=str(tiny_files['validation']),
                                       label_set=LABELS)
  model_dir = tmp_path_factory.mktemp('encoder') / 'run'
  try:
    assert cli_main(train_argv(tiny_bert, model_dir)) == 0
  finally:
    gin.clear_config()
  yield model_dir
  label_tasks._TASKS.pop(TASK, None)  # pylint: disable=protected-access


def test_train_writes_the_method_and_its_head_and_eval_reads_both_back(run, tiny_bert, tmp_path, clean_gin):
  assert (run / 'final_prefix.npz').is_file() and (run / 'final_head.npz').is_file()
  final = json.loads((run / 'eval_metrics.json').read_text())
  assert {'accuracy', 'loss', 'token_accuracy'} <= set(final)
  for source in (['--checkpoint', str(run)], [
      *model_flags(tiny_bert), '--gin_file=runs/prompt_eval.gin', f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
      '--prompt_file',
      str(run / 'final_prefix.npz')
  ]):
    out = tmp_path / 'eval.json'
    assert cli_main(['eval', *source, '--output', str(out)]) == 0
    gin.clear_config()
    metrics = json.loads(out.read_text())['metrics']
    assert metrics['accuracy'] == final['accuracy']
    np.testing.assert_allclose(metrics['loss'], final['loss'], rtol=1e-5)


def test_infer_prints_the_tasks_label_names(run, tmp_path, capsys, clean_gin):
  inputs = tmp_path / 'in.txt'
  inputs.write_text('good movie\nawful plot\n')
  capsys.readouterr()
  assert cli_main(['infer', '--checkpoint', str(run), '--input_file', str(inputs)]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]
  assert [r['input'] for r in rows] == ['good movie', 'awful plot']
  assert all(r['prediction'] in LABELS and r['prediction_by'] == 'head' and 0.5 <= r['probability'] <= 1 for r in rows)


def test_eval_of_record_picks_each_querys_top_true_logit_entity_and_scores_it_as_t5(run, tmp_path, tmp_path_factory,
                                                                                    clean_gin):
  """The run's binary head on ReCoRD's rows (`data/superglue_groups.py`): every row's record names its query's pick,
  the entity of the row with the highest True logit (THUDM's ranking), and `em` / `f1` are T5's SQuAD metric of
  those picks."""
  from tests.test_label_tasks_superglue import RECORD, prepared  # pylint: disable=g-import-not-at-top
  out, rows_file = tmp_path / 'eval.json', tmp_path / 'rows.jsonl'
  try:
    assert cli_main([
        'eval', '--checkpoint',
        str(run), f'--tfds_data_dir={prepared(tmp_path_factory)}',
        "--gin.MIXTURE_OR_TASK_NAME='super_glue_record_v102_labels'", '--output',
        str(out), '--predictions_file',
        str(rows_file)
    ]) == 0
  finally:
    tasks.set_tfds_data_dir(None)
  rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
  best = {}
  for r in rows:
    group = tuple(r['group'])  # (passage, query), as the text-to-text ReCoRD groups its targets
    best[group] = max(best.get(group, (-np.inf, '')), (r['true_logit'], r['entity']))
  assert len(rows) == 6 and all(r['group_prediction'] == best[tuple(r['group'])][1] for r in rows)
  queries = RECORD['val'][0][2]  # (query, answers); a query's idx is its position (the raw file numbers them)
  want = squad([answers for _, answers in queries], [best[0, q][1] for q in range(len(queries))])
  metrics = json.loads(out.read_text())['metrics']
  assert {k: metrics[k] for k in want} == pytest.approx(want) and 'loss' in metrics


def test_a_head_of_the_wrong_size_and_a_prompt_of_another_model_are_one_line(run, tiny_bert, tmp_path, capsys,
                                                                             clean_gin):
  code, line = main_error(capsys, train_argv(tiny_bert, tmp_path / 'bad', '--gin.NUM_LABELS=3'))
  assert code == 2 and "NUM_LABELS=3 but task 'jp_encoder_tiny' has 2 labels" in line
  assert not (tmp_path / 'bad').exists()
  gin.clear_config()
  code, line = main_error(capsys, train_argv(tiny_bert, tmp_path / 'bad', '--gin.HEAD_KIND=\'tagging\''))
  assert code == 2 and 'a tagging head cannot learn task' in line and 'heads/classification.gin' in line
  gin.clear_config()
  t5_prompt = tmp_path / 'prompt.npy'
  np.save(t5_prompt, np.zeros((5, 64), np.float32))  # a T5 prompt: 64 wide, the tiny BERT is 32
  code, line = main_error(capsys, [
      'eval', *model_flags(tiny_bert), '--gin_file=runs/prompt_eval.gin', f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
      '--prompt_file',
      str(t5_prompt)
  ])
  assert code == 2 and str(t5_prompt) in line


def test_export_writes_the_method_and_its_head_as_one_folder_that_scores_as_the_run(run, tiny_bert, tmp_path, capsys,
                                                                                    clean_gin):
  folder = tmp_path / 'export'
  assert cli_main(['export', '--checkpoint', str(run), '--output', str(folder)]) == 0
  assert sorted(p.name for p in folder.iterdir()) == ['fingerprint.json', 'head.npz', 'prefix.npz']
  out = tmp_path / 'eval.json'
  assert cli_main([
      'eval', *model_flags(tiny_bert), '--gin_file=runs/prompt_eval.gin', f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
      '--prompt_file',
      str(folder), '--output',
      str(out)
  ]) == 0
  gin.clear_config()
  final, metrics = json.loads((run / 'eval_metrics.json').read_text()), json.loads(out.read_text())['metrics']
  assert metrics['accuracy'] == final['accuracy']
  np.testing.assert_allclose(metrics['loss'], final['loss'], rtol=1e-5)
  code, line = main_error(capsys, ['export', '--checkpoint', str(run), '--output', str(tmp_path / 'x.npz')])
  assert code == 2 and 'writes both into one folder; give --output a folder' in line
  code, line = main_error(capsys, ['export', '--checkpoint', str(run), '--output', str(folder)])
  assert code == 2 and 'is not an empty folder' in line
  # BERT's head on [CLS] (heads/classification.gin) is two layers: transformers' pooler and classifier
  # (tests/test_encoder_export.py checks the scores); --format hf_model reads the run's config.gin, as eval does
  adapter, hf = tmp_path / 'adapter', tmp_path / 'hf'
  assert cli_main(['export', '--checkpoint', str(run), '--format', 'peft', '--output', str(adapter)]) == 0
  saved = json.loads((adapter / 'adapter_config.json').read_text())
  assert (saved['task_type'], saved['modules_to_save']) == ('SEQ_CLS', ['classifier', 'pooler'])
  assert cli_main(['export', '--checkpoint', str(run), '--format', 'hf_model', '--output', str(hf)]) == 0
  config = json.loads((hf / 'config.json').read_text())
  assert config['architectures'] == ['BertForSequenceClassification'
                                    ] and config['id2label'] == {str(i): n for i, n in enumerate(LABELS)}
  with safe_open(str(hf / 'model.safetensors'), 'np') as f:
    head = dict(np.load(run / 'final_head.npz'))
    np.testing.assert_array_equal(f.get_tensor('bert.pooler.dense.weight'), head['classifier/dense/kernel'].T)
    np.testing.assert_array_equal(f.get_tensor('classifier.bias'), head['classifier/out_proj/bias'])


def test_export_hf_head_writes_transformers_classifier_tensors(run, tiny_bert, tmp_path):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  from jaxprompt.checkpoints import hf_head  # pylint: disable=g-import-not-at-top
  torch, transformers = pytest.importorskip('torch'), pytest.importorskip('transformers')
  out = tmp_path / 'head.safetensors'
  assert cli_main(['export', '--checkpoint', str(run), '--format', 'hf_head', '--output', str(out)]) == 0
  with safe_open(str(out), 'np') as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is no mapping)
    assert f.metadata()['head_kind'] == 'classification'
  head = dict(np.load(run / 'final_head.npz'))
  params = {k: v for k, v in head.items() if k.startswith('classifier/')}  # the rest: kind / pooler markers
  # the two-layer head on a BERT (the step's fingerprint says which): BERT's pooler and classifier, [out, in] weights
  torch_names = {
      k.replace('/', '.').replace('kernel', 'weight'): v.T if k.endswith('kernel') else v for k, v in params.items()
  }
  want = hf_head.as_bert_pooled(torch_names)
  assert sorted(tensors) == sorted(want) == [
      'bert.pooler.dense.bias', 'bert.pooler.dense.weight', 'classifier.bias', 'classifier.weight'
  ]
  assert all(np.array_equal(tensors[k], want[k]) for k in want)
  back = traverse_util.flatten_dict(hf_head.head_from_hf(hf_head.from_bert_pooled(tensors)), sep='/')
  assert sorted(back) == sorted(params) and all(np.array_equal(back[k], params[k]) for k in params)
  model = transformers.BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=len(LABELS))
  loaded = model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
  assert not loaded.unexpected_keys and not any(
      k.startswith(('classifier', 'bert.pooler')) for k in loaded.missing_keys)


COPA = ('{"premise": "The man fell.", "c0": "He slipped.", "c1": "He sang.", "label": 0}\n'
        '{"premise": "It rained.", "c0": "The sun shone.", "c1": "The street got wet.", "label": 1}\n') * 4
# kind -> (head gin, the --task spec's keys after name= and the data path, the data, an infer line)
WORKFLOWS = {
    'tagging': ('heads/tagging.gin', 'conll={path}', CONLL, 'Anna likes Rome'),
    'choice': ('heads/multiple_choice.gin', 'kind=choice,train={path}/copa.jsonl,validation={path}/copa.jsonl,'
               'text=premise,choices=c0|c1', {'copa.jsonl': COPA}, 'The man fell.\tHe slipped.\tHe sang.'),
}


@pytest.mark.slow  # ~15 s each: three CLI runs, the training compiles its steps
@pytest.mark.parametrize('kind', ['tagging', 'choice'])
def test_own_tagging_and_choice_data_from_the_command_line_train_eval_infer(kind, tiny_bert, tmp_path, capsys,
                                                                            clean_gin):
  """`--task` registers the data (no Python); train -> eval -> infer through the CLI; eval and infer read the
  task back from the run's config.gin."""
  head, spec, files, line = WORKFLOWS[kind]
  for name, text in files.items():
    (tmp_path / 'data').mkdir(exist_ok=True)
    (tmp_path / 'data' / name).write_text(text)
  task, run = f'jp_cli_{kind}', tmp_path / 'run'
  assert cli_main([
      'train', *model_flags(tiny_bert), '--gin_file=runs/prompt_tuning.gin', f'--gin_file={head}', '--task',
      f'name={task},' + spec.format(path=tmp_path / 'data'), f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
      f"--gin.MODEL_DIR='{run}'", '--gin.BATCH_SIZE=8', '--gin.TRAIN_STEPS=2', '--gin.EVAL_PERIOD=2',
      '--gin.CHECKPOINT_PERIOD=2', '--gin.PROMPT_LENGTH=2'
  ]) == 0
  gin.clear_config()
  final = json.loads((run / 'eval_metrics.json').read_text())
  assert cli_main(['eval', '--checkpoint', str(run), '--output', str(tmp_path / 'eval.json')]) == 0
  gin.clear_config()
  metrics = json.loads((tmp_path / 'eval.json').read_text())['metrics']
  assert metrics['accuracy'] == final['accuracy'] and ('span_f1' in metrics) == (kind == 'tagging')
  (tmp_path / 'in.txt').write_text(line + '\n')
  capsys.readouterr()
  assert cli_main(['infer', '--checkpoint', str(run), '--input_file', str(tmp_path / 'in.txt')]) == 0
  [row] = [json.loads(out) for out in capsys.readouterr().out.splitlines() if out.startswith('{')]
  if kind == 'tagging':
    assert row['words'] == ['Anna', 'likes', 'Rome'] and len(row['prediction']) == 3
    assert set(row['prediction']) <= {'O', 'B-LOC', 'B-PER'}
  else:
    assert row['prediction'] in (0, 1) and 0.5 <= row['probability'] <= 1
