"""Models that return several tensors: Hugging Face ``transformers`` models and open_clip towers
returning ``(pooled, tokens)`` decompose without a wrapper, each output choice exact against the
model's own output; ``hf:PATH`` loads a folder written by ``save_pretrained``."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import F32_BOUND, F64_BOUND, jitter_, rel_err

import fxdecomp
from fxdecomp.errors import InputError, TraceError

T = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
             patch_size=8)


def _vit():
    return T.ViTModel(T.ViTConfig(**SMALL))


def _deit():
    return T.DeiTModel(T.DeiTConfig(**SMALL, attn_implementation="eager"))


def _dinov2():
    return T.Dinov2Model(T.Dinov2Config(**SMALL, use_swiglu_ffn=True))


def _dinov2_registers():
    return T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=2))


def _clip():
    return T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(**SMALL, projection_dim=16))


def _siglip():
    return T.SiglipVisionModel(T.SiglipVisionConfig(**SMALL))


def _swin():
    return T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                    window_size=4))


def _convnext():
    return T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32))


def _hidden(o):
    return o.last_hidden_state


#: model -> (builder, default output, {output: the same tensor computed from the model's own output})
MODELS = {
    "vit": (_vit, "cls", {"cls": lambda o: _hidden(o)[:, 0], "pooler": lambda o: o.pooler_output,
                          "mean": lambda o: _hidden(o)[:, 1:].mean(1), "last_hidden_state": _hidden}),
    "deit": (_deit, "cls", {"cls": lambda o: _hidden(o)[:, 0], "pooler": lambda o: o.pooler_output,
                            "mean": lambda o: _hidden(o)[:, 2:].mean(1)}),
    "dinov2": (_dinov2, "pooler", {"pooler": lambda o: o.pooler_output, "cls": lambda o: _hidden(o)[:, 0],
                                   "mean": lambda o: _hidden(o)[:, 1:].mean(1)}),
    "dinov2_registers": (_dinov2_registers, "pooler", {"pooler": lambda o: o.pooler_output,
                                                       "mean": lambda o: _hidden(o)[:, 3:].mean(1)}),
    "clip": (_clip, "image_embeds", {"image_embeds": lambda o: o.image_embeds, "cls": lambda o: _hidden(o)[:, 0],
                                     "mean": lambda o: _hidden(o)[:, 1:].mean(1)}),
    "siglip": (_siglip, "pooler", {"pooler": lambda o: o.pooler_output, "mean": lambda o: _hidden(o).mean(1),
                                   "last_hidden_state": _hidden}),
    "swin": (_swin, "pooler", {"pooler": lambda o: o.pooler_output, "mean": lambda o: _hidden(o).mean(1)}),
    "convnext": (_convnext, "pooler", {"pooler": lambda o: o.pooler_output,
                                       "mean": lambda o: _hidden(o).mean((2, 3)), "last_hidden_state": _hidden}),
}

_BUILT: dict = {}


def model(name: str) -> torch.nn.Module:
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = jitter_(MODELS[name][0]().eval(), scale=0.05)
    return _BUILT[name]


def images(dtype=torch.float32, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)


def quiet_decompose(m, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fxdecomp.CollapseWarning)
        return fxdecomp.decompose(m, *args, **kwargs)


CASES = [(name, out) for name, (_, _, refs) in MODELS.items() for out in refs]


@pytest.mark.parametrize("name,output", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_each_output_is_exact_against_the_models_own(name, output):
    m = model(name)
    x = images()
    default = MODELS[name][1]
    tanh = output == "pooler" and name in ("vit", "deit")  # BERT's tanh pooler sits on the stream
    dm = fxdecomp.decompose(m, "head", output=None if output == default else output,  # input size: the config
                            linearize=tanh)
    assert not dm.collapsed and dm.linearised == (["pooler.activation (tanh)"] if tanh else [])
    with torch.no_grad():
        ref = MODELS[name][2][output](m(pixel_values=x))
        dec = dm(x)
    assert dec.output.shape == ref.shape
    assert rel_err(dec.total(), ref) <= F32_BOUND
    assert f"output={output!r}" in dm.notes[0]
    assert ("the default" in dm.notes[0]) == (output == default)
    # labels name the model's own modules, not a wrapper's
    modules = dict(m.named_modules())
    heads = [c for c in dm.components if c.kind == "attn"]
    assert heads or name == "convnext"
    assert all(c.module in modules for c in heads)


@pytest.mark.parametrize("name", list(MODELS))
def test_default_output_is_exact_in_float64(name):
    import copy

    m64 = copy.deepcopy(model(name)).double()
    x = images(torch.float64, 2)
    dm = quiet_decompose(m64, "token")
    with torch.no_grad():
        ref = MODELS[name][2][MODELS[name][1]](m64(pixel_values=x))
        assert rel_err(dm(x).total(), ref) <= F64_BOUND
    assert dm.components.names == quiet_decompose(model(name), "token").components.names


def test_two_tower_clip_decomposes_its_image_features():
    torch.manual_seed(0)
    text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    m = jitter_(T.CLIPModel(T.CLIPConfig(vision_config=SMALL, text_config=text, projection_dim=8)).eval(), 0.05)
    x = images()
    dm = quiet_decompose(m, "head")
    with torch.no_grad():
        ref = m.visual_projection(m.vision_model(pixel_values=x).pooler_output)
        assert rel_err(dm(x).total(), ref) <= F32_BOUND
    assert "output='image_embeds'" in dm.notes[0]
    assert all(c.module.startswith("vision_model") or c.kind in ("bias", "embed") for c in dm.components)


def test_output_choices_that_do_not_exist_are_refused():
    with pytest.raises(InputError, match="no 'cls' output.*'pooler'"):
        fxdecomp.decompose(model("siglip"), output="cls")
    with pytest.raises(InputError, match="must be one of"):
        fxdecomp.decompose(model("vit"), output="pooled")
    with pytest.raises(InputError, match="returns one tensor"):
        fxdecomp.decompose(fxdecomp.models_registry.load("vit-small-random"), output="cls")


def test_a_model_in_training_mode_is_refused_before_it_runs():
    m = _convnext()  # BatchNorm-free, but the rule is the same: nothing runs in training mode
    with pytest.raises(TraceError, match="training mode"):
        fxdecomp.decompose(m)


def test_representation_of_an_hf_classifier_is_its_backbones_class_token():
    from fxdecomp.align import representation

    torch.manual_seed(0)
    clf = jitter_(T.ViTForImageClassification(T.ViTConfig(**SMALL, num_labels=5)).eval(), 0.05)
    rep = representation(clf)
    x = images()
    with torch.no_grad():
        ref = clf.vit(pixel_values=x).last_hidden_state[:, 0]  # what its classifier reads
        assert torch.equal(rep(x), ref)
        logits = quiet_decompose(clf, "block")  # the classifier itself: its logits
        assert rel_err(logits(x).total(), clf(pixel_values=x).logits) <= F32_BOUND
    assert "output='logits'" in logits.notes[0]


# -- open_clip towers returning (pooled, tokens) ------------------------------------------------------------
def _coca_tower():
    from open_clip.model import _build_vision_tower

    torch.manual_seed(0)
    cfg = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32, attentional_pool=True,
               attn_pooler_heads=2, output_tokens=True)
    return jitter_(_build_vision_tower(16, cfg).eval(), scale=0.05)


def test_coca_tower_decomposes_its_pooled_embedding_by_default():
    v = _coca_tower()
    x = images()
    with torch.no_grad():
        pooled, tokens = v(x)
        dm = fxdecomp.decompose(v, "head")
        assert rel_err(dm(x).total(), pooled) <= F32_BOUND
        assert "pooled" in dm.notes[0]
        dt = fxdecomp.decompose(v, "head", output="tokens")
        assert rel_err(dt(x).total(), tokens) <= F32_BOUND
        v64 = _coca_tower().double()
        d64 = fxdecomp.decompose(v64, "token")
        assert rel_err(d64(x.double()).total(), v64(x.double())[0]) <= F64_BOUND


def test_a_tuple_of_unknown_meaning_needs_an_index():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 8, 8)
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            t = self.conv(x).flatten(2).transpose(1, 2)
            return t, self.fc(t).mean(1)

    m = Two().eval()
    with pytest.raises(InputError, match="output=INDEX"):
        fxdecomp.decompose(m, input_size=(3, 32, 32))
    x = images()
    dm = fxdecomp.decompose(m, "block", input_size=(3, 32, 32), output=1)
    with torch.no_grad():
        assert rel_err(dm(x).total(), m(x)[1]) <= F32_BOUND


# -- hf:PATH ----------------------------------------------------------------------------------------------
def _save(m, folder, processor: dict | None = None):
    m.save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def test_hf_path_loads_the_saved_model_as_its_class(tmp_path):
    from fxdecomp.models_registry import load

    folder = _save(model("clip"), tmp_path / "clip")
    loaded = load(f"hf:{folder}")
    assert type(loaded).__name__ == "CLIPVisionModelWithProjection" and not loaded.training
    x = images()
    with torch.no_grad():
        ref = model("clip")(pixel_values=x).image_embeds
        assert torch.equal(loaded(pixel_values=x).image_embeds, ref)
        dm = quiet_decompose(loaded, "head")
        assert rel_err(dm(x).total(), ref) <= F32_BOUND


def test_hf_path_errors_name_the_fix(tmp_path):
    from fxdecomp.models_registry import load

    with pytest.raises(InputError, match="no config.json"):
        load(f"hf:{tmp_path}")
    folder = _save(model("vit"), tmp_path / "vit")
    with pytest.raises(InputError, match="drop --checkpoint"):
        load(f"hf:{folder}", checkpoint=folder / "model.safetensors")
    # a config naming a class whose weights the folder lacks: random weights, refused
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["ViTForImageClassification"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="lack .*classifier"):
        load(f"hf:{folder}")
