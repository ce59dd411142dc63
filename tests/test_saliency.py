"""Saliency on a model whose input gradient is known in closed form, and batch independence."""
import pytest
import torch
from torch import nn

from gradloc.attribution.saliency import METHODS, class_mask, make_method, reduce_channels


class Linear(nn.Module):
    """f(x) = W flatten(x): d f_c / d x = W_c, reshaped to the image."""

    def __init__(self, c=10, shape=(3, 8, 8)):
        super().__init__()
        torch.manual_seed(0)
        self.shape = shape
        self.fc = nn.Linear(int(torch.tensor(shape).prod()), c, bias=False)
        self.requires_grad_(False)

    def forward(self, x):
        return self.fc(x.flatten(1))

    def w(self, c):
        return self.fc.weight[c].view(self.shape)


@pytest.fixture
def lin():
    return Linear().eval()


def test_logit_gradient_is_the_weight_row(lin):
    x = torch.randn(4, 3, 8, 8)
    targets = torch.tensor([0, 3, 3, 9])
    maps, logits = make_method("gradient", lin, output="logits")(x, targets)
    for i, c in enumerate(targets):
        torch.testing.assert_close(maps[i], lin.w(c).abs().amax(0))
    torch.testing.assert_close(logits, lin(x))


def test_mask_with_two_classes_sums_their_gradients(lin):
    x = torch.randn(2, 3, 8, 8)
    mask = class_mask(torch.tensor([1, 2]), 10) + class_mask(torch.tensor([4, 4]), 10)
    maps, _ = make_method("gradient", lin, output="logits", reduce="sum")(x, mask)
    torch.testing.assert_close(maps[0], (lin.w(1) + lin.w(4)).abs().sum(0))
    torch.testing.assert_close(maps[1], (lin.w(2) + lin.w(4)).abs().sum(0))


def test_positive_only_keeps_the_sign(lin):
    x = torch.randn(1, 3, 8, 8)
    maps, _ = make_method("gradient-positive", lin, output="logits")(x, torch.tensor([5]))
    torch.testing.assert_close(maps[0], lin.w(5).clamp(min=0).amax(0))
    neg, _ = make_method("gradient", lin, output="logits")(x, torch.tensor([5]))
    assert not torch.allclose(maps[0], neg[0])  # the sign matters for this W


def test_softmax_output_gradient_closed_form(lin):
    x = torch.randn(3, 3, 8, 8)
    c = torch.tensor([2, 7, 7])
    maps, logits = make_method("gradient", lin, output="probs", reduce="sum")(x, c)
    p = logits.softmax(1)
    w = lin.fc.weight.view(10, 3, 8, 8)
    for i in range(3):
        expected = p[i, c[i]] * (w[c[i]] - (p[i].view(10, 1, 1, 1) * w).sum(0))
        torch.testing.assert_close(maps[i], expected.abs().sum(0))


def test_default_target_is_predicted_class(lin):
    x = torch.randn(5, 3, 8, 8)
    maps, logits = make_method("gradient", lin, output="logits")(x)
    pred = logits.argmax(1)
    for i in range(5):
        torch.testing.assert_close(maps[i], lin.w(pred[i]).abs().amax(0))


def test_grad_x_input_and_integrated_gradients_on_linear_model(lin):
    x = torch.randn(2, 3, 8, 8)
    c = torch.tensor([1, 6])
    gxi, _ = make_method("grad-x-input", lin, output="logits", reduce="sum")(x, c)
    ig, _ = make_method("integrated-gradients", lin, output="logits", reduce="sum", steps=4)(x, c)
    for i in range(2):
        expected = (lin.w(c[i]) * x[i]).abs().sum(0)
        torch.testing.assert_close(gxi[i], expected)
        torch.testing.assert_close(ig[i], expected)  # IG of a linear model = grad x input


def test_one_backward_pass_for_the_batch(lin, monkeypatch):
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    make_method("gradient", lin)(torch.randn(16, 3, 8, 8))
    make_method("smoothgrad", lin, samples=8)(torch.randn(4, 3, 8, 8))
    assert len(calls) == 2


@pytest.mark.parametrize("name", list(METHODS))
def test_map_does_not_depend_on_batch_neighbours(random_wrn, name):
    torch.manual_seed(3)
    x = torch.randn(4, 3, 32, 32)
    kw = {"patches": (8, 16)} if name == "occlusion" else {}
    method = make_method(name, random_wrn, **kw)
    targets = torch.tensor([1, 2, 3, 4])
    together, logits = method(x, targets)
    alone, logit0 = method(x[2:3], targets[2:3])
    assert together.shape == (4, 32, 32) and (together >= 0).all()
    assert torch.isfinite(together).all()
    # SmoothGrad draws noise for the whole batch, so only deterministic methods match exactly.
    if name not in ("smoothgrad", "smoothgrad-sq", "vargrad"):
        torch.testing.assert_close(together[2], alone[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits[2], logit0[0], rtol=1e-4, atol=1e-5)


def test_channel_reductions():
    g = torch.tensor([[[[1.0]], [[-3.0]], [[2.0]]]])
    assert reduce_channels(g, "max").item() == 3.0
    assert reduce_channels(g, "sum").item() == 6.0
    assert reduce_channels(g, "max", positive=True).item() == 2.0
    assert reduce_channels(g, "l2").item() == pytest.approx(14 ** 0.5)


def test_unknown_names_are_clear_errors(random_wrn):
    with pytest.raises(ValueError, match="unknown method"):
        make_method("nope", random_wrn)
    with pytest.raises(ValueError, match="no layer"):
        make_method("layer", random_wrn, layer="block9")
