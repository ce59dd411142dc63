"""The option schema: one declaration per option in its stage's config, the flat Options the API
and CLI use, and the effective configs that run (and are recorded)."""
from dataclasses import FrozenInstanceError, fields

import pytest

from gradloc.cli import main
from gradloc.discovery.config import STAGES, Options, PlanConfig, ProposalConfig, RankingConfig, SaliencyConfig


def test_every_option_is_declared_once_in_one_stage():
    names = [f.name for stage in STAGES for f in fields(stage)]
    assert len(names) == len(set(names))
    assert [f.name for f in fields(Options)] == names
    for stage in STAGES:  # the flat field is the stage's declaration: default, help and choices
        for f in fields(stage):
            flat = next(g for g in fields(Options) if g.name == f.name)
            assert flat.default == f.default and flat.metadata == f.metadata


def test_the_cli_has_a_flag_for_each_option_with_its_declared_choices(capsys):
    with pytest.raises(SystemExit):
        main(["localize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(Options):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        if f.metadata["choices"]:
            assert f"{flag} {{{','.join(f.metadata['choices'])}}}" in text, flag


def test_configs_are_immutable_and_validate_their_own_fields():
    with pytest.raises(FrozenInstanceError):
        Options().top_n = 5
    with pytest.raises(FrozenInstanceError):
        Options().effective().ranking.fuse = 1.0
    with pytest.raises(ValueError, match="nms_iou"):
        RankingConfig(nms_iou=0)
    with pytest.raises(ValueError, match="kernel"):
        ProposalConfig(kernel=0)
    with pytest.raises(ValueError, match="input_sizes"):
        PlanConfig(input_sizes="16")
    with pytest.raises(ValueError, match="method"):
        SaliencyConfig(method="magic")
    # the flat options validate through their stages and keep the stage's normalised values
    assert Options(ladder=[0.3, 0.5]).ladder == "0.3,0.5" == Options(ladder=(0.3, 0.5)).stage(ProposalConfig).ladder


def test_effective_configs_say_what_runs():
    cam = Options(method="gradcam", rescore="crop", peaks=2).effective()
    assert (cam.ranking.rescore, cam.proposals.peaks, cam.proposals.threshold, cam.proposals.values()) == \
        ("off", 0, "fraction", (0.2,))
    off = Options(rescore="off").effective()
    assert off.proposals.values() == (None,) and off.ranking.fuse == 0 and off.proposals.moment_box == 0
    assert Options().effective().proposals.values() == (0.4, 0.5, 0.6, 0.7)
    assert Options(threshold="otsu").effective().proposals.values() == (None,)
    assert Options(ladder="").effective().proposals.values() == (None,)  # rescoring one threshold's boxes
    assert Options(method="smoothgrad", samples=4).effective().saliency.samples == 4
    assert Options(samples=4).effective().saliency.samples == SaliencyConfig.samples  # not used by gradient
    flat = Options(top_n=50).effective().flat()
    assert flat["top_n"] == 50 and set(flat) == {f.name for f in fields(Options)}


def test_options_that_would_do_nothing_are_named_with_the_reason():
    assert Options().inert() == []
    notes = Options(threshold="otsu", ladder="0.3,0.6").inert()
    assert notes == ["--ladder '0.3,0.6' does nothing: --threshold otsu makes one box set (the ladder is of mass shares)"]
    assert Options(method="gradcam", fuse=0.5).inert() == \
        ["--fuse 0.5 does nothing: --method gradcam is boxed by the CAM paper's recipe"]
    assert Options(steps=4).inert() == ["--steps 4 does nothing with --method gradient"]
