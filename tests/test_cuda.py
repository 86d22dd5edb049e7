"""The same guarantees on a GPU (skipped where there is none)."""
from __future__ import annotations

import warnings

import pytest
import torch

import fxdecomp
from conftest import bound, images, rel_err, small_vit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("granularity", ["block", "head", "token"])
def test_exact_on_cuda(dtype, granularity):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = small_vit(depth=3, num_classes=5).to("cuda", dtype)
    dm = fxdecomp.decompose(model, granularity)
    x = images(dm, batch=4, dtype=dtype).cuda()
    with torch.no_grad():
        out = dm(x)
        ref = model(x)
    assert out.contributions.device.type == "cuda"
    assert rel_err(out.total(), ref) <= bound(dtype)


def test_open_clip_on_cuda():
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("ViT-B-16", pretrained=None).visual.eval().cuda()
    dm = fxdecomp.decompose(model, "token", layers=[11])
    x = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= 1e-5


def test_images_on_the_wrong_device_are_refused():
    dm = fxdecomp.decompose(small_vit().cuda(), "head")
    with pytest.raises(fxdecomp.InputError, match="cuda"):
        dm(torch.randn(2, 3, 32, 32))
