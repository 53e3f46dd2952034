"""Mistral (Mistral 7B, Mistral-NeMo 12B: ``model_type: mistral``; NeMo's head_dim 128 with hidden 5120 is an
explicit ``head_dim``). Sliding-window attention is a config field the pruner keeps as it is."""

from .base import DenseDecoder


class Mistral(DenseDecoder):
    model_type = "mistral"
    config_fields = DenseDecoder.config_fields + ("sliding_window",)


FAMILY = Mistral()
