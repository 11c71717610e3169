"""prvr: partially relevant video retrieval (DreamPRVR), faithful and fast."""

import os as _os

# Large CPU tensors on transparent huge pages: PyTorch reads this at its first allocation, so it is set
# before torch is imported (unless the user decided otherwise). See prvr.runtime for the other half.
if not _os.environ.get("PRVR_NO_MALLOC_TUNING"):
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"


def __getattr__(name):  # `prvr.Retriever` without importing torch at package import
    if name == "Retriever":
        from prvr.index.search import Retriever

        return Retriever
    raise AttributeError(name)
