"""Export and serving: what happens to a checkpoint after pruning and distillation.

- :mod:`.hub`: a model card (lineage, architecture table, recipe, evaluation) and the upload to the
  Hugging Face Hub (``minitron publish``).
- :mod:`.fp8`: NVIDIA ModelOpt FP8 post-training quantization to a checkpoint that TensorRT-LLM
  (>= 1.2) and vLLM load directly (``minitron export fp8``).
- :mod:`.trtllm`: synthetic datasets and the exact ``trtllm-bench`` commands of the paper's runtime
  comparison (``minitron export trtllm``); they run where TensorRT-LLM and a GPU are.
- :mod:`.vllm`: vLLM's OpenAI-compatible server for a checkpoint (``minitron serve``).

Every entry point checks its input (:func:`minitron_hf.model_files.check_checkpoint`) before any heavy work.
"""

from __future__ import annotations

# the checks live in the base layer (evaluation uses them too); re-exported for the export modules
from ..model_files import NotACheckpointError, check_checkpoint, is_fp8_checkpoint  # noqa: F401
