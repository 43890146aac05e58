"""The fixed evaluation protocol (frozen): a name kept for readers; the one implementation is the
numpy scorer in `model.scoring` (the supervisor scores every run from its embeddings, outside the
sandbox; see its docstring for the protocol and the tie rule). Folds: `model.data.make_folds`."""
from __future__ import annotations

from .scoring import DIRECTION_KEYS, direction_metrics, retrieval_metrics, summarize, tie_ranks

__all__ = ["DIRECTION_KEYS", "direction_metrics", "retrieval_metrics", "summarize", "tie_ranks"]
