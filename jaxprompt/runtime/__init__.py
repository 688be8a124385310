"""What training, evaluation and inference share, below `train/` and `eval/` (neither imports the other).

  state     the one TrainState (the trainable tree, the optimizer state, the step)
  optim     optax optimizers and schedules (gin configurables under module `jaxprompt`)
  step      pure train / eval steps over the method's trainable tree only
  compiled  the one jit under the mesh, with explicit shardings (ShardedSteps)
  runtime   network + method + mesh + weights, built once (Runtime, build_runtime)
"""
