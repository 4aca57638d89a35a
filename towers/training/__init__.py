"""Layer 4, training: batch inputs, one optimisation step, the one epoch loop, checkpoints.

- ``inputs`` — :class:`~towers.training.inputs.TrainingContext`: a batch's ids → tower inputs.
- ``tables`` — encoded feature tables as tensors, CSR row gathers.
- ``steps`` — batches, optimizer, schedule, the loss of a batch, one epoch, validation metrics.
- ``loop`` — the epoch loop (train, validate, early stop, refit) every trainer calls.
- ``checkpoint`` — model, optimizer, loop state and config in one folder.
"""
