"""The Python API: one object from images to detection-style dicts."""
import numpy as np
import pytest
import torch

from gradloc import ProposalGenerator
from gradloc.models.classes import parse_class_spec


@pytest.fixture(scope="module")
def gen(random_wrn):
    return ProposalGenerator(random_wrn, device="cpu", batch_size=3)


def test_outputs_like_torchvision_detection(gen):
    imgs = [np.random.randint(0, 255, (h, w, 3), np.uint8) for h, w in [(45, 77), (32, 32), (100, 7), (9, 300)]]
    out = gen(imgs)
    assert len(out) == 4
    for o, im in zip(out, imgs):
        h, w = im.shape[:2]
        assert o["boxes"].dtype == torch.float32 and o["boxes"].shape[1] == 4
        assert len(o["boxes"]) == len(o["scores"]) == len(o["labels"]) >= 1
        assert (o["boxes"][:, 0] >= 0).all() and (o["boxes"][:, 2] <= w).all()
        assert (o["boxes"][:, 1] >= 0).all() and (o["boxes"][:, 3] <= h).all()
        assert (o["boxes"][:, 2] > o["boxes"][:, 0]).all()
        assert torch.all(o["scores"][:-1] >= o["scores"][1:])
        assert o["probs"].shape == (10,) and o["probs"].sum().item() == pytest.approx(1, abs=1e-5)
        assert (o["labels"] == o["probs"].argmax()).all()  # default: the predicted class
        assert o["maps"].shape == (1, 32, 32) and 0 < o["masks"].sum() < 1024
        # default threshold: the fewest pixels carrying half of the (smoothed) map's mass
        kept = o["maps"][o["masks"]].sum() / o["maps"].sum()
        assert 0.5 - 1e-4 <= kept.item() < 0.5 + o["maps"].max().item() / o["maps"].sum().item() + 1e-4


def test_classes_per_image(gen):
    imgs = [np.random.randint(0, 255, (40, 40, 3), np.uint8) for _ in range(3)]
    out = gen(imgs, classes=["cat", 5, ["dog", "ship"]])
    assert set(out[0]["labels"].tolist()) == {3}
    assert set(out[1]["labels"].tolist()) == {5}
    assert set(out[2]["labels"].tolist()) <= {5, 8} and out[2]["maps"].shape[0] == 2
    allc = gen(imgs[:1], classes="all")[0]
    assert allc["maps"].shape[0] == 10
    top = gen(imgs[:1], classes="top3")[0]
    assert top["map_classes"].tolist() == top["probs"].topk(3).indices.tolist()


def test_result_of_an_image_does_not_depend_on_its_batch(random_wrn):
    imgs = [np.random.RandomState(i).randint(0, 255, (50, 60, 3)).astype(np.uint8) for i in range(5)]
    a = ProposalGenerator(random_wrn, device="cpu", batch_size=5)(imgs)[3]
    b = ProposalGenerator(random_wrn, device="cpu", batch_size=1)(imgs[3])[0]
    torch.testing.assert_close(a["maps"], b["maps"])
    torch.testing.assert_close(a["boxes"], b["boxes"])


def test_inputs_of_every_kind(gen, tmp_path):
    from PIL import Image
    arr = np.random.randint(0, 255, (30, 40, 3), np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    outs = [gen(tmp_path / "a.png"), gen(str(tmp_path / "a.png")), gen(arr),
            gen(torch.from_numpy(arr).permute(2, 0, 1)), gen(Image.fromarray(arr))]
    for o in outs:
        torch.testing.assert_close(o[0]["boxes"], outs[0][0]["boxes"])
    assert len(gen(torch.randint(0, 255, (2, 3, 20, 20), dtype=torch.uint8))) == 2


def test_class_specs():
    assert parse_class_spec(None) == ("predicted", None)
    assert parse_class_spec("Cat") == ("list", [3])
    assert parse_class_spec("top-2") == ("top", 2)
    assert parse_class_spec(["dog", 1]) == ("list", [5, 1])
    with pytest.raises(ValueError, match="unknown class"):
        parse_class_spec("unicorn")
    with pytest.raises(ValueError, match="out of range"):
        parse_class_spec(12)


def test_unknown_option_is_an_error(random_wrn):
    with pytest.raises(TypeError, match="unknown options"):
        ProposalGenerator(random_wrn, topn=3)


def test_precision_auto_is_int8_under_an_isa_cap_without_bf16(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes bf16 emulated on any CPU, as on an AVX2-only one: auto asks
    for int8 (the runtime falls back to fp32 for a model without an int8 copy)."""
    from gradloc.models.wrn import cpu_flags, resolve_precision
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert resolve_precision("auto", "cpu") == "int8"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # a cap above bf16 leaves the CPU's answer
    native = bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "int8")


def test_precision_auto_picks_bf16_only_where_it_is_native(monkeypatch, random_wrn):
    import gradloc.models.wrn as model_module
    from gradloc.models.wrn import resolve_precision
    monkeypatch.setattr(model_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(model_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "int8"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"
    gen = ProposalGenerator(random_wrn, device="cpu")  # random weights have no int8 copy: fp32
    assert gen.precision == "fp32" and not gen.amp
    for g in (ProposalGenerator(random_wrn, device="cpu", amp=True),
              ProposalGenerator(random_wrn, device="cpu", precision="bf16").with_options(top_k=3)):
        assert g.precision == "bf16" and g.net.amp  # the alias, and kept by with_options
    with pytest.raises(ValueError, match="unknown precision"):
        ProposalGenerator(random_wrn, device="cpu", precision="fp16")


def test_flip_averaging_makes_maps_mirror_equivariant(random_wrn):
    rng = np.random.RandomState(3)
    img = rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)
    mirror = np.ascontiguousarray(img[:, ::-1])
    on = ProposalGenerator(random_wrn, device="cpu", precision="fp32")
    a, b = on([img, mirror], classes="cat")
    torch.testing.assert_close(a["maps"], b["maps"].flip(-1), rtol=1e-4, atol=1e-6)
    off = ProposalGenerator(random_wrn, device="cpu", precision="fp32", flip=False)
    a, b = off([img, mirror], classes="cat")
    assert not torch.allclose(a["maps"], b["maps"].flip(-1), rtol=1e-3, atol=1e-5)
