"""The bottom layer beside `jaxprompt.errors`: file formats, file keys and argument checks every layer shares.

  files              local or remote (gs://) files: plain file calls locally, so TensorFlow loads only for remote paths
  npy_io             the safe `.npy` / `.npz` reader and writer (no unpickling, atomic writes, local or gs://)
  keys               tree keys and file names defined once (PROMPT_KEY, PROMPT_FILE)
  fingerprint_files  the frozen-model fingerprint's JSON files (sidecars and checkpoint step files)
  validation         entry-point argument checks, each error naming the gin macro to set; what each kind must be
  macros             the gin macro table: each macro's kind, meaning and default file (checked after parsing)

Nothing here imports another jaxprompt package but `jaxprompt.errors`, and importing it loads no JAX.
"""
