"""Preprocessing as the model was trained: ``transform_for(model)`` equals the library's own eval
transform exactly (timm's crop_pct and interpolation, open_clip's preprocess, a Hugging Face image
processor), it is the one path images are resized by, and a run records what it really did."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import timm
import torch
from conftest import F32_BOUND, rel_err
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from fxdecomp.data import ImageFolder, load_image, open_data
from fxdecomp.errors import InputError
from fxdecomp.models_registry import load, transform_for
from fxdecomp.preprocessing import EvalTransform, square

SIZES = [(300, 451), (500, 333), (224, 224), (97, 130), (249, 249)]


def pil_images(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def as_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()


def test_timm_deit_is_timms_own_eval_transform_exactly():
    m = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=0)
    tf = transform_for(m)
    d = tf.describe()
    assert d["config"]["crop_pct"] == 0.9 and d["config"]["interpolation"] == "bicubic"
    assert d["steps"][0].startswith("Resize(size=248, interpolation=bicubic") and "CenterCrop(size=(224, 224))" in d["steps"][1]
    ref = create_transform(**resolve_model_data_config(m))
    for im in pil_images():
        assert torch.equal(tf(im)[0], ref(im))
    # the same pixels as a uint8 tensor, and a list of images of several sizes, give the same
    ims = pil_images()
    assert torch.equal(tf(as_tensor(ims[0]))[0], ref(ims[0]))
    assert torch.equal(tf(ims), torch.stack([ref(im) for im in ims]))
    # built again from what a run records
    assert torch.equal(EvalTransform.from_description(json.loads(json.dumps(d)))(ims[1])[0], ref(ims[1]))


def test_timm_model_built_smaller_keeps_its_recipe_at_its_own_size():
    m = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    tf = transform_for(m)
    assert tf.input_size == (3, 32, 32) and "input size [3, 32, 32]" in tf.read_from
    ref = create_transform(**resolve_model_data_config(m, args={"input_size": (3, 32, 32)}))
    assert "Resize(size=35" in repr(ref)  # floor(32 / 0.9)
    for im in pil_images():
        assert torch.equal(tf(im)[0], ref(im))


def test_open_clip_tower_is_open_clips_own_preprocess_exactly():
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _, pre = open_clip.create_model_and_transforms("ViT-B-32")
    tf = transform_for(model.visual)
    assert tf.library == "open_clip" and "preprocess_cfg" in tf.read_from
    for im in pil_images():
        assert torch.equal(tf(im)[0], pre(im))


T = pytest.importorskip("transformers")
SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
             patch_size=8)
PROCESSORS = {  # HF models with the processors their checkpoints ship: warp, short side + crop, crop_pct, Bit
    "vit": (lambda: T.ViTModel(T.ViTConfig(**SMALL)), lambda: T.ViTImageProcessorPil(size={"height": 32, "width": 32})),
    "clip": (lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**SMALL)),
             lambda: T.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
    "convnext": (lambda: T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                                          image_size=32)),
                 lambda: T.ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875)),
    "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(**SMALL)),
               lambda: T.BitImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})),
}


def hf_folder(tmp_path, name):
    build, processor = PROCESSORS[name]
    torch.manual_seed(0)
    folder = tmp_path / name
    build().save_pretrained(folder)
    processor().save_pretrained(folder)  # preprocessor_config.json
    assert (folder / "preprocessor_config.json").is_file()
    return folder


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_hf_folder_uses_its_image_processor_exactly(tmp_path, name):
    folder = hf_folder(tmp_path, name)
    tf = transform_for(load(f"hf:{folder}"))
    assert tf.library == "transformers" and str(folder / "preprocessor_config.json") in tf.read_from
    proc = T.AutoImageProcessor.from_pretrained(folder, backend="pil")
    for im in pil_images():
        assert torch.equal(tf(im)[0], torch.from_numpy(proc(images=im, return_tensors="np")["pixel_values"][0]))


def test_a_model_without_a_config_gets_defaults_said_as_such():
    tf = transform_for(load("vit-small-random"))
    assert tf.read_from.startswith("defaults") and tf.input_size == (3, 64, 64)
    for im in pil_images():
        out = tf(im)[0]
        ref = create_transform(input_size=(3, 64, 64), interpolation="bicubic", crop_pct=1.0)(im)
        assert torch.equal(out, ref)


def test_world_models_see_their_renders_unchanged():
    from fxdecomp.world import World

    images = World(4, 3).arrays()["images"]  # uint8 [N, 64, 64, 3], as the models were trained on
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    for name in ("world-vit", "world-swin"):
        tf = transform_for(load(name))
        assert torch.equal(tf(images), (x - 0.5) / 0.25)


def test_float_images_go_through_the_librarys_transform_on_tensors():
    m = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    ref = create_transform(**resolve_model_data_config(m, args={"input_size": (3, 32, 32)}))
    x = torch.rand(2, 3, 40, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(transform_for(m)(x), torch.stack([ref(im) for im in x]))
    # an 8-bit image scaled to [0, 1] is the 8-bit image: the PIL path, as from its file
    im = pil_images([(40, 50)])[0]
    assert torch.equal(transform_for(m)(as_tensor(im).float() / 255)[0], ref(im))


def test_bad_images_are_refused():
    tf = transform_for(load("vit-small-random"))
    with pytest.raises(InputError, match=r"\[3, H, W\]"):
        tf(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(InputError, match="uint8 or float"):
        tf(torch.zeros(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(InputError, match="empty"):
        tf([])


def test_a_sources_square_is_the_same_resize(tmp_path):
    im = pil_images([(60, 90)])[0]
    im.save(tmp_path / "a.png")
    assert torch.equal(load_image(tmp_path / "a.png", 20), square(20).resize_crop(im))
    assert load_image(tmp_path / "a.png").shape == (3, 60, 90)  # no size: the file as it is


# -- a run resizes once, as the model's library does, and says so ---------------------------------------
def test_a_run_of_a_folder_resizes_each_file_once_as_timm_does(tmp_path):
    from fxdecomp.store import decompose_to_store, open_run

    folder = tmp_path / "images"
    folder.mkdir()
    ims = pil_images([(40, 61), (53, 37), (32, 32), (45, 45)], seed=3)
    for i, im in enumerate(ims):
        im.save(folder / f"{i}.png")
    torch.manual_seed(0)
    m = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=2).eval()
    decompose_to_store(m, open_data(str(folder)), tmp_path / "run", model_name="deit-tiny", batch=3,
                       progress=False)
    r = open_run(tmp_path / "run")
    pre = r.manifest["preprocess"]
    assert pre["library"] == "timm" and pre["config"]["crop_pct"] == 0.9 and pre["source_size"] is None
    assert pre["steps"][0].startswith("Resize(size=35, interpolation=bicubic")
    ref = create_transform(**resolve_model_data_config(m, args={"input_size": (3, 32, 32)}))
    with torch.no_grad():
        expected = m(torch.stack([ref(im) for im in ims]))
    assert rel_err(r.outputs(), expected) <= F32_BOUND  # another resize would be off by far more
    # the run's images, read again, are what the model saw
    seen = r.data()[1]["image"]
    assert torch.equal(seen, EvalTransform.from_description(pre).resize_crop(ims[1]))
    assert seen.shape == (3, 32, 32) and len(ImageFolder(folder)) == 4


def test_cli_decomposes_an_hf_folder_with_its_processor(tmp_path, capsys):
    from fxdecomp.cli import main
    from fxdecomp.store import open_run

    folder = hf_folder(tmp_path, "clip")
    images = tmp_path / "images"
    images.mkdir()
    ims = pil_images([(40, 61), (53, 37), (32, 32)], seed=4)
    for i, im in enumerate(ims):
        im.save(images / f"{i}.jpg" if i else images / f"{i}.png")
    assert main(["decompose", f"hf:{folder}", str(images), "--out", str(tmp_path / "run"), "--workers", "0",
                 "--device", "cpu", "--batch", "2"]) == 0
    assert "reconstruction max relative error" in capsys.readouterr().out
    r = open_run(tmp_path / "run")
    assert r.manifest["preprocess"]["library"] == "transformers"
    assert r.manifest["model"]["class"] == "CLIPVisionModel"
    model = T.CLIPVisionModel.from_pretrained(folder).eval()
    proc = T.AutoImageProcessor.from_pretrained(folder, backend="pil")
    files = [Image.open(images / name).convert("RGB") for name in r.ids]
    with torch.no_grad():
        ref = model(pixel_values=proc(images=files, return_tensors="pt")["pixel_values"]).pooler_output
    assert rel_err(r.outputs(), ref) <= F32_BOUND
    assert r.error() <= 1e-5


def test_a_model_view_has_masks_only_where_its_data_has_them():
    from fxdecomp.data import WorldImages
    from fxdecomp.preprocessing import ModelView

    world = WorldImages(3, 5)
    same = ModelView(world, transform_for(load("world-vit")))
    np.testing.assert_array_equal(same.masks(), world.masks())  # 64-pixel renders: unchanged
    half = ModelView(world, square(32))
    assert half.masks().shape == (3, 32, 32) and half[0]["image"].shape == (3, 32, 32)
    assert not hasattr(ModelView(list(pil_images()[:2]), square(8)), "masks")
