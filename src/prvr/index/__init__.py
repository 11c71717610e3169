from prvr.index.build import build_index
from prvr.index.search import Hit, Retriever

__all__ = ["Hit", "Retriever", "build_index"]
