"""Evaluation: LM Evaluation Harness tasks on in-memory models and checkpoints (``harness``)."""
