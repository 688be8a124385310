"""T5's packaged vocabulary and the user's own TSV / JSONL seqio tasks."""
import hashlib
import importlib.resources
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gin  # pylint: disable=g-import-not-at-top
import numpy as np
import pytest
import seqio
import tensorflow as tf

from jaxprompt.data import custom, task_spec, vocab
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.models import fingerprint

LENGTHS = {"inputs": 32, "targets": 8}


@pytest.fixture(autouse=True)
def _forget_registered_tasks():
  before = set(seqio.TaskRegistry.names())
  yield
  for name in set(seqio.TaskRegistry.names()) - before:
    custom.unregister_file_task(name)
    seqio.TaskRegistry.remove(name)
  gin.clear_config()


def _write(tmp_path, filename, text):
  path = tmp_path / filename
  path.write_text(text, encoding="utf-8")
  return str(path)


def _examples(task, split="train", **kwargs):
  return list(task.get_dataset(LENGTHS, split=split, shuffle=False, **kwargs).as_numpy_iterator())


def _texts(examples, key):
  return [ex[key].decode() for ex in examples]


# ------------------------------------------------------------------------------------------------- vocabulary


def test_default_vocabulary_is_the_packaged_t5_model(fixtures_dir):
  packaged = importlib.resources.files("jaxprompt") / "assets" / "t5_cc_all_32000_sentencepiece.model"
  assert packaged.is_file()
  assert (importlib.resources.files("jaxprompt") / "assets" / "NOTICE.md").is_file()
  digest = lambda data: hashlib.sha256(data).hexdigest()
  assert digest(packaged.read_bytes()) == digest((fixtures_dir / "t5_cc_all_32000_sentencepiece.model").read_bytes())
  v = vocab.get_default_vocabulary()
  assert v.sentencepiece_model_file == str(packaged)
  assert (v.vocab_size, v.pad_id, v.eos_id, v.unk_id) == (32100, 0, 1, 2)
  assert [v.tokenizer.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
  assert vocab.get_vocabulary(None) is v
  assert vocab.get_default_vocabulary(extra_ids=0).vocab_size == 32000


def test_vocabulary_round_trip_known_pieces_and_sentinels():
  v = vocab.get_default_vocabulary()
  text = "Prompt tuning freezes T5 and learns 100 soft tokens, doesn't it?"
  ids = v.encode(text)
  assert v.decode(ids) == text
  assert ids == [v.tokenizer.piece_to_id(p) for p in v.tokenizer.encode_as_pieces(text)]
  # Well-known T5 ids: "▁The" 37, "▁the" 8, "." 5, "▁" 3.
  assert v.encode("The") == [37] and v.encode("the") == [8]
  assert v.tokenizer.id_to_piece(5) == "." and v.tokenizer.id_to_piece(3) == "▁"
  assert v.encode("<extra_id_0>") == [32099] and v.decode([32000]) == "<extra_id_99>"


@pytest.mark.parametrize("extra_ids", [100, 0])
def test_the_vocabulary_is_seqios_without_tensorflow(extra_ids):
  """The same ids, texts and serialized model (so the same model fingerprints) as seqio's vocabulary of the file,
  and seqio's TensorFlow side on demand (a seqio task may hold it)."""
  ours = vocab.get_default_vocabulary(extra_ids=extra_ids)
  theirs = seqio.SentencePieceVocabulary(vocab.default_vocabulary_path(), extra_ids=extra_ids)
  assert ours.sp_model == theirs.sp_model
  assert fingerprint._vocabulary_record(ours) == fingerprint._vocabulary_record(theirs)  # pylint: disable=protected-access
  assert (ours.vocab_size, ours.eos_id, ours.unk_id, ours.pad_id) == (theirs.vocab_size, theirs.eos_id, theirs.unk_id,
                                                                      theirs.pad_id)
  text = "Prompt tuning <extra_id_0> a frozen T5, doesn't it?"
  assert ours.encode(text) == theirs.encode(text)
  ids = np.random.default_rng(0).integers(0, ours.vocab_size + 8, size=(50, 12)).tolist()  # past the end too
  assert [ours.decode(row) for row in ids] == [theirs.decode(row) for row in ids]
  assert ours.encode_tf(tf.constant(text)).numpy().tolist() == ours.encode(text)
  assert vocab.is_vocabulary(ours) and vocab.resolve(ours) is ours and vocab.resolve(None) is vocab.resolve(None)


def test_get_vocabulary_from_a_path(tmp_path, fixtures_dir):
  from_path = vocab.get_vocabulary(str(fixtures_dir / "t5_cc_all_32000_sentencepiece.model"), extra_ids=10)
  assert from_path.vocab_size == 32010
  missing = str(tmp_path / "nope.model")
  with pytest.raises(DataError, match=f"vocabulary file {missing} does not exist"):
    vocab.get_vocabulary(missing)
  junk = _write(tmp_path, "junk.model", "not a sentencepiece model")
  with pytest.raises(DataError, match=f"cannot read SentencePiece model {junk}"):
    vocab.get_vocabulary(junk)


# ------------------------------------------------------------------------------------------------- reading files


def test_tsv_with_header_picks_named_columns(tmp_path):
  path = _write(tmp_path, "train.tsv", "id\tlabel\tsentence\n1\tyes\tit rains\n2\tno\tthe sun shines\n")
  task = custom.register_file_task("csv_header", train=path, inputs_field="sentence", targets_field="label")
  examples = _examples(task)
  assert _texts(examples, "inputs_pretokenized") == ["it rains", "the sun shines"]
  assert _texts(examples, "targets_pretokenized") == ["yes", "no"]
  v = vocab.get_default_vocabulary()
  assert examples[0]["inputs"].tolist() == v.encode("it rains") + [1]
  assert examples[1]["targets"].tolist() == v.encode("no") + [1]
  assert task.source.num_input_examples("train") == 2


def test_tsv_without_header_is_input_then_target(tmp_path):
  path = _write(tmp_path, "d.tsv", "good movie\tpositive\r\n\r\nbad \"movie\"\tnegative\r\n")  # CRLF, blank line
  task = custom.register_file_task("tsv_plain", validation=path)
  examples = _examples(task, "validation")
  assert _texts(examples, "inputs_pretokenized") == ["good movie", 'bad "movie"']
  assert _texts(examples, "targets_pretokenized") == ["positive", "negative"]
  # A first line that happens to contain "inputs" is a header only if you say so.
  forced = _write(tmp_path, "forced.tsv", "inputs\ttargets\nx\ty\n")
  task = custom.register_file_task("tsv_forced", train=forced, has_header=False)
  assert _texts(_examples(task), "inputs_pretokenized") == ["inputs", "x"]


def test_jsonl_and_several_files_per_split(tmp_path):
  a = _write(tmp_path, "a.jsonl", '{"q": "2+2?", "a": 4, "extra": [1]}\n\n{"q": "capital of France?", "a": "Paris"}\n')
  b = _write(tmp_path, "b.jsonl", '{"q": "sky colour?", "a": "blue"}\n')
  task = custom.register_file_task("qa_jsonl", train=[a, b], inputs_field="q", targets_field="a")
  examples = _examples(task)
  assert _texts(examples, "inputs_pretokenized") == ["2+2?", "capital of France?", "sky colour?"]
  assert _texts(examples, "targets_pretokenized") == ["4", "Paris", "blue"]


def test_shards_are_disjoint_even_when_shuffled(tmp_path):
  path = _write(tmp_path, "t.tsv", "".join(f"sentence {i}\tlabel{i % 2}\n" for i in range(10)))
  task = custom.register_file_task("sharded", train=path)
  shards = [
      set(
          _texts(
              list(
                  task.get_dataset(LENGTHS, split="train", shuffle=True,
                                   shard_info=seqio.ShardInfo(index=i, num_shards=2)).as_numpy_iterator()),
              "inputs_pretokenized")) for i in range(2)
  ]
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == {f"sentence {i}" for i in range(10)}


# ------------------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("filename, text, message", [
    ("wide.tsv", "a\tb\nc\td\te\n",
     r"wide.tsv:2: expected 2 tab-separated fields \(input<TAB>target, no header\), found 3"),
    ("hdr.tsv", "inputs\tx\ttargets\n\nq\t1\n",
     r"hdr.tsv:3: expected 3 tab-separated fields \(the header has 3 columns\), found 2"),
    ("nocol.tsv", "inputs\tlabel\nq\tyes\n", r"nocol.tsv:1: the header \['inputs', 'label'\] has no column 'targets'"),
    ("empty.tsv", "", r"data file .*empty.tsv is empty"),
    ("blank.jsonl", "\n  \n", r"data file .*blank.jsonl is empty"),
    ("onlyhdr.tsv", "inputs\ttargets\n", r"onlyhdr.tsv has a header but no examples"),
    ("bad.jsonl", '{"inputs": "a", "targets": "b"}\n{"inputs": "a", \n', r"bad.jsonl:2: invalid JSON"),
    ("list.jsonl", '["a", "b"]\n', r"list.jsonl:1: expected a JSON object per line, got list"),
    ("key.jsonl", '{"inputs": "a", "targets": "b"}\n{"inputs": "a", "label": "b"}\n',
     r"key.jsonl:2: no field 'targets' in the object \(its fields: \['inputs', 'label'\]\)"),
    ("type.jsonl", '{"inputs": "a", "targets": null}\n', r"type.jsonl:1: field 'targets' must be a string or a number"),
    ("data.csv", "a,b\n", r"cannot tell the format of .*data.csv from its extension '.csv'"),
])
def test_bad_files_name_the_file_and_line(tmp_path, filename, text, message):
  path = _write(tmp_path, filename, text)
  with pytest.raises(DataError, match=message):
    custom.register_file_task("bad_file", train=path)
  assert "bad_file" not in seqio.TaskRegistry.names()


def test_missing_file_and_non_utf8(tmp_path):
  missing = str(tmp_path / "missing.tsv")
  with pytest.raises(DataError, match=f"data file {missing} does not exist"):
    custom.register_file_task("missing", train=missing)
  latin = tmp_path / "latin.tsv"
  latin.write_bytes(b"ok\tyes\n" + "caf\xe9\tno\n".encode("latin-1"))
  with pytest.raises(DataError, match=r"latin.tsv:2: not UTF-8 text"):
    custom.register_file_task("latin", train=str(latin))


def test_label_set_is_enforced_with_file_and_line(tmp_path):
  good = _write(tmp_path, "train.tsv", "a\tyes\nb\tno\n")
  bad = _write(tmp_path, "dev.tsv", "inputs\ttargets\nc\tyes\n\nd\tmaybe\n")
  with pytest.raises(DataError, match=r"dev.tsv:4: target 'maybe' is not in the label set \['no', 'yes'\]"):
    custom.register_file_task("labels_bad", train=good, validation=bad, label_set=["no", "yes"])
  with pytest.raises(DataError, match=r"dev.tsv:4: target 'maybe'"):
    custom.register_file_task("labels_bad", train=good, validation=bad, label_set=["no", "yes"], format="tsv")


# ------------------------------------------------------------------------------------------------- tasks and metrics


def test_label_set_postprocess_and_metrics(tmp_path):
  path = _write(tmp_path, "dev.jsonl",
                "".join(f'{{"inputs": "s{i}", "targets": "{t}"}}\n' for i, t in enumerate(["no", "yes", "yes", "no"])))
  task = custom.register_file_task("nli", validation=path, label_set=("no", "yes"), metrics=("accuracy", "f1"))
  assert custom.get_file_task_label_set("nli") == ("no", "yes")
  post = lambda text, is_target: task.postprocess_fn(text, example={}, is_target=is_target)
  targets = [post(t, True) for t in _texts(_examples(task, "validation"), "targets_pretokenized")]
  predictions = [post(p, False) for p in ["no", " yes", "maybe", "yes"]]
  assert targets == [0, 1, 1, 0] and predictions == [0, 1, -1, 1]
  scores = {}
  for fn in task.metric_fns:
    scores.update(fn(targets, predictions))
  # right: idx 0, 1 -> 50%. F1 (positive "yes"): TP idx1, FN idx2 (invalid), FP idx3 -> 2 / (2 + 1 + 1)
  assert scores == {"accuracy": pytest.approx(50.0), "f1": pytest.approx(50.0)}


def test_without_label_set_targets_stay_strings(tmp_path):
  path = _write(tmp_path, "dev.tsv", "x\t1.5\ny\t2.0\n")
  task = custom.register_file_task("plain", validation=path)
  assert task.postprocess_fn(" 1.5", example={}, is_target=False) == " 1.5"
  with pytest.raises(DataError, match=r"task 'not_a_task' was not registered with register_file_task"):
    custom.get_file_task_label_set("not_a_task")
  assert custom.get_file_task_label_set("plain") is None
  regression = custom.register_file_task("stsb_like", validation=path, metrics=["pearson_corrcoef"])
  assert regression.postprocess_fn("2.5", example={}, is_target=False) == 2.5
  assert regression.postprocess_fn("two", example={}, is_target=False) == -1.0


def test_bad_arguments(tmp_path):
  path = _write(tmp_path, "t.tsv", "a\tyes\n")
  cases = [
      (dict(name="bad name!", train=path), r"task name 'bad name!' is invalid"),
      (dict(name="t"), r"task t: give at least one of train=, validation=, test="),
      (dict(name="t", train=path, format="csv"), r"format='csv' is not one of"),
      (dict(name="t", train=path, metrics=["f1"]), r"metric 'f1' needs a label set"),
      (dict(name="t", train=path, metrics=["bleu"]), r"unknown metric 'bleu'"),
      (dict(name="t", train=path, label_set=["yes", "no", "yes"]), r"repeats \['yes'\]"),
      (dict(name="t", train=path, label_set="yes"), r"label_set must be a list"),
      (dict(name="t", train=path, label_set=["a", "b", "yes"], metrics=["f1"]), r"'f1' needs exactly 2 labels"),
      (dict(name="t", train=path, label_set=["yes"], metrics=["spearman_corrcoef"]), r"cannot be used with a label"),
  ]
  for kwargs, message in cases:
    with pytest.raises(ConfigError, match=message):
      custom.register_file_task(kwargs.pop("name"), **kwargs)


def test_registering_again(tmp_path):
  a = _write(tmp_path, "a.tsv", "a\tyes\n")
  b = _write(tmp_path, "b.tsv", "b\tno\nc\tyes\n")
  first = custom.register_file_task("again", train=a)
  assert custom.register_file_task("again", train=a) is first  # same arguments: no-op
  with pytest.raises(DataError, match=r"task 'again' is already registered \(differently\); pass overwrite=True"):
    custom.register_file_task("again", train=b)
  with pytest.raises(DataError, match=r"target 'no' is not in the label set"):  # a failed overwrite keeps the old
    custom.register_file_task("again", train=b, label_set=["yes"], overwrite=True)
  assert seqio.get_mixture_or_task("again") is first.as_seqio()  # seqio's registry holds the task's seqio form
  second = custom.register_file_task("again", train=b, overwrite=True)
  assert seqio.get_mixture_or_task("again") is second.as_seqio() and second.source.num_input_examples("train") == 2


def test_gin_registers_the_task(tmp_path):
  train = _write(tmp_path, "train.tsv", "a\tyes\nb\tno\n")
  dev = _write(tmp_path, "dev.jsonl", '{"text": "c", "label": "yes"}\n')

  @gin.configurable("consume_task_name")
  def consume(task_name):
    return task_name

  gin.parse_config(f"""
      consume_task_name.task_name = @jaxprompt.data.file_task_name()
      jaxprompt.data.register_file_task.name = 'gin_task'
      jaxprompt.data.register_file_task.train = '{train}'
      jaxprompt.data.register_file_task.label_set = ['yes', 'no']
      other/jaxprompt.data.register_file_task.name = 'gin_other'
      other/jaxprompt.data.register_file_task.train = None
      other/jaxprompt.data.register_file_task.validation = '{dev}'
      other/jaxprompt.data.register_file_task.inputs_field = 'text'
      other/jaxprompt.data.register_file_task.targets_field = 'label'
  """)
  assert consume() == "gin_task" and consume() == "gin_task"  # evaluated twice, registered once
  assert custom.get_file_task_label_set("gin_task") == ("yes", "no")
  with gin.config_scope("other"):
    assert consume() == "gin_other"
  assert seqio.get_mixture_or_task("gin_other").splits == ("validation",)


# ------------------------------------------------------------------------------------------------- command line


def test_parse_task_spec():
  spec = "name=my_task, train=/p/train.tsv|/p/more.tsv,validation=gs://b/x=1/dev.tsv,labels=yes|no,header=false,"
  assert task_spec.parse_task_spec(spec + "metrics=accuracy|f1,inputs=q,targets=a,format=tsv,vocab=/v.model") == {
      "name": "my_task", "train": ("/p/train.tsv", "/p/more.tsv"), "validation": "gs://b/x=1/dev.tsv", "label_set":
          ("yes", "no"), "has_header": False, "metrics": ("accuracy", "f1"), "inputs_field": "q", "targets_field": "a",
      "format": "tsv", "vocabulary": "/v.model"
  }
  assert task_spec.parse_task_spec("name=t,test=/t.jsonl,header=auto") == {
      "name": "t", "test": "/t.jsonl", "has_header": None
  }


@pytest.mark.parametrize("spec, message", [
    ("train=/p.tsv", r"name=\.\.\. is required"),
    ("name=t,train", r"'train' is not key=value"),
    ("name=t,colour=red", r"unknown key 'colour'"),
    ("name=t,train=", r"key 'train' has no value"),
    ("name=t,labels=a||b", r"labels='a\|\|b' has an empty entry"),
    ("name=t,inputs=a,inputs_field=b", r"inputs_field is given twice"),
    ("name=t,header=maybe", r"header='maybe' is not true / false / auto"),
])
def test_parse_task_spec_errors(spec, message):
  with pytest.raises(ConfigError, match=message):
    task_spec.parse_task_spec(spec)


def test_register_task_spec(tmp_path):
  train = _write(tmp_path, "train.tsv", "sentence\tlabel\ngreat\tpositive\n")
  dev = _write(tmp_path, "dev.tsv", "awful\tnegative\n")
  task = task_spec.register_task_spec(f"name=cli_task,train={train},validation={dev},inputs=sentence,targets=label,"
                                      "labels=negative|positive")
  assert task.splits == ("train", "validation")
  assert custom.get_file_task_label_set("cli_task") == ("negative", "positive")
  assert _texts(_examples(task, "validation"), "inputs_pretokenized") == ["awful"]
