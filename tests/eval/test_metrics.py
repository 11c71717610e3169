import numpy as np
import pytest
import torch

from prvr.data.layout import DatasetLayout, video_id_of
from prvr.eval.evaluator import evaluate
from prvr.eval.metrics import ranks_from_scores, recalls
from prvr.models import build_model
from tests.conftest import tiny_model_config


def test_golden_recalls(golden):
    z, meta = golden
    position = {v: i for i, v in enumerate(meta["metric_video_ids"])}
    gt = torch.tensor([position[video_id_of(q)] for q in meta["metric_query_ids"]])
    got = recalls(ranks_from_scores(torch.from_numpy(z["metric/scores"]), gt))
    np.testing.assert_allclose([got[k] for k in ("R@1", "R@5", "R@10", "R@100")], z["metric/recalls"], atol=1e-9)
    assert got["SumR"] == pytest.approx(float(z["metric/recalls"].sum()))


def test_ranks_by_hand():
    s = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.4, 0.4, 0.4]])
    assert ranks_from_scores(s, torch.tensor([0, 0, 2])).tolist() == [1, 2, 1]  # exact ties in the query's favour


@pytest.mark.parametrize("bsz", [1, 3, 50])
def test_evaluate_independent_of_batching(tiny_data, bsz):
    """Batches of a single query or video (the original's squeeze crash) give the same numbers."""
    model = build_model(tiny_model_config()).eval()
    layout = DatasetLayout(tiny_data, "charades")
    ref = evaluate(model, layout, "test", batch_videos=100, batch_queries=100, keep_scores=True)
    got = evaluate(model, layout, "test", batch_videos=bsz, batch_queries=bsz, keep_scores=True)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1.2e-6, rtol=0)  # measured 1.2e-7
    assert got.metrics == pytest.approx(ref.metrics)
