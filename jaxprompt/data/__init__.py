"""Data: seqio tasks, metrics, T5's vocabulary and the user's own TSV / JSONL tasks.

Importing this package is cheap on purpose: TensorFlow and seqio load only when a submodule that needs them
is imported (`jaxprompt.data.tasks`, `jaxprompt.data.text_task_seqio`) or a function reads a seqio task; text
tasks (`jaxprompt.data.text_tasks`: the user's files, the demo's) are read and scored without them.
"""
