"""The sweep's memo of crop probabilities gives exactly the scores of the generator it wraps."""
import importlib.util

import torch

from gradloc import ProposalGenerator

from .conftest import ROOT


def load_sweep():
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memo_crop_scores_matches_and_skips_repeats(random_wrn):
    gen = ProposalGenerator(random_wrn, device="cpu")
    calls = []
    direct = gen.rescorer.crop_scores

    def counting(images, boxes, classes):
        calls.append(sum(map(len, boxes)))
        return direct(images, boxes, classes)

    gen.rescorer.crop_scores = counting
    memo = load_sweep().MemoCropScores(gen)
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=g) for _ in range(2)]
    a = torch.tensor([[0.0, 0, 30, 20], [10, 5, 60, 45], [0, 0, 30, 20]])  # a repeat within the call
    b = torch.tensor([[5.0, 5, 25, 25]])
    first = memo(images, [a, b], [3, 5])
    assert calls == [3] and memo.asked == 4
    expected = direct(images, [a, b], [3, 5])
    for got, want in zip(first, expected):
        torch.testing.assert_close(got, want)
    again = memo([images[0], images[0]], [a[:2], a[:1]], [3, 4])  # both seen for class 3; new for class 4
    assert calls == [3, 1] and memo.asked == 7
    torch.testing.assert_close(again[0], expected[0][:2])
    torch.testing.assert_close(again[1], direct([images[0]], [a[:1]], [4])[0])
    empty = memo([images[1]], [torch.zeros(0, 4)], [1])
    assert calls == [3, 1] and len(empty[0]) == 0
