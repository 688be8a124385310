"""The real TFDS builders (super_glue/boolq, super_glue/cb, glue/sst2) prepared offline from small raw files,
then read end to end by the seqio tasks into model features.

The raw files use the original releases' layout (BoolQ.zip -> BoolQ/{train,val,test}.jsonl, SST-2.zip ->
SST-2/{train,dev,test}.tsv); `DownloadManager.download_and_extract` is pointed at the folder holding them and
any real download raises.
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import seqio  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxprompt.data import tasks  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxprompt.data.vocab import get_default_vocabulary  # pylint: disable=g-import-not-at-top
from jaxprompt.errors import DataError  # pylint: disable=g-import-not-at-top,wrong-import-position

BOOLQ = {
    "train": [("does ethanol take more energy to make than it produces", "Ethanol fuel is made from corn.", True),
              ("is the sky green", "The sky is blue on a clear day.", False),
              ("can a cat swim", "Most cats can swim but dislike water.", True)],
    "val": [("is paris in france", "Paris is the capital of France.", True),
            ("is ice hot", "Ice is frozen water.", False)],
    "test": [("is the moon made of cheese", "The Moon is rock.", None)],
}
CB = {
    "train": [("It is raining.", "The ground is wet.", "entailment"), ("She said no.", "She agreed.", "contradiction")],
    "val": [("He may come.", "He will come.", "neutral"), ("It is sunny.", "It is not raining.", "entailment")],
    "test": [("They left early.", "They stayed.", None)],  # TFDS refuses to prepare an empty split
}
SST2 = {
    "train": [("a gripping , funny film ", 1), ("dull and lifeless ", 0)],
    "dev": [("it 's a charming journey . ", 1), ("the plot is a mess . ", 0), ("unforgettable ", 1)],
    "test": [("a sweet movie ", None)],
}
LENGTHS = {"inputs": 40, "targets": 6}


def _write_raw(folder):
  """Writes the three datasets as their original zip files unpack."""
  for name, rows_by_split in (("BoolQ", BOOLQ), ("CB", CB)):
    os.makedirs(folder / name)
    for split, rows in rows_by_split.items():
      with open(folder / name / f"{split}.jsonl", "w") as f:
        for i, (a, b, label) in enumerate(rows):
          row = ({"question": a, "title": "t", "passage": b, "idx": i}
                 if name == "BoolQ" else {"premise": a, "hypothesis": b, "idx": i})
          if label is not None:
            row["label"] = label
          f.write(json.dumps(row) + "\n")
  os.makedirs(folder / "SST-2")
  for split, rows in SST2.items():
    with open(folder / "SST-2" / f"{split}.tsv", "w") as f:
      if split == "test":
        f.write("index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, (s, _) in enumerate(rows)))
      else:
        f.write("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  raw = tmp_path_factory.mktemp("raw")
  data = tmp_path_factory.mktemp("tfds")
  _write_raw(raw)

  def no_download(*args, **kwargs):
    raise AssertionError(f"TFDS tried to download {args[1:]} {kwargs}")

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(tfds.download.DownloadManager, "download_and_extract", lambda self, url: str(raw))
    mp.setattr(tfds.download.DownloadManager, "download", no_download)
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    for name in ("super_glue/boolq:1.0.2", "super_glue/cb:1.0.2", "glue/sst2:2.0.0"):
      tfds.builder(name, data_dir=str(data)).download_and_prepare(download_config=config)
    tasks.set_tfds_data_dir(str(data))
    yield str(data)
    tasks.set_tfds_data_dir(None)


def test_real_builders_read_back(data_dir):
  boolq = list(
      tfds.load("super_glue/boolq:1.0.2", split="train", data_dir=data_dir, download=False).as_numpy_iterator())
  assert sorted((ex["question"].decode(), ex["label"]) for ex in boolq) == sorted(
      (q, int(label)) for q, _, label in BOOLQ["train"])
  sst2 = tfds.load("glue/sst2:2.0.0", split="test", data_dir=data_dir, download=False)
  assert [(ex["sentence"].decode(), ex["label"]) for ex in sst2.as_numpy_iterator()] == [("a sweet movie ", -1)]


def _expected(task_name, split):
  """(inputs, targets) strings in T5's format, from the raw rows."""
  taskless = task_name.startswith("taskless_")
  if "boolq" in task_name:
    rows = BOOLQ["val" if split == "validation" else split]
    pairs = [(f"boolq passage: {p} question: {q}", "<unk>" if y is None else str(y)) for q, p, y in rows]
  elif "cb" in task_name:
    rows = CB["val" if split == "validation" else split]
    pairs = [(f"cb hypothesis: {h} premise: {p}", "<unk>" if y is None else y) for p, h, y in rows]
  else:
    rows = SST2["dev" if split == "validation" else split]
    names = ["negative", "positive"]
    pairs = [(f"sst2 sentence: {s}", "<unk>" if y is None else names[y]) for s, y in rows]
  return sorted((i.split(" ", 1)[1] if taskless else i, t) for i, t in pairs)


CASES = [("super_glue_boolq_v102", "validation"), ("taskless_super_glue_boolq_v102", "test"),
         ("super_glue_cb_v102", "test"), ("super_glue_cb_v102", "train"), ("taskless_super_glue_cb_v102", "validation"),
         ("glue_sst2_v200", "validation"), ("taskless_glue_sst2_v200", "train")]


@pytest.mark.parametrize("task_name,split", CASES)
def test_task_reads_prepared_tfds_into_model_features(data_dir, task_name, split):
  del data_dir
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False)
  examples = list(ds.as_numpy_iterator())
  got = sorted((ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode()) for ex in examples)
  assert got == _expected(task_name, split)

  vocab = get_default_vocabulary()
  features = list(seqio.EncDecFeatureConverter(pack=False)(ds, LENGTHS).as_numpy_iterator())
  assert len(features) == len(examples)

  def padded_ids(text, length):  # SentencePiece ids of the text, then EOS (1), then padding (0)
    ids = vocab.encode(text) + [1]
    return tuple(ids + [0] * (length - len(ids)))

  expected_rows = sorted(
      (padded_ids(i, LENGTHS["inputs"]), padded_ids(t, LENGTHS["targets"])) for i, t in _expected(task_name, split))
  got_rows = sorted(
      (tuple(f["encoder_input_tokens"].tolist()), tuple(f["decoder_target_tokens"].tolist())) for f in features)
  assert got_rows == expected_rows
  for f in features:
    assert f["encoder_input_tokens"].dtype == np.int32
    target_ids = f["decoder_target_tokens"]
    np.testing.assert_array_equal(f["decoder_input_tokens"], np.r_[0, target_ids[:-1]])  # shifted right
    np.testing.assert_array_equal(f["decoder_loss_weights"], (target_ids > 0).astype(np.int32))
  # Decoding gives the strings back, except that SentencePiece drops the trailing spaces SST-2 sentences carry
  # and that "<" is not in T5's vocabulary: the unlabeled target "<unk>" comes back as " ⁇ unk>" (id 2 = unk).
  decoded = sorted((vocab.decode(f["encoder_input_tokens"].tolist()), vocab.decode(f["decoder_target_tokens"].tolist()))
                   for f in features)
  expected = [(i.rstrip(), " \u2047 unk>" if t == "<unk>" else t) for i, t in _expected(task_name, split)]
  assert decoded == sorted(expected)


def test_batched_model_features_and_label_ids(data_dir):
  del data_dir
  task = seqio.get_mixture_or_task("super_glue_boolq_v102")
  features = seqio.EncDecFeatureConverter(pack=False)(task.get_dataset(LENGTHS, split="train", shuffle=False), LENGTHS)
  batch = next(features.batch(3).as_numpy_iterator())
  assert batch["encoder_input_tokens"].shape == (3, 40) and batch["decoder_target_tokens"].shape == (3, 6)
  vocab = get_default_vocabulary()
  label_ids = {label: vocab.encode(label) for label in tasks.get_label_set("super_glue_boolq_v102")}
  for row in batch["decoder_target_tokens"]:
    assert row[:len(row[row > 0]) - 1].tolist() in label_ids.values()  # a verbalizer, then EOS


def test_check_nonempty_on_prepared_data(data_dir):
  del data_dir
  tasks.check_nonempty("super_glue_boolq_v102", "train")
  tasks.check_nonempty("taskless_glue_sst2_v200", "validation")
  with pytest.raises(DataError, match=r"'glue_sst2_v200' has no split 'validation_matched'"):
    tasks.check_nonempty("glue_sst2_v200", "validation_matched")


def test_unprepared_dataset_is_a_data_error_not_a_download(data_dir, monkeypatch):
  del data_dir
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", lambda self, url:
                      (_ for _ in ()).throw(OSError(f"network disabled: {url}")))
  with pytest.raises(DataError, match=r"task 'super_glue_rte_v102' split 'train': cannot read examples"):
    tasks.check_nonempty("super_glue_rte_v102", "train")
