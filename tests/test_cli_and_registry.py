"""The command line, model presets, loading local checkpoints, preprocessing."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import fxdecomp
from fxdecomp import models_registry as reg
from fxdecomp.cli import main


def test_help_lists_demo(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_demo_prints_components_and_error(capsys):
    assert main(["demo", "--images", "2", "--top", "5", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "blocks.5.mlp" in out or "blocks." in out
    err = float(out.rsplit("max relative error", 1)[1].split()[0])
    assert err < 1e-10


def test_demo_reports_errors_cleanly(capsys):
    assert main(["demo", "--model", "timm:not_a_model_xyz"]) == 2
    assert "timm has no model" in capsys.readouterr().err


def test_console_script_is_installed():
    res = subprocess.run([sys.executable, "-m", "fxdecomp.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "fxdecomp" in res.stdout


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_round_trip(tmp_path, suffix):
    src = reg.load("timm:vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    dst = reg.load("timm:vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, checkpoint=path)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
    assert not dst.training


def test_checkpoint_errors(tmp_path):
    with pytest.raises(fxdecomp.InputError, match="does not exist"):
        reg.load("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"nonsense": torch.zeros(1)}, bad)
    with pytest.raises(fxdecomp.InputError, match="does not fit"):
        reg.load("timm:vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, checkpoint=bad)
    with pytest.raises(fxdecomp.InputError, match="unknown model"):
        reg.load("tensorflow:resnet")


def test_open_clip_visual_tower_from_local_file(tmp_path):
    import open_clip

    full = open_clip.create_model("ViT-B-32", pretrained=None)
    with torch.no_grad():
        full.visual.proj.add_(1.0)
    path = tmp_path / "clip.pt"
    torch.save(full.state_dict(), path)
    visual = reg.load("open_clip:ViT-B-32", checkpoint=path)
    assert torch.equal(visual.proj, full.visual.proj)
    assert reg.input_size_of(visual) == (3, 224, 224)


def test_preprocessing_resizes_crops_and_normalises():
    model = reg.load()
    tf = reg.transform_for(model)
    imgs = (torch.rand(2, 3, 80, 120) * 255).to(torch.uint8)
    x = tf(imgs)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    mean, std = reg.normalization_of(model)
    flat = torch.full((1, 3, 64, 64), 0.5)
    assert torch.allclose(tf(flat)[0, :, 0, 0], (0.5 - torch.tensor(mean)) / torch.tensor(std))
    dm = fxdecomp.decompose(model)
    assert dm(x).contributions.shape[:2] == (2, len(dm.components))


def test_presets_are_listed():
    names = [p.name for p in reg.presets()]
    assert reg.DEFAULT in names
    with pytest.raises(fxdecomp.InputError, match="no pretrained weights"):
        reg.load(reg.DEFAULT, pretrained=True)
