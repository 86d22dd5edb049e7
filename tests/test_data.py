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


# -- decoding: every image as what it shows, or a clear refusal --------------------------------------------------
def grey16_png(path, level: float, size=(30, 20)):
    """A 16-bit greyscale PNG at ``level`` (0..1) of full scale."""
    Image.fromarray(np.full((size[1], size[0]), round(level * 65535), np.uint16)).save(path)


def rgb16_png(path, rgb: tuple[float, float, float], size=(6, 4)):
    """A 16-bit RGB PNG (PIL cannot write one: the chunks are written here)."""
    import struct
    import zlib

    w, h = size
    px = np.array([round(c * 65535) for c in rgb], ">u2")
    rows = b"".join(b"\x00" + np.tile(px, w).tobytes() for _ in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_high_bit_depths_and_floats_are_read_at_their_level(tmp_path):
    """A 40% grey in 16 bits is 102 of 255 (PIL's own conversion makes it 255), a 0..1 float TIFF is its
    level times 255 (PIL's makes it 0), in PNG, TIFF and PGM."""
    grey16_png(tmp_path / "g16.png", 0.4)
    Image.fromarray(np.full((20, 30), round(0.4 * 65535), np.uint16)).save(tmp_path / "g16.tif")
    Image.fromarray(np.full((20, 30), round(0.4 * 65535), np.uint16)).save(tmp_path / "g16.pgm")
    Image.fromarray(np.full((20, 30), 0.4, np.float32), mode="F").save(tmp_path / "f.tif")
    for name in ("g16.png", "g16.tif", "g16.pgm", "f.tif"):
        img = load_image(tmp_path / name)
        assert img.shape == (3, 20, 30) and img.dtype == torch.uint8, name
        assert (img == 102).all(), (name, img.unique())
    rgb16_png(tmp_path / "rgb16.png", (1.0, 0.3, 0.0))
    img = load_image(tmp_path / "rgb16.png")
    assert img[:, 0, 0].tolist() in ([255, 77, 0], [255, 76, 0])  # 16-bit RGB: PIL keeps the high byte


@pytest.mark.parametrize("values,says", [(np.full((8, 8), 2.5, np.float32), r"floating-point pixels in \[2.5"),
                                         (np.full((8, 8), np.nan, np.float32), "non-finite"),
                                         (np.full((8, 8), 70000, np.int32), "32-bit integer")])
def test_what_cannot_be_read_faithfully_is_refused(tmp_path, values, says):
    mode = "F" if values.dtype == np.float32 else "I"
    Image.fromarray(values, mode=mode).save(tmp_path / "x.tif")
    with pytest.raises(InputError, match=says):
        load_image(tmp_path / "x.tif")


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white, in the file's own orientation
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "turned.png", exif=exif)
    img = load_image(tmp_path / "turned.png")
    assert img.shape == (3, 40, 20)  # displayed upright: taller than wide
    assert img[:, :20].float().mean() > 250 and img[:, 20:].float().mean() < 5  # the white half is now on top


def test_a_decompression_bomb_gets_a_clear_error(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: above the limit (the warning zone too)
    with pytest.raises(InputError, match=r"64x64 = 4,096 pixels, more than PIL's decompression-bomb limit of 1,000"):
        load_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # above twice the limit: PIL's error
    with pytest.raises(InputError, match="decompression-bomb limit"):
        load_image(tmp_path / "big.png")


def test_a_dangling_symlink_is_refused_not_skipped(tmp_path):
    save(tmp_path / "d" / "a.png", 10)
    (tmp_path / "d" / "b.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(InputError, match="b.png is a symbolic link to .*gone.png, which does not exist"):
        ImageFolder(tmp_path / "d")
    save(tmp_path / "c" / "cat" / "a.png", 10)
    (tmp_path / "c" / "cat" / "b.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(InputError, match="symbolic link"):
        ImageFolder(tmp_path / "c")


def test_items_carry_the_digest_of_their_file(tmp_path):
    from fxdecomp.data.identity import file_digest
    from fxdecomp.hashing import bytes_digest

    save(tmp_path / "d" / "a.png", 10)
    folder = ImageFolder(tmp_path / "d", size=8)
    assert folder[0]["digest"] == bytes_digest((tmp_path / "d" / "a.png").read_bytes()) == folder.digest(0)
    assert file_digest(tmp_path / "d" / "a.png") == folder.digest(0)
    save(tmp_path / "d" / "a.png", 11)
    assert folder[0]["digest"] != bytes_digest(b"") and folder.digest(0) == folder[0]["digest"]
    world = WorldImages(3, 1)
    assert world[1]["digest"] == world.digest(1) != world.digest(2)


def test_an_image_error_in_a_loader_worker_is_one_clear_line(tmp_path):
    """Not "Caught InputError in DataLoader worker process 0." and the worker's traceback."""
    from fxdecomp.store.loader import loader
    from fxdecomp.store.shards import ShardPlan

    save(tmp_path / "d" / "a.png", 10)
    (tmp_path / "d" / "b.png").write_bytes(b"\x89PNG not really")
    data = ImageFolder(tmp_path / "d", size=8)
    with pytest.raises(InputError) as info:
        list(loader(data, ShardPlan(2, 2), [0], 2, workers=1))
    assert str(info.value).startswith("cannot read image") and "b.png" in str(info.value)
    assert "\n" not in str(info.value) and "Caught" not in str(info.value)


class _Checkerboards(torch.utils.data.Dataset):
    """A data source type that exists only here: uint8 checkerboards of a given cell size."""

    def __init__(self, n: int, cell: int):
        self.n, self.cell = n, cell

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        yy, xx = np.mgrid[:64, :64]
        board = (((yy // self.cell) + (xx // self.cell) + i) % 2 * 255).astype(np.uint8)
        return {"image": torch.from_numpy(np.repeat(board[None], 3, 0)), "index": i}

    def ids(self):
        return [f"boards:{self.cell}:{i}" for i in range(self.n)]


def test_a_new_data_source_is_one_registration(tmp_path):
    """Registered in one place, a source type is opened by the command line's spec, recorded by a run and
    opened again by ``Run.data()``, with no other module naming it."""
    from fxdecomp.data import SourceType, register_source, source_types
    from fxdecomp.data.registry import _TYPES
    from fxdecomp.models_registry import load
    from fxdecomp.store import decompose_to_store, open_run

    assert [t.name for t in source_types()] == ["world", "waterbirds", "folder"]
    register_source(SourceType(
        "boards", _Checkerboards, names=lambda spec: spec.startswith("boards:"),
        open=lambda spec, size, split: _Checkerboards(*map(int, spec.split(":")[1:])),
        describe=lambda d: {"n": d.n, "cell": d.cell, "ids": d.ids(), "labels": {}},
        reopen=lambda rec: _Checkerboards(rec["n"], rec["cell"]), priority=5))
    try:
        data = open_data("boards:3:8")
        assert isinstance(data, _Checkerboards) and (data.n, data.cell) == (3, 8)
        assert describe_source(data)["kind"] == "boards" and describe_source(data)["cell"] == 8
        out = tmp_path / "run"
        decompose_to_store(load("world-vit"), data, out, model_name="world-vit", batch=3, progress=False)
        again = open_run(out).data()
        assert len(again) == 3
        np.testing.assert_array_equal(again[2]["image"].numpy(), data[2]["image"].numpy())  # 64x64: kept as is
        with pytest.raises(InputError, match="neither"):
            open_data("nowhere:3")
    finally:
        del _TYPES["boards"]
    with pytest.raises(InputError, match="'boards' data cannot be opened again.*world, waterbirds, folder"):
        open_run(out).data()
