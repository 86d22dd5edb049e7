"""fxdecomp.data: image folders, Waterbirds-layout folders and world specs, as the command line opens them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fxdecomp import InputError
from fxdecomp.data import (
    ImageFolder,
    WaterbirdsFolder,
    WorldImages,
    WorldSpurious,
    describe_source,
    load_image,
    open_data,
    parse_world,
)
from fxdecomp.world import World


def save(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(path)


def test_flat_and_class_folders(tmp_path):
    save(tmp_path / "flat" / "b.png", 10)
    save(tmp_path / "flat" / "a.jpg", 200)
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    flat = ImageFolder(tmp_path / "flat", size=16)
    assert flat.ids() == ["a.jpg", "b.png"] and flat.labels is None
    item = flat[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8
    assert abs(int(item["image"].float().mean()) - 200) <= 2
    save(tmp_path / "cls" / "dog" / "1.png", 0)
    save(tmp_path / "cls" / "cat" / "x" / "2.png", 0)
    save(tmp_path / "cls" / "cat" / "3.png", 0)
    classes = ImageFolder(tmp_path / "cls", size=8)
    assert classes.classes == ["cat", "dog"]
    assert classes.ids() == ["cat/3.png", "cat/x/2.png", "dog/1.png"] and classes.labels == [0, 0, 1]
    assert describe_source(classes)["labels"] == {"label": [0, 0, 1]}


def test_resize_keeps_the_centre(tmp_path):
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, 20:40] = 255  # a white middle third
    Image.fromarray(arr).save(tmp_path / "wide.png")
    img = load_image(tmp_path / "wide.png", 10)
    assert img.shape == (3, 10, 10) and int(img.float().mean()) > 240


def test_bad_folders_and_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(InputError, match="not a folder"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    folder = ImageFolder(tmp_path / "broken")
    with pytest.raises(InputError, match="cannot read image .*x.png"):
        folder[0]


def test_waterbirds_layout(tmp_path):
    for i in range(6):
        save(tmp_path / "birds" / f"{i}.png", 30 * i)
    rows = ["img_filename,y,place,split"] + [f"birds/{i}.png,{i % 2},{(i // 2) % 2},{i % 3}" for i in range(6)]
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    every = WaterbirdsFolder(tmp_path, size=8)
    assert len(every) == 6 and every.groups.tolist() == [2 * (i % 2) + (i // 2) % 2 for i in range(6)]
    train = open_data(str(tmp_path), size=8, split="train")
    assert isinstance(train, WaterbirdsFolder) and train.ids() == ["birds/0.png", "birds/3.png"]
    item = train[1]
    assert (item["target"], item["place"], item["group"], item["split"]) == (1, 1, 3, 0)
    assert describe_source(train)["labels"]["group"] == [0, 3]
    (tmp_path / "metadata.csv").write_text("img_filename,y,split\nbirds/0.png,0,0\n")
    with pytest.raises(InputError, match="place"):
        WaterbirdsFolder(tmp_path)
    with pytest.raises(InputError, match="unknown split"):
        open_data(str(tmp_path), split="holdout")


def test_world_specs():
    assert parse_world("world:12") == (12, 20241) and parse_world("world:5:3") == (5, 3)
    data = open_data("world:4:9")
    assert isinstance(data, WorldImages) and len(data) == 4
    ref = World(4, 9).raw(2)[1]
    np.testing.assert_array_equal(data[2]["image"].permute(1, 2, 0).numpy(), ref)
    assert describe_source(data)["labels"]["shape"][2] == World(4, 9).attributes(2).labels()["shape"]
    for bad in ("world:", "world:x", "world:3:4:5", "world:0"):
        with pytest.raises(InputError):
            open_data(bad)
    with pytest.raises(InputError, match="neither"):
        open_data("no/such/folder")
    spurious = WorldSpurious(8, 13, 0.5)
    assert spurious.groups.tolist() == [World(8, 13, spurious=0.5)[i]["group"] for i in range(8)]
