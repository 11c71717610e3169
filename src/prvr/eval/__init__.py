from prvr.eval.metrics import ranks_from_scores, recalls

__all__ = ["ranks_from_scores", "recalls"]
