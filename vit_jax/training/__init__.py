"""Training: one program built from a config, its pure step, and the loop that runs it.

program     TrainProgram.from_config: mesh, model, optimizer, shardings, init, jitted steps, evals
step        the train step (state, batch) -> (state, metrics)
state       the train-state pytree
loop        train_and_evaluate: restore or init, steps, logs, evals, checkpoints
evaluation  evaluate_checkpoint: evals of a saved checkpoint
optimizers, schedules, losses, sharding, checks, metrics: the parts the program is made of
"""
