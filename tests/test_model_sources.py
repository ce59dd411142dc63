"""Where a user's classifier comes from: ``--model timm:NAME`` (its data config read from timm)
and ``.safetensors`` weight files."""
import json

import pytest
import torch

from gradloc import ProposalGenerator
from gradloc.cli import main
from gradloc.models.wrn import WideResNet, wide_resnet

from .conftest import SAMPLES

CAT = SAMPLES / "chelsea_cat.png"


def test_safetensors_weights_load_as_the_same_state_dict_does(tmp_path, random_weights_file):
    safetensors = pytest.importorskip("safetensors.torch")
    state = torch.load(random_weights_file, weights_only=True)
    path = tmp_path / "w.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    a = ProposalGenerator(wide_resnet(weights=random_weights_file), device="cpu", precision="fp32", judge="classifier")
    b = ProposalGenerator(wide_resnet(weights=path), device="cpu", precision="fp32", judge="classifier")
    ra, rb = a(CAT)[0], b(CAT)[0]
    torch.testing.assert_close(ra["boxes"], rb["boxes"])
    torch.testing.assert_close(ra["scores"], rb["scores"])
    # a .safetensors file of another architecture is the usual one line
    safetensors.save_file({k: v.contiguous() for k, v in WideResNet(10, 1).state_dict().items()}, str(path))
    assert main(["localize", str(CAT), "-o", str(tmp_path / "o"), "--weights", str(path), "--vis-limit", "0"]) == 2


def test_timm_model_takes_its_input_size_mean_std_and_feature_layer_from_timm(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    weights = tmp_path / "model.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    names = tmp_path / "names.txt"
    names.write_text("bird\nboat\ncar\n")
    out = tmp_path / "out"
    args = ["localize", str(CAT), "-o", str(out), "--model", "timm:test_resnet", "--weights", str(weights),
            "--class-names", str(names), "--vis-limit", "0", "--precision", "fp32"]
    assert main(args + ["--method", "gradcam"]) == 0
    settings = json.loads((out / "run.json").read_text())["settings"]
    config = timm.data.resolve_model_data_config(model)  # the oracle: what timm says of its model
    assert settings["input_size"] == config["input_size"][-1]
    assert settings["mean"] == list(config["mean"]) and settings["std"] == list(config["std"])
    # the same boxes as the API given timm's description by hand (Grad-CAM on timm's last feature module)
    gen = ProposalGenerator.from_classifier(model.eval(), ["bird", "boat", "car"], config["input_size"][-1],
                                            config["mean"], config["std"], feature_layer=model.feature_info[-1]["module"],
                                            device="cpu", precision="fp32", method="gradcam")
    want = gen(CAT)[0]
    got = json.loads((out / "predictions.json").read_text())["images"][0]["proposals"]
    torch.testing.assert_close(torch.tensor([p["box"] for p in got]), want["boxes"].float(), atol=0.01, rtol=0)
    # the API reads the same description
    api = ProposalGenerator.from_source("timm:test_resnet", weights, ["bird", "boat", "car"], device="cpu",
                                        precision="fp32", method="gradcam")
    assert api.spec == gen.spec
    torch.testing.assert_close(api(CAT)[0]["boxes"], want["boxes"])
    # --input-size, --mean and --std still say otherwise where given
    assert main(args + ["-o", str(tmp_path / "o2"), "--input-size", "64", "--mean", "0.4,0.4,0.4"]) == 0
    settings = json.loads((tmp_path / "o2" / "run.json").read_text())["settings"]
    assert settings["input_size"] == 64 and settings["mean"] == [0.4, 0.4, 0.4]
    # an unknown timm name is one line naming similar models
    capsys.readouterr()
    assert main(args[:5] + ["timm:resnet_nosuch"] + args[6:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "timm has no model 'resnet_nosuch'" in err[0]


def tiny_transformers_folder(folder, transformers):
    """A transformers ResNet of 3 classes with random weights, saved as a user's folder is:
    config.json (id2label), model.safetensors and preprocessor_config.json."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
                                       id2label={0: "bird", 1: "boat", 2: "car"},
                                       label2id={"bird": 0, "boat": 1, "car": 2})
    model = transformers.ResNetForImageClassification(config).eval()
    model.save_pretrained(folder)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 64}, image_mean=[0.4, 0.45, 0.5],
                                        image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return model


def test_transformers_folder_gives_its_classes_input_and_weights(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "my-resnet"
    model = tiny_transformers_folder(folder, transformers)
    out = tmp_path / "out"
    assert main(["localize", str(CAT), "-o", str(out), "--model", f"hf:{folder}", "--vis-limit", "0",
                 "--precision", "fp32"]) == 0
    data = json.loads((out / "predictions.json").read_text())
    settings = json.loads((out / "run.json").read_text())["settings"]
    # the oracle: what the folder's own files say
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert settings["classes"] == ["bird", "boat", "car"]
    assert settings["input_size"] == processor["size"]["shortest_edge"]
    assert settings["mean"] == processor["image_mean"] and settings["std"] == processor["image_std"]
    # the photograph took the pyramid, whose gradient x activation hooks the last stage found by tracing;
    # the same boxes as the API given that description and the model transformers loads
    loaded = transformers.AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    gen = ProposalGenerator.from_classifier(loaded, ["bird", "boat", "car"], 64, processor["image_mean"],
                                            processor["image_std"], feature_layer="resnet.encoder.stages.1",
                                            device="cpu", precision="fp32")
    want = gen(CAT)[0]
    got = data["images"][0]["proposals"]
    assert set(data["images"][0]["probs"]) == {"bird", "boat", "car"}
    torch.testing.assert_close(torch.tensor([p["box"] for p in got]), want["boxes"].float(), atol=0.01, rtol=0)
    # a folder is its own weights; a folder that is not a model is one line
    capsys.readouterr()
    assert main(["localize", str(CAT), "-o", str(tmp_path / "o2"), "--model", f"hf:{folder}", "--weights", "x.pt"]) == 2
    assert main(["localize", str(CAT), "-o", str(tmp_path / "o3"), "--model", f"hf:{tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "give no --weights" in err[0] and "not a transformers model folder" in err[1], err


def test_torchvision_weights_enum_gives_class_names_and_input(tmp_path, capsys):
    """``torchvision:NAME:WEIGHTS``: the enum's categories and transforms describe the model (the
    oracle: torchvision's own meta), the state dict is the user's file; nothing is downloaded."""
    import torchvision
    torch.manual_seed(0)
    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), weights)
    out = tmp_path / "out"
    args = ["localize", str(CAT), "-o", str(out), "--model", "torchvision:resnet18:IMAGENET1K_V1", "--weights",
            str(weights), "--vis-limit", "0", "--scales", "off", "--precision", "fp32"]
    assert main(args) == 0
    settings = json.loads((out / "run.json").read_text())["settings"]
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    t = enum.transforms()
    # ImageNet names a dog "Cardigan" and a sweater "cardigan": names told apart only by case take their index
    assert [c.split(" (")[0] for c in settings["classes"]] == enum.meta["categories"]
    cardigans = [i for i, c in enumerate(enum.meta["categories"]) if c.lower() == "cardigan"]
    assert [settings["classes"][i] for i in cardigans] == [f"{enum.meta['categories'][i]} ({i})" for i in cardigans]
    assert settings["input_size"] == t.crop_size[0]
    assert settings["mean"] == list(t.mean) and settings["std"] == list(t.std)
    capsys.readouterr()
    assert main(args[:5] + ["torchvision:resnet18:IMAGENET9K"] + args[6:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no 'IMAGENET9K' (it has IMAGENET1K_V1, DEFAULT)" in err[0], err


def test_the_last_feature_map_is_found_by_tracing_and_a_transformer_has_none():
    transformers = pytest.importorskip("transformers")
    from gradloc.models.classifier import last_spatial_layer
    resnet = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3))
    assert last_spatial_layer(resnet, 64) == "resnet.encoder.stages.1"
    import torchvision
    assert last_spatial_layer(torchvision.models.resnet18(num_classes=3), 64) == "layer4"
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
        patch_size=8, num_labels=3))
    assert last_spatial_layer(vit, 32) is None  # its patch embedding is 4-D, its features are tokens


def test_a_vision_transformer_folder_localises_a_photograph_with_input_gradients(tmp_path, capsys):
    """A ViT has no feature map: the photograph takes multi-scale windows at the ViT's own input
    size (said once), its probabilities are over its labels, its boxes lie in the photograph; a
    method that needs a feature map is one line, never a traceback."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    folder = tmp_path / "my-vit"
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    image_size=32, patch_size=8, num_labels=3, id2label={0: "bird", 1: "boat", 2: "car"},
                                    label2id={"bird": 0, "boat": 1, "car": 2})
    transformers.ViTForImageClassification(config).eval().save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    out = tmp_path / "out"
    assert main(["localize", str(CAT), "-o", str(out), "--model", f"hf:{folder}", "--vis-limit", "0",
                 "--precision", "fp32"]) == 0
    err = capsys.readouterr().err
    assert "no spatial feature map" in err and "multi-scale windows" in err
    data = json.loads((out / "predictions.json").read_text())
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["feature_layer"] is None and settings["input_size"] == 32
    rec = data["images"][0]
    assert set(rec["probs"]) == {"bird", "boat", "car"} and abs(sum(rec["probs"].values()) - 1) < 1e-4
    boxes = torch.tensor([p["box"] for p in rec["proposals"]])
    assert len(boxes) and (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= rec["width"]).all()
    assert (boxes[:, 3] <= rec["height"]).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    for method in ("gradcam", "cam", "grad-x-activation"):
        assert main(["localize", str(CAT), "-o", str(tmp_path / method), "--model", f"hf:{folder}",
                     "--method", method, "--vis-limit", "0"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "needs a spatial feature map" in lines[0], lines
