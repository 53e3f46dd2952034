"""What every data module shares: the embedded default's name, the split names, the file types read, the name of a
prepared folder's manifest, and the error class. It imports nothing else of the package, so that the modules that
list files (:mod:`.local`), read documents (:mod:`.sources`) and check sources (:mod:`.checks`) import downward."""

from __future__ import annotations

from ..errors import MinitronError

DEFAULT_DATA = "python-docs"
SPLITS = ("train", "validation", "calibration")
LOCAL_EXTENSIONS = (".json", ".jsonl", ".parquet", ".txt")
MANIFEST = "manifest.json"


class DataError(MinitronError):
    """Data that cannot be used; the message names the field, the value and what is allowed."""
