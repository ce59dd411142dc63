"""The WRN and its safe weights loading."""
import pytest
import torch

from gradloc.models.wrn import (WeightsError, WideResNet, default_weights_path, sha256_of, wide_resnet)


def test_architecture_shapes():
    m = WideResNet(16, 4).eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(2.75e6, rel=0.02)
    with pytest.raises(ValueError):
        WideResNet(15, 4)


def test_round_trip_with_checksum(tmp_path):
    m = WideResNet(10, 1)
    p = tmp_path / "w.pt"
    torch.save(m.state_dict(), p)
    (tmp_path / "w.pt.sha256").write_text(sha256_of(p) + "  w.pt\n")
    m2 = wide_resnet(10, 1, weights=p)
    assert not m2.training and not any(q.requires_grad for q in m2.parameters())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(m2(x), m.eval()(x))


def test_missing_corrupt_and_mismatched(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        wide_resnet(10, 1, weights=tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="cannot read"):
        wide_resnet(10, 1, weights=bad)
    other = tmp_path / "other.pt"
    torch.save(WideResNet(10, 2).state_dict(), other)
    with pytest.raises(WeightsError, match="does not fit WRN-10-1.*shape"):
        wide_resnet(10, 1, weights=other)
    deeper = tmp_path / "deeper.pt"
    torch.save(WideResNet(16, 1).state_dict(), deeper)
    with pytest.raises(WeightsError, match="unexpected keys"):
        wide_resnet(10, 1, weights=deeper)


def test_checksum_mismatch_is_refused(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(WideResNet(10, 1).state_dict(), p)
    (tmp_path / "w.pt.sha256").write_text("0" * 64 + "  w.pt\n")
    with pytest.raises(WeightsError, match="checksum"):
        wide_resnet(10, 1, weights=p)
    wide_resnet(10, 1, weights=p, verify=False)


def test_pickled_code_is_not_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran code')",))
    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p)
    with pytest.raises(WeightsError, match="cannot read"):
        wide_resnet(10, 1, weights=p)


def test_shipped_weights_load_and_verify():
    if not default_weights_path().is_file():
        pytest.skip("no shipped weights yet")
    m = wide_resnet()
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
