"""int8 forward passes (gradloc.models.int8): the shipped weights' int8 copies against their fp32
selves, the ranges shipped beside them, and what other models get instead."""
import numpy as np
import pytest
import torch
from PIL import Image

import gradloc
from gradloc.attribution.saliency import make_method
from gradloc.cli import main
from gradloc.models import int8
from gradloc.models.classifier import CIFAR10
from gradloc.models.runtime import Runtime
from gradloc.models.wrn import WideResNet, default_weights_path, extent_judge_path, wide_resnet

from .conftest import SAMPLES

pytestmark = pytest.mark.skipif(int8.fx_api() is None, reason="this PyTorch has no FX quantization")


def cifar_samples() -> torch.Tensor:
    files = sorted((SAMPLES / "cifar10").glob("*.png"))
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


@pytest.mark.parametrize("weights", [default_weights_path(), extent_judge_path()], ids=["classifier", "judge"])
def test_shipped_ranges_fit_the_shipped_weights_and_int8_agrees_with_fp32(weights):
    """Each shipped WRN has ranges observed on its exact weights (a retrained file without new
    ranges would fall back to fp32), and its int8 copy gives the fp32 class probabilities of
    the CIFAR-10 samples within a few points, each sample's class first."""
    model = wide_resnet(16, 4, weights=weights)
    ranges = torch.load(weights.with_name(weights.name + int8.RANGES_SUFFIX), weights_only=True)
    assert ranges["fingerprint"] == int8.fingerprint(model)
    copy, why = int8.int8_copy(model)
    assert copy is not None, why
    x = CIFAR10.normalize(cifar_samples())
    with torch.no_grad():
        p32, p8 = model(x).softmax(1), copy(x).softmax(1)
    assert (p8.argmax(1) == p32.argmax(1)).all()
    assert (p8 - p32).abs().max() < 0.1


def test_int8_copy_has_gradients_at_its_features_and_maps_like_fp32():
    """The pyramid's gradient x activation starts at the final features, which the int8 copy
    computes in float with gradients: its map of a photograph at 128 px matches the fp32 map."""
    model = wide_resnet(16, 4)
    copy, _ = int8.int8_copy(model)
    img = torch.from_numpy(np.array(Image.open(SAMPLES / "chelsea_cat.png").convert("RGB").resize((128, 96))))
    x = CIFAR10.normalize(img.permute(2, 0, 1)[None].contiguous())
    cat = torch.tensor([CIFAR10.classes.index("cat")])
    m32, _ = make_method("grad-x-activation", model, layer="relu")(x, cat)
    m8, _ = make_method("grad-x-activation", copy, layer="relu")(x, cat)
    assert m8.shape == m32.shape and float(m8.max()) > 0
    corr = np.corrcoef(m8.flatten().numpy(), m32.flatten().numpy())[0, 1]
    assert corr > 0.9


def test_ranges_round_trip_exactly(random_wrn):
    """Shipping the observed ranges and converting from them gives the same int8 network as
    converting right after observing."""
    wrn = WideResNet(16, 1).eval().requires_grad_(False)
    observed = int8.prepared_body(wrn)
    torch.manual_seed(0)
    with torch.no_grad():
        observed(torch.randn(16, 3, 32, 32))
    direct = int8.convert(observed, wrn)
    shipped = int8.prepared_body(wrn)
    shipped.load_state_dict(int8.observer_state(observed), strict=False)
    x = torch.randn(4, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(int8.convert(shipped, wrn)(x), direct(x))


def test_other_weights_run_fp32_under_auto_and_int8_asked_is_one_line(random_wrn, monkeypatch, capsys,
                                                                      random_weights_file):
    import gradloc.models.wrn as wrn_module
    copy, why = int8.int8_copy(random_wrn)
    assert copy is None and "shipped weights" in why
    monkeypatch.setattr(wrn_module, "cpu_has_native_bf16", lambda: False)  # auto asks for int8
    assert Runtime.build(random_wrn, device="cpu").precision == "fp32"
    with pytest.raises(ValueError, match="^--precision int8: .*shipped weights"):
        Runtime.build(random_wrn, device="cpu", precision="int8")
    assert main(["localize", str(SAMPLES / "chelsea_cat.png"), "--weights", str(random_weights_file),
                 "--precision", "int8", "-o", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int8" in err[0]


def test_int8_runtime_runs_the_pipeline_and_keeps_gradients_in_fp32():
    """Under int8 the shipped classifier's forward passes (and the judge's) are the int8 copies,
    while the 32x32 view's input-gradient map is the fp32 network's; a photograph gets valid
    boxes, and the same top class as in fp32."""
    gen = gradloc.ProposalGenerator.pretrained(precision="int8")
    ref = gradloc.ProposalGenerator.pretrained(precision="fp32")
    assert gen.precision == "int8" and isinstance(gen.runtime.forward_model, int8.Int8WideResNet)
    assert isinstance(gen.runtime.model, WideResNet) and isinstance(gen.judge_net.forward_model, int8.Int8WideResNet)
    out, base = gen(SAMPLES / "chelsea_cat.png")[0], ref(SAMPLES / "chelsea_cat.png")[0]
    assert int(out["probs"].argmax()) == int(base["probs"].argmax())
    assert len(out["boxes"]) and (out["boxes"][:, 2:] > out["boxes"][:, :2]).all()
    with pytest.raises(ValueError, match="CPU"):
        gradloc.models.wrn.resolve_precision("int8", "cuda")
