"""Data: seqio tasks, metrics, T5's vocabulary and the user's own TSV / JSONL tasks.

Importing this package is cheap on purpose: TensorFlow and seqio load only when a submodule that needs them
is imported (`jaxprompt.data.vocab`, `jaxprompt.data.custom`, `jaxprompt.data.tasks`).
"""
