"""GLUE / SuperGLUE seqio tasks: exact T5 strings, every task end to end on mocked TFDS, registry helpers.

The expected strings are written by hand from T5's formatting rules (benchmark name, then "key: value" for
the text features sorted by name unless T5 fixes an order, then the class name as target).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import seqio  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxprompt.data import (
    postprocessors,  # pylint: disable=g-import-not-at-top,wrong-import-position
    tasks,  # pylint: disable=g-import-not-at-top,wrong-import-position
)
from jaxprompt.errors import DataError  # pylint: disable=g-import-not-at-top,wrong-import-position


def _s(text):
  return tf.constant(text, tf.string)


def _i(value, dtype=tf.int32):
  return tf.constant(value, dtype)


def _label(value):
  return tf.constant(value, tf.int64)  # TFDS ClassLabel


def _text_stage(task_name, raw_examples):
  """Runs the task's own preprocessors up to (not including) tokenization on raw TFDS examples."""
  task = seqio.get_mixture_or_task(task_name)
  ds = tf.data.Dataset.from_tensors(raw_examples[0])
  for raw in raw_examples[1:]:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(raw))
  for preprocessor in task.preprocessors:
    if preprocessor is seqio.preprocessors.tokenize:
      break
    ds = preprocessor(ds)
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


WSC_TEXT = "The trophy does not fit into the brown suitcase because it is too large ."
SPECIAL_WSC_TEXT = ("The boy continued to whip the pony , and eventually the pony threw him over. John laughed "
                    "out quite loud. \"Good for him,\" he said. ")


def _wsc_raw(span1_text, span1_index, span2_text, span2_index, label, text=WSC_TEXT, idx=0):
  return {
      "text": _s(text), "span1_text": _s(span1_text), "span1_index": _i(span1_index), "span2_text": _s(span2_text),
      "span2_index": _i(span2_index), "label": _label(label), "idx": _i(idx)
  }


# (task name without version, raw examples, expected [(inputs, targets)] in the T5 format).
SUPER_GLUE_CASES = [
    ("super_glue_boolq_v102",
     [{"question": _s("is the sky blue"), "passage": _s("The sky is blue."), "idx": _i(7),
       "label": _label(1)}], [("boolq passage: The sky is blue. question: is the sky blue", "True")]),
    ("super_glue_cb_v102",
     [{"premise": _s("It rained."), "hypothesis": _s("The ground is wet."), "idx": _i(0),
       "label": _label(2)}], [("cb hypothesis: The ground is wet. premise: It rained.", "neutral")]),
    ("super_glue_copa_v102", [{
        "premise": _s("The man broke his toe."), "choice1": _s("He dropped a hammer on his foot."),
        "choice2": _s("He got a hole in his sock."), "question": _s("cause"), "idx": _i(1), "label": _label(0)
    }], [("copa choice1: He dropped a hammer on his foot. choice2: He got a hole in his sock. "
          "premise: The man broke his toe. question: cause", "choice1")]),
    ("super_glue_multirc_v102", [{
        "paragraph": _s("<b>Sent 1: </b>Tom has a dog.<br><b>Sent 2: </b>It is brown.<br>"),
        "question": _s("What color is Tom's dog?"), "answer": _s("Brown"), "label": _label(1),
        "idx": {"paragraph": _i(3), "question": _i(4), "answer": _i(5)}
    }], [("multirc question: What color is Tom's dog? answer: Brown paragraph: Sent 1: Tom has a dog. "
          "Sent 2: It is brown. ", "True")]),
    ("super_glue_record_v102", [{
        "passage": _s("Tom visited Paris.\n@highlight\nHe liked it\n@highlight\nParis is big"),
        "query": _s("@placeholder loved the trip."), "entities": _s(["He", "Paris", "Tom"]),
        "answers": _s(["He", "Tom"]), "idx": {"passage": _i(2), "query": _i(9)}
    }], [("record query: @placeholder loved the trip. entities: He, Paris, Tom passage: Tom visited Paris. "
          "He liked it. Paris is big", "He"),
         ("record query: @placeholder loved the trip. entities: He, Paris, Tom passage: Tom visited Paris. "
          "He liked it. Paris is big", "Tom")]),
    ("super_glue_rte_v102",
     [{"premise": _s("A cat sat."), "hypothesis": _s("An animal sat."), "idx": _i(0),
       "label": _label(0)}], [("rte hypothesis: An animal sat. premise: A cat sat.", "entailment")]),
    ("super_glue_wic_v102", [{
        "word": _s("bank"), "sentence1": _s("He sat on the bank."), "sentence2": _s("She robbed the bank."),
        "start1": _i(14), "end1": _i(18), "start2": _i(15), "end2": _i(19), "idx": _i(0), "label": _label(0)
    }], [("wic sentence1: He sat on the bank. sentence2: She robbed the bank. word: bank", "False")]),
    ("super_glue_axb_v102",
     [{"sentence1": _s("The cat sat."), "sentence2": _s("The cat did not sit."), "idx": _i(0),
       "label": _label(1)}], [("rte hypothesis: The cat did not sit. premise: The cat sat.", "not_entailment")]),
    ("super_glue_axg_v102",
     [{"premise": _s("The nurse ate."), "hypothesis": _s("She ate."), "idx": _i(0),
       "label": _label(0)}], [("rte hypothesis: She ate. premise: The nurse ate.", "entailment")]),
    ("super_glue_wsc.fixed_v102", [
        _wsc_raw("test", 3, "This", 0, 0, text="This is a test sentence ."),
        _wsc_raw("Pete", 2, "himself", 6, 1, text="Mark told Pete many lies about himself ."),
        _wsc_raw("the brown suitcase", 6, "it", 10, 0)
    ], [("wsc text: # This # is a * test * sentence .", "False"),
        ("wsc text: Mark told * Pete * many lies about # himself # .", "True"),
        ("wsc text: The trophy does not fit into * the brown suitcase * because # it # is too large .", "False")]),
    (
        "super_glue_wsc_v102_simple_train",  # only the example whose candidate is the referent
        [_wsc_raw("The trophy", 0, "it", 10, 1),
         _wsc_raw("the brown suitcase", 6, "it", 10, 0)],
        [("wsc: The trophy does not fit into the brown suitcase because *it* is too large .", "The trophy")]),
    (
        "super_glue_wsc_v102_simple_eval",
        [
            _wsc_raw("The trophy", 0, "it", 10, 1),
            _wsc_raw("the brown suitcase", 6, "it", 10, 0),
            # T5 hard-codes this text: its span2_index does not point at the pronoun.
            _wsc_raw("John", 14, "him", 5, 0, text=SPECIAL_WSC_TEXT)
        ],
        [("wsc: The trophy does not fit into the brown suitcase because *it* is too large .", "The trophy"),
         ("wsc: The trophy does not fit into the brown suitcase because *it* is too large .", "the brown suitcase"),
         ("wsc: The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite "
          "loud. \"Good for *him* ,\" he said.", "John")]),
    ("dpr_v001_simple", [{
        "sentence": _s("Bob asked Tom if he can lend some money."), "pronoun": _s("he"),
        "candidates": _s(["Bob", "Tom"]), "label": _label(1)
    }], [("wsc: Bob asked Tom if *he* can lend some money.", "Tom")]),
]


def _glue_cases(suffix):

  def pair(a, b, label):
    return {"sentence1": _s(a), "sentence2": _s(b), "idx": _i(0), "label": label}

  def nli(label):
    return {"premise": _s("A man eats."), "hypothesis": _s("A person eats."), "idx": _i(3), "label": _label(label)}

  return [
      (f"glue_cola_{suffix}", [{"sentence": _s("The book was read."), "idx": _i(0),
                                "label": _label(1)}], [("cola sentence: The book was read.", "acceptable")]),
      (f"glue_sst2_{suffix}", [{"sentence": _s("a gripping film "), "idx": _i(0), "label": _label(1)},
                               {"sentence": _s("dull"), "idx": _i(1),
                                "label": _label(-1)}], [("sst2 sentence: a gripping film ", "positive"),
                                                        ("sst2 sentence: dull", "<unk>")]),
      (f"glue_mrpc_{suffix}", [pair("He left.", "He went away.", _label(0))],
       [("mrpc sentence1: He left. sentence2: He went away.", "not_equivalent")]),
      (f"glue_qqp_{suffix}",
       [{"question1": _s("How old are you?"), "question2": _s("What is your age?"), "idx": _i(0),
         "label": _label(1)}], [("qqp question1: How old are you? question2: What is your age?", "duplicate")]),
      (f"glue_stsb_{suffix}", [
          pair("A dog runs.", "A dog is running.", tf.constant(3.27, tf.float32)),
          pair("A.", "B.", tf.constant(5.0, tf.float32)),
          pair("C.", "D.", tf.constant(0.45, tf.float32))
      ], [("stsb sentence1: A dog runs. sentence2: A dog is running.", "3.2"),
          ("stsb sentence1: A. sentence2: B.", "5.0"), ("stsb sentence1: C. sentence2: D.", "0.4")]),
      (f"glue_mnli_{suffix}", [nli(2)], [("mnli hypothesis: A person eats. premise: A man eats.", "contradiction")]),
      (f"glue_mnli_matched_{suffix}", [nli(0)], [("mnli hypothesis: A person eats. premise: A man eats.", "entailment")
                                                ]),
      (f"glue_mnli_mismatched_{suffix}", [nli(1)], [("mnli hypothesis: A person eats. premise: A man eats.", "neutral")
                                                   ]),
      (f"glue_ax_{suffix}", [nli(-1)], [("mnli hypothesis: A person eats. premise: A man eats.", "<unk>")]),
      (f"glue_qnli_{suffix}",
       [{"question": _s("Where is Paris?"), "sentence": _s("Paris is in France."), "idx": _i(0),
         "label": _label(1)}], [("qnli question: Where is Paris? sentence: Paris is in France.", "not_entailment")]),
      (f"glue_rte_{suffix}", [pair("A cat sat.", "An animal sat.", _label(0))],
       [("rte sentence1: A cat sat. sentence2: An animal sat.", "entailment")]),
      (f"glue_wnli_{suffix}", [pair("The fish ate the worm. It was tasty.", "The worm was tasty.", _label(1))],
       [("wnli sentence1: The fish ate the worm. It was tasty. sentence2: The worm was tasty.", "entailment")]),
  ]


ALL_CASES = SUPER_GLUE_CASES + _glue_cases("v200") + _glue_cases("v002")


def _drop_first_word(text):
  return text.split(" ", 1)[1]


@pytest.mark.parametrize("name,raw,expected", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_exact_t5_strings(name, raw, expected):
  got = _text_stage(name, raw)
  assert [(ex["inputs"], ex["targets"]) for ex in got] == expected


@pytest.mark.parametrize("name,raw,expected", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_exact_taskless_strings(name, raw, expected):
  got = _text_stage("taskless_" + name, raw)
  assert [(ex["inputs"], ex["targets"]) for ex in got] == [(_drop_first_word(i), t) for i, t in expected]
  assert got[0]["inputs"] != expected[0][0]  # the first word really is gone


def test_metadata_kept_for_metrics():
  multirc = _text_stage("super_glue_multirc_v102", SUPER_GLUE_CASES[3][1])[0]
  assert (multirc["idx/paragraph"], multirc["idx/question"], multirc["idx/answer"]) == (3, 4, 5)
  record = _text_stage("super_glue_record_v102", SUPER_GLUE_CASES[4][1])
  assert [list(ex["answers"]) for ex in record] == [[b"He", b"Tom"]] * 2
  assert {(ex["idx/passage"], ex["idx/query"]) for ex in record} == {(2, 9)}
  wsc = _text_stage("super_glue_wsc_v102_simple_eval", SUPER_GLUE_CASES[11][1])
  assert [ex["label"] for ex in wsc] == [1, 0, 0]


def test_record_without_answers_gives_one_unknown_target():
  raw = {
      "passage": _s("P."), "query": _s("@placeholder q"), "entities": _s(["A"]), "answers": tf.constant([], tf.string),
      "idx": {"passage": _i(0), "query": _i(1)}
  }
  got = _text_stage("super_glue_record_v102", [raw])
  assert [(ex["inputs"], ex["targets"]) for ex in got] == [("record query: @placeholder q entities: A passage: P.",
                                                            "<unk>")]


def test_wsc_span_with_regex_characters_is_matched_literally():
  got = _text_stage("super_glue_wsc.fixed_v102", [_wsc_raw("(Tom)", 0, "he", 2, 1, text="(Tom) said he would come .")])
  assert got[0]["inputs"] == "wsc text: * (Tom) * said # he # would come ."


def test_wsc_simple_rejects_a_span2_index_that_misses_the_pronoun():
  with pytest.raises(tf.errors.InvalidArgumentError, match="span2_index"):
    _text_stage("super_glue_wsc_v102_simple_eval", [_wsc_raw("The trophy", 0, "it", 3, 1)])


# ------------------------------------------------------------------------------------------------- mocked TFDS


def _first_examples(name, n=2):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(sequence_length={"inputs": 48, "targets": 12}, split=task.splits[0], shuffle=False,
                        try_in_mem_cache=False)  # mocked TFDS has no split sizes
  return list(ds.take(n).as_numpy_iterator())


# One task per TFDS source and preprocessing chain: the taskless and `_v002` variants add nothing here that
# `test_exact_taskless_strings` (which covers every registered name) does not (tf.data tracing is ~1 s/task).
MOCKED_TASKS = [
    n for n in tasks.registered_task_names()
    if not n.startswith("taskless_") and "_v002" not in n and "wsc_v102_simple" not in n
]
MOCKED_TASKS += ["taskless_super_glue_record_v102", "taskless_glue_stsb_v200"]


def test_mocked_selection_covers_every_tfds_config():
  configs = {seqio.get_mixture_or_task(n).source.tfds_dataset.name.split(":")[0] for n in MOCKED_TASKS}
  assert len(configs) == 10 + 1 + 12  # SuperGLUE (wsc.fixed once), DPR, GLUE


@pytest.mark.parametrize("name", MOCKED_TASKS)
def test_task_yields_tokenized_examples_from_mocked_tfds(name):
  with tfds.testing.mock_data(num_examples=2):
    examples = _first_examples(name)
  assert len(examples) >= 2
  for ex in examples:
    for key, length in (("inputs", 48), ("targets", 12)):
      tokens = ex[key]
      assert tokens.dtype == np.int32 and 2 <= len(tokens) <= length, (key, tokens)
      assert tokens[-1] == 1 and np.all(tokens[:-1] > 1), (key, tokens)  # EOS last, and only there
    assert ex["inputs_pretokenized"] and ex["targets_pretokenized"]


def test_wsc_simple_tasks_on_mocked_tfds():
  raw = [_wsc_raw("The trophy", 0, "it", 10, 1), _wsc_raw("the brown suitcase", 6, "it", 10, 0)]

  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    return tf.data.Dataset.from_tensors(raw[0]).concatenate(tf.data.Dataset.from_tensors(raw[1]))

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    for prefix in ("", "taskless_"):
      train = _first_examples(f"{prefix}super_glue_wsc_v102_simple_train", 5)
      evaluation = _first_examples(f"{prefix}super_glue_wsc_v102_simple_eval", 5)
      assert [ex["targets_pretokenized"] for ex in train] == [b"The trophy"]
      assert [ex["targets_pretokenized"] for ex in evaluation] == [b"The trophy", b"the brown suitcase"]
      vocab = seqio.get_mixture_or_task(
          f"{prefix}super_glue_wsc_v102_simple_eval").output_features["targets"].vocabulary
      assert vocab.decode(evaluation[1]["targets"].tolist()) == "the brown suitcase"


def test_mixtures_read_their_tasks():
  with tfds.testing.mock_data(num_examples=3):
    for name in ("glue_mnli_and_dev_v200", "taskless_glue_mnli_and_dev_v200"):
      mixture = tasks.get_task(name)
      ds = mixture.get_dataset({"inputs": 32, "targets": 8}, split="validation", shuffle=False, num_epochs=1,
                               try_in_mem_cache=False)
      assert next(iter(ds))["targets"][-1] == 1


def test_mixture_members():
  names = {t.name for t in tasks.get_task("super_glue_v102_proportional").tasks}
  assert {
      "super_glue_boolq_v102", "super_glue_record_v102", "super_glue_wsc_v102_simple_train", "dpr_v001_simple",
      "super_glue_axb_v102"
  } <= names
  mixture = tasks.get_task("taskless_super_glue_v102")
  assert mixture.get_rate(seqio.get_mixture_or_task("taskless_super_glue_boolq_v102")) == 9427.0
  assert all(t.name.startswith("taskless_") for t in mixture.tasks)
  glue = {t.name for t in tasks.get_task("glue_v002").tasks}
  assert "glue_wnli_v002" not in glue and "glue_mnli_matched_v002" in glue and len(glue) == 11


def test_tfds_sources_and_splits():
  assert seqio.get_mixture_or_task("super_glue_boolq_v102").source.tfds_dataset.name == "super_glue/boolq:1.0.2"
  assert seqio.get_mixture_or_task("taskless_glue_sst2_v200").source.tfds_dataset.name == "glue/sst2:2.0.0"
  assert seqio.get_mixture_or_task("glue_sst2_v002").source.tfds_dataset.name == "glue/sst2:1.0.0"
  assert list(seqio.get_mixture_or_task("glue_mnli_v200").splits) == [
      "train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"
  ]
  assert list(seqio.get_mixture_or_task("super_glue_axg_v102").splits) == ["test"]
  features = seqio.get_mixture_or_task("super_glue_rte_v102").output_features
  assert features["inputs"].add_eos and features["targets"].add_eos
  assert features["targets"].vocabulary.vocab_size == 32100


# ----------------------------------------------------------------------------------------------- registry helpers


def test_register_all_tasks_is_idempotent():
  before = (len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names()))
  tasks.register_all_tasks()
  tasks.register_all_tasks()
  assert (len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names())) == before


@pytest.mark.parametrize(
    "name,labels",
    [
        ("super_glue_boolq_v102", ["False", "True"]),
        ("taskless_super_glue_cb_v102", ["entailment", "contradiction", "neutral"]),
        ("super_glue_copa_v102", ["choice1", "choice2"]),
        ("super_glue_axb_v102", ["entailment", "not_entailment"]),
        ("super_glue_wsc.fixed_v102", ["False", "True"]),
        ("glue_cola_v200", ["unacceptable", "acceptable"]),
        ("taskless_glue_qqp_v002", ["not_duplicate", "duplicate"]),
        ("glue_wnli_v200", ["not_entailment", "entailment"]),
        ("glue_mnli_and_dev_v200", ["entailment", "neutral", "contradiction"]),  # a mixture of one label set
        ("super_glue_record_v102", None),
        ("glue_stsb_v200", None),
        ("super_glue_wsc_v102_simple_eval", None),
        ("super_glue_v102", None),
    ])
def test_label_sets(name, labels):
  assert tasks.get_label_set(name) == labels


def test_label_set_matches_the_targets_the_task_produces():
  for name, _, expected in ALL_CASES:
    labels = tasks.get_label_set(name)
    if labels is not None:
      assert {t for _, t in expected} - {"<unk>"} <= set(labels), name


def test_register_label_set_for_a_custom_task():
  name = "jaxprompt_test_custom_labels"
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(lambda split, shuffle_files: None, ["train"]),
                           preprocessors=[], output_features=tasks.default_output_features())
  tasks.register_label_set(name, ["no", "yes"])
  assert tasks.get_label_set(name) == ["no", "yes"]


def test_label_set_of_a_file_task(tmp_path):
  from jaxprompt.data import custom  # pylint: disable=g-import-not-at-top
  path = tmp_path / "train.tsv"
  path.write_text("inputs\ttargets\nis it good\tyes\nis it bad\tno\n")
  custom.register_file_task("jaxprompt_test_file_labels", train=str(path), label_set=("no", "yes"), overwrite=True)
  try:
    assert tasks.get_label_set("jaxprompt_test_file_labels") == ["no", "yes"]
  finally:
    custom.unregister_file_task("jaxprompt_test_file_labels")


def test_unknown_task_suggests_close_names():
  with pytest.raises(DataError, match=r"unknown task or mixture 'super_glue_boolq_v12'.*'super_glue_boolq_v102'"):
    tasks.get_task("super_glue_boolq_v12")
  with pytest.raises(DataError, match="taskless_glue_sst2_v200"):
    tasks.get_label_set("taskless_glue_sst_v200")
  with pytest.raises(DataError, match="no similar name"):
    tasks.get_task("zzzzzzzz")


def test_check_nonempty():
  with tfds.testing.mock_data(num_examples=2):
    tasks.check_nonempty("super_glue_boolq_v102", "validation")
    tasks.check_nonempty("taskless_glue_mnli_and_dev_v200", "validation")
  with tfds.testing.mock_data(num_examples=0):
    with pytest.raises(DataError, match=r"task 'glue_sst2_v200' split 'train' is empty"):
      tasks.check_nonempty("glue_sst2_v200", "train")
  with pytest.raises(DataError, match=r"'super_glue_axb_v102' has no split 'train'.*\['test'\]"):
    tasks.check_nonempty("super_glue_axb_v102", "train")
  with pytest.raises(DataError, match="unknown task"):
    tasks.check_nonempty("glue_sst3_v200", "train")


def test_check_nonempty_after_filtering():
  # The WSC training task keeps only correct referents: all-wrong data leaves nothing.
  raw = _wsc_raw("the brown suitcase", 6, "it", 10, 0)
  with tfds.testing.mock_data(as_dataset_fn=lambda *a, **k: tf.data.Dataset.from_tensors(raw)):
    with pytest.raises(DataError, match=r"'super_glue_wsc_v102_simple_train' split 'train' is empty"):
      tasks.check_nonempty("super_glue_wsc_v102_simple_train", "train")


# ------------------------------------------------------------------------------------------------- postprocessors


def test_label_postprocessors():
  post = seqio.get_mixture_or_task("super_glue_cb_v102").postprocess_fn
  assert [post(t, example={}, is_target=False) for t in ("entailment", b"neutral", "maybe")] == [0, 2, -1]
  assert seqio.get_mixture_or_task("glue_stsb_v200").postprocess_fn("3.4", example={}, is_target=True) == 3.4
  assert postprocessors.string_to_float("n/a") == -1.0


def test_multirc_and_record_postprocessors():
  example = {"idx/question": 4, "idx/passage": np.int32(2), "idx/query": np.int32(9), "answers": [b"He", b"Tom"]}
  assert postprocessors.multirc("True", example=example, is_target=True) == {"value": 1, "group": 4}
  assert postprocessors.multirc("Yes", example=example, is_target=False) == {"value": -1}
  assert postprocessors.record("Tom", example=example, is_target=False) == {"value": "Tom"}
  assert postprocessors.record(b"He", example=example, is_target=True) == {"value": ["He", "Tom"], "group": (2, 9)}


@pytest.mark.parametrize("prediction,expected", [
    ("the trophy", 1),
    ("Trophy", 1),
    ("the big trophy", 1),
    ("suitcase", 0),
    ("", -1),
    ("the", -1),
    ("trophy's", 0),
])
def test_wsc_simple_postprocessor(prediction, expected):
  example = {"targets_pretokenized": b"The trophy", "label": np.int64(1)}
  assert postprocessors.wsc_simple(prediction, example=example, is_target=False) == expected
  assert postprocessors.wsc_simple("The trophy", example=example, is_target=True) == 1


def test_task_metrics_score_postprocessed_outputs():
  task = seqio.get_mixture_or_task("super_glue_multirc_v102")
  examples = [{"idx/question": q} for q in (0, 0, 1)]
  targets = [task.postprocess_fn(t, example=e, is_target=True) for t, e in zip(["True", "False", "True"], examples)]
  predictions = [task.postprocess_fn(p, example=e) for p, e in zip(["True", "True", "True"], examples)]
  scores = {}
  for fn in task.metric_fns:
    scores.update(fn(targets, predictions))
  assert scores["exact_match"] == pytest.approx(50.0)  # question 0 has a wrong answer, question 1 is right
  assert scores["f1"] == pytest.approx(100 * 2 * 2 / (2 + 3))
