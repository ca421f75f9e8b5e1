"""From a composed config to a run: schemas and validation, recipe identity, the run context,
the training job, checkpoint import, DDP."""
