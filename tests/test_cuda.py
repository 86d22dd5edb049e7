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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_linearised_convolutions_on_cuda(dtype):
    """Convolutions on the stream run through cuDNN as the model's own do (TF32 off on both
    sides, as a float32 bound of 1e-5 needs), depthwise widening split and small grids dense."""
    import timm
    from conftest import jitter_

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = timm.create_model("fastvit_t8", pretrained=False, num_classes=10).eval()
    jitter_(model, seed=1)
    model = model.to("cuda", dtype)
    dm = fxdecomp.decompose(model, "head", input_size=(3, 64, 64), linearize=True)
    x = torch.randn(4, 3, 64, 64, device="cuda", dtype=dtype)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= bound(dtype)


def test_images_on_the_wrong_device_are_refused():
    dm = fxdecomp.decompose(small_vit().cuda(), "head")
    with pytest.raises(fxdecomp.InputError, match="cuda"):
        dm(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("batch", [1, 8])
def test_cuda_graph_replay_equals_the_eager_forward(batch):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = small_vit(depth=3, num_classes=5).cuda()
    eager = fxdecomp.decompose(model, "head")
    graphed = fxdecomp.decompose(model, "head").cuda_graphs()
    with torch.inference_mode():
        for seed in range(3):  # the first call captures, the later ones replay on new images
            x = images(eager, batch=batch, seed=seed).cuda()
            want, got = eager(x), graphed(x)
            assert torch.allclose(got.contributions, want.contributions, rtol=1e-5, atol=1e-6)
            assert rel_err(got.total(), model(x)) <= bound(torch.float32)
    assert len(graphed._graphed.graphs) == 1


def test_cuda_graphs_recapture_after_conversion_and_refuse_gradients():
    model = small_vit(depth=2).cuda()
    dm = fxdecomp.decompose(model, "head").cuda_graphs()
    x = images(dm, batch=2).cuda()
    with torch.no_grad():
        dm(x)
        model.double()
        dm.double()
        assert not dm._graphed.graphs  # the old graphs held float32 buffers
        assert rel_err(dm(x.double()).total(), model(x.double())) <= bound(torch.float64)
    with pytest.raises(fxdecomp.InputError, match="no_grad"):
        dm(x.double())


def test_weights_changed_under_the_compiled_module_are_followed_on_cuda():
    """Eager: a change through ``w.data`` is seen by the weight fingerprint. Replayed graphs: a weight given
    new memory (``w.data = ...``) makes them be captured again (they would read the old memory)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = small_vit(depth=2).cuda()
    eager = fxdecomp.decompose(model, "head")
    graphed = fxdecomp.decompose(model, "head").cuda_graphs()
    x = images(eager, batch=2).cuda()
    with torch.no_grad():
        eager(x), graphed(x)
        weight = model.blocks[1].attn.proj.weight
        weight.data.mul_(2)
        assert rel_err(eager(x).total(), model(x)) <= bound(torch.float32)
        assert rel_err(graphed(x).total(), model(x)) <= bound(torch.float32)
        weight.data = torch.randn_like(weight)
        assert rel_err(eager(x).total(), model(x)) <= bound(torch.float32)
        assert rel_err(graphed(x).total(), model(x)) <= bound(torch.float32)
