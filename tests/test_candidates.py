"""Typed candidates (what selection chose from) and the oracle CorLoc that tells generation
failures from selection failures."""
import pytest
import torch
from torchvision.ops import box_iou

from gradloc.discovery.results import Prediction
from gradloc import ProposalGenerator
from gradloc.data.annotations import AnnotatedImage, AnnotatedSet
from gradloc.evaluation.metrics import misses, oracle_corloc, score
from gradloc.evaluation.report import misses_table, oracle_table


def img(file, w, h, boxes, labels):
    return AnnotatedImage(file, w, h, torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                          torch.tensor(labels), torch.zeros(len(labels), dtype=torch.bool))


def test_oracle_counts_a_pair_whose_right_box_was_generated_but_not_chosen():
    # a: chosen box hits; b: a candidate hits, the chosen one misses; c: no candidate hits.
    # c is medium (40x40 box), a and b large.
    ds = AnnotatedSet([img("a", 200, 200, [[0, 0, 100, 100]], [3]),
                       img("b", 200, 200, [[100, 100, 200, 200]], [3]),
                       img("c", 200, 200, [[0, 0, 40, 40]], [5])])
    hit_a, hit_b, miss = [[0.0, 0, 100, 100]], [[100.0, 100, 200, 200]], [[150.0, 150, 200, 200]]
    preds = [Prediction(boxes={3: torch.tensor(hit_a)}, candidates={3: torch.tensor(miss + hit_a)}),
             Prediction(boxes={3: torch.tensor(miss)}, candidates={3: torch.tensor(miss + hit_b)}),
             Prediction(boxes={5: torch.tensor(miss)}, candidates={5: torch.tensor(miss)})]
    o = oracle_corloc(ds, preds)
    assert o["oracle"] == pytest.approx(2 / 3)
    assert o["chosen_given_oracle"] == pytest.approx(1 / 2)
    assert o["oracle_by_size"] == {"small": None, "medium": 0.0, "large": 1.0}
    assert o["chosen_given_oracle_by_size"]["large"] == pytest.approx(1 / 2)
    assert o["chosen_given_oracle_by_size"]["medium"] is None  # no oracle hit to keep
    # baselines carry no candidates: no oracle, and no row in the report's table
    assert oracle_corloc(ds, [Prediction(boxes=p.boxes) for p in preds]) is None
    results = {"m": score(ds, preds), "baseline": score(ds, [Prediction(boxes=p.boxes) for p in preds])}
    table = oracle_table(results)
    assert "| m |" in table and "baseline" not in table and "66.7" in table


def test_misses_are_told_apart_as_too_large_part_or_elsewhere():
    # every image holds one 100x100 cat at (50, 50); the top-1 boxes: a hit, the object with a
    # wide margin, its head, a box beside it, a box twice its size half on it, and none at all
    obj = [[50, 50, 150, 150]]
    tops = {"hit": [[55.0, 50, 150, 150]], "wide": [[0.0, 0, 200, 200]], "head": [[50.0, 50, 90, 90]],
            "beside": [[160.0, 50, 200, 150]], "shifted": [[100.0, 50, 250, 200]], "nothing": []}
    ds = AnnotatedSet([img(k, 300, 300, obj, [3]) for k in tops])
    preds = [Prediction(boxes={3: torch.tensor(b).view(-1, 4)}) for b in tops.values()]
    m = misses(ds, preds)
    # "shifted" is larger than the cat and holds half of it: too large, as "wide" is
    assert m["n"] == 5
    assert m["share"] == pytest.approx({"too large": 2 / 5, "part": 1 / 5, "elsewhere": 1 / 5, "none": 1 / 5})
    assert m["by_size"]["large"]["n"] == 5 and m["by_size"]["medium"] == {
        "n": 0, "share": {"too large": None, "part": None, "elsewhere": None, "none": None}}
    table = misses_table({"m": score(ds, preds)})
    assert "| m | 5 | 40.0 | 20.0 | 20.0 | 20.0 |" in table and "40.0 / 20.0 / 20.0 (5)" in table


@pytest.mark.parametrize("side", [32, 320])  # the whole-image plan and the pyramid
def test_each_row_keeps_its_candidates_and_the_unfused_best_is_one_of_them(random_wrn, side):
    gen = ProposalGenerator(random_wrn, device="cpu", precision="fp32", fuse=0.0, top_k=None)
    rgb = torch.randint(0, 256, (3, side, side), dtype=torch.uint8)
    res = gen(rgb, classes=[["cat", "dog"]])[0]
    assert len(res["candidates"]) == 2
    for c, cand in zip(res["map_classes"].tolist(), res["candidates"]):
        m = len(cand.boxes)
        assert cand.scores.shape == (m,) and cand.evidence.shape == (m, 2) and len(cand.kinds) == m
        assert set(cand.kinds) <= {"component", "moment", "peak", "frame"}
        assert cand.sides.shape == (m,) and int(cand.sides.min()) == 32
        # scores are the crop's probability minus the blanked view's
        assert torch.allclose(cand.scores, cand.evidence[:, 0] - cand.evidence[:, 1])
        assert (cand.boxes[:, :2] >= 0).all() and (cand.boxes[:, 2] <= side).all() and (cand.boxes[:, 3] <= side).all()
        top = res["boxes"][res["labels"] == c][0]
        assert box_iou(top[None], cand.boxes).max() > 0.999
        # the best box scores the image's probability of the class (scores that compare across images)
        assert float(res["scores"][res["labels"] == c][0]) == pytest.approx(float(res["probs"][c]))
    if side > 32:  # photographs: every pyramid size contributes, and peak regions are candidates
        assert len(set(res["candidates"][0].sides.tolist())) > 1 and "peak" in res["candidates"][0].kinds
