import os
from pathlib import Path

import pytest
import torch

from gradloc.models.wrn import WideResNet

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GRADLOC_SHARED", ROOT.parent / "shared")) / "data"
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="session")
def random_wrn():
    """A small randomly initialised WRN in eval mode (BN statistics made non-trivial)."""
    torch.manual_seed(0)
    m = WideResNet(depth=10, width=1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def random_weights_file(tmp_path_factory):
    """A WRN-16-4 state-dict file with random weights, for CLI tests that need no real model."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "random_wrn16-4.pt"
    torch.save(WideResNet(16, 4).state_dict(), path)
    return path


def shared_file(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} not available (../shared is absent)")
    return path
