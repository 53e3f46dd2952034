"""Whether a model and a tokenizer can be used together: every token id the tokenizer produces needs an embedding
row (and an LM-head row) in the model.

A model with fewer vocabulary rows than its tokenizer has ids (a checkpoint paired with another model's tokenizer,
a vocabulary trimmed by hand) fails deep inside the first forward pass with an ``IndexError`` from the embedding.
:func:`check_vocab` says so before any weights load or any data is tokenized, naming both sizes and the model.
The opposite is fine: models often pad their embedding matrix beyond the tokenizer (e.g. 128256 rows for 128000
tokens), and those extra rows are simply never looked up.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MinitronError


class VocabularyMismatchError(MinitronError):
    """The tokenizer produces token ids the model has no embedding row for."""


def tokenizer_id_count(tokenizer) -> int:
    """How many ids the tokenizer can produce: one more than its largest id, added tokens included (``len(tok)``
    counts tokens, and an added token may sit beyond a gap)."""
    n = len(tokenizer)
    try:
        ids = tokenizer.get_vocab().values()
    except (AttributeError, NotImplementedError, TypeError):
        return n
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    top = max([*ids, *added.keys()], default=n - 1)
    return max(n, int(top) + 1)


def model_vocab_rows(model_or_config) -> int | None:
    """The model's vocabulary rows: its input embedding's rows when loaded, else ``vocab_size`` of its (text)
    config; a path is read as a checkpoint folder (config only, no weights). None when unknown."""
    if isinstance(model_or_config, (str, Path)):
        from transformers import AutoConfig  # seconds at import; minitron_hf.loading (and data) import this module

        model_or_config = AutoConfig.from_pretrained(model_or_config)
    get = getattr(model_or_config, "get_input_embeddings", None)
    if callable(get):
        emb = get()
        if emb is not None and getattr(emb, "num_embeddings", None):
            return int(emb.num_embeddings)
    config = getattr(model_or_config, "config", model_or_config)
    rows = getattr(config, "vocab_size", None)
    if rows is None and hasattr(config, "get_text_config"):
        rows = getattr(config.get_text_config(), "vocab_size", None)
    return None if rows is None else int(rows)


def check_vocab(model_or_config, tokenizer, model_name, tokenizer_name=None, error=VocabularyMismatchError) -> int:
    """Raise ``error`` (a :class:`~minitron_hf.errors.MinitronError`) when ``tokenizer`` produces ids beyond the
    model's vocabulary rows; returns the number of ids the tokenizer produces. ``model_or_config``: a loaded model,
    its config, or its checkpoint folder (only config.json is read)."""
    ids = tokenizer_id_count(tokenizer)
    rows = model_vocab_rows(model_or_config)
    if rows is not None and ids > rows:
        whose = f"the tokenizer of {str(tokenizer_name)!r}" if tokenizer_name is not None else "its tokenizer"
        raise error(f"model={str(model_name)!r} has {rows} vocabulary rows (vocab_size={rows}) but {whose} produces "
                    f"token ids up to {ids - 1} ({ids} ids): every id needs an embedding row, so tokenizer and model "
                    f"do not belong together; use the model's own tokenizer, or a model with vocab_size >= {ids}")
    return ids
