"""The command line: the path from a folder of images to a report, each application over a run,
and one clear line (exit code 2) for every bad argument."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import write_waterbirds
from fxdecomp.cli import main
from fxdecomp.commands import COMMANDS
from fxdecomp.models_registry import load
from fxdecomp.align.runs import run_aligner, run_clip_space, run_features, run_shared_aligner
from fxdecomp.store import open_run
from fxdecomp.world import World

NAMES = ("demo", "decompose", "align", "explain", "spurious", "segment", "retrieve", "heatmap", "verify")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_command_has_help_with_an_example(capsys):
    assert {c.__name__.rsplit(".", 1)[1] for c in COMMANDS} == set(NAMES)
    for name in NAMES:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert "example" in text and f"fxdecomp {name}" in text, name
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "decompose" in capsys.readouterr().out


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    """world-vit at token granularity on 60 world images, aligned into the world CLIP."""
    out = tmp_path_factory.mktemp("cli") / "tokens"
    assert main(["decompose", "world-vit", "world:60:9", "--granularity", "token", "--out", str(out), "--batch", "20",
                 "--workers", "0"]) == 0
    assert main(["align", str(out), "--clip", "world-clip", "--epochs", "2", "--workers", "0"]) == 0
    return out


def test_folder_to_report(tmp_path, capsys):
    folder = tmp_path / "images"
    world = World(30, 2).arrays()
    for i, img in enumerate(world["images"]):
        sub = folder / ("round" if world["shape"][i] in (0, 1, 4) else "pointed")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((96, 80)).save(sub / f"{i:03d}.png")
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "decompose", "world-vit", folder, "--out", run, "--batch", "16", "--workers", "0")
    assert code == 0, err
    assert "reconstruction max relative error" in out
    r = open_run(run)
    # every file once, in the folder's sorted order (class folders by name), each labelled with its folder
    classes = ["round" if world["shape"][i] in (0, 1, 4) else "pointed" for i in range(30)]
    expected = sorted(f"{c}/{i:03d}.png" for i, c in enumerate(classes))
    assert r.n == 30 and r.ids == expected
    assert set(r.labels) == {"label"}
    assert r.labels["label"].tolist() == [["pointed", "round"].index(i.split("/")[0]) for i in expected]
    assert r.error() < 1e-5
    code, out, err = run_cli(capsys, "align", run, "--epochs", "1", "--workers", "0")
    assert code == 0, err
    code, out, err = run_cli(capsys, "explain", run, "--out", tmp_path / "report", "--top", "3", "--images", "30")
    assert code == 0, err
    page = (tmp_path / "report" / "index.html").read_text()
    assert "world-vit" in page and "data:image/png;base64" in page and page.count('class="card"') >= 3
    assert "top descriptions" in page and "Property scores" in page


def test_segment_over_a_token_run(token_run, capsys):
    code, out, err = run_cli(capsys, "segment", token_run)
    assert code == 0, err
    acc = float(out.split("pixel accuracy")[1].split(",")[0])
    assert 0.6 < acc <= 1.0
    assert (token_run / "segment" / "maps.safetensors").is_file() and (token_run / "segment" / "examples.png").is_file()


def drawn_heatmaps(monkeypatch) -> list:
    """Every ``Heatmap`` the heatmap command draws, as it drew it."""
    import fxdecomp.heatmaps

    made, real = [], fxdecomp.heatmaps.heatmap

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(fxdecomp.heatmaps, "heatmap", spy)
    return made


def token_density(run, values: dict[int, float], size) -> np.ndarray:
    """What a heatmap of token values {component index: value} must be, computed from the labels: each
    token's value summed into its (row, col) cell, spread evenly over the cell's pixels, bilinearly."""
    placed = [c for c in run.components if c.row is not None]
    rows, cols = max(c.row for c in placed) + 1, max(c.col for c in placed) + 1
    grid = torch.zeros(rows, cols, dtype=torch.float64)
    for i, v in values.items():
        c = run.components[i]
        grid[c.row, c.col] += v
    density = grid * (rows * cols) / (size[0] * size[1])
    return torch.nn.functional.interpolate(density[None, None], size=tuple(size), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def test_a_component_heatmap_shows_its_tokens_shares(token_run, tmp_path, capsys, monkeypatch):
    """Each token of blocks.5.attn[h1] on image 3 counts its projection on the head's summed contribution."""
    drawn = drawn_heatmaps(monkeypatch)
    png = tmp_path / "not" / "yet" / "h1.png"  # a missing folder is made
    code, out, err = run_cli(capsys, "heatmap", token_run, "--image", "3", "--component", "blocks.5.attn[h1]",
                             "--out", png)
    assert code == 0, err
    r = open_run(token_run)
    c = r.images([3])[0].double()
    tokens = [i for i, comp in enumerate(r.components) if comp.layer == 5 and comp.kind == "attn" and comp.head == 1
              and comp.row is not None]
    assert len(tokens) == 64  # world-vit's 8 x 8 patches
    whole = c[tokens].sum(0)
    values = {i: float(c[i] @ whole / whole.norm()) for i in tokens}
    size = r.data()[3]["image"].shape[-2:]
    (shown,) = drawn
    np.testing.assert_allclose(shown.array, token_density(r, values, size), rtol=1e-9, atol=1e-12)
    assert shown.array.sum() == pytest.approx(float(whole.norm()), rel=1e-9)  # the shares add up to the head's size
    assert Image.open(png).size[0] > 100


def test_a_text_heatmap_reads_every_token_through_its_map(token_run, tmp_path, capsys, monkeypatch):
    drawn = drawn_heatmaps(monkeypatch)
    code, out, err = run_cli(capsys, "heatmap", token_run, "--image", "3", "--text", "sea", "--out",
                             tmp_path / "sea.png")
    assert code == 0, err
    r = open_run(token_run)
    aligner, clip = run_aligner(r), run_clip_space(r)
    text = torch.nn.functional.normalize(clip.encode_texts(["sea"]).double().mean(0), dim=0)
    c = r.images([3])[0].double()
    w = aligner.weight.detach().double()
    values = {i: float(c[i] @ w[aligner.names.index(comp.name)] @ text)
              for i, comp in enumerate(r.components) if comp.row is not None}
    (shown,) = drawn
    np.testing.assert_allclose(shown.array, token_density(r, values, r.data()[3]["image"].shape[-2:]), rtol=1e-9,
                               atol=1e-12)
    assert (tmp_path / "sea.png").is_file()


def summed_in_clip(run, aligner, names) -> torch.Tensor:
    """[N, d_clip] Σ over ``names`` of each component's contributions times its own map, from every image."""
    c = run.images(range(run.n)).double()
    w = aligner.weight.detach().double()
    return sum(c[:, run.names.index(n)] @ w[aligner.names.index(n)] for n in names)


def printed(out: str, what: str) -> list[str]:
    return out.split(f"{what}: ")[1].split("\n")[0].split(", ")


def test_retrieve_by_image_finds_the_nearest_neighbours_in_the_propertys_components(token_run, tmp_path, capsys):
    from fxdecomp.align import property_scores
    from fxdecomp.report.vocabulary import properties_for
    from fxdecomp.retrieval import property_components

    code, out, err = run_cli(capsys, "retrieve", token_run, "--image", "7", "--property", "location", "--images",
                             "4", "--out", tmp_path / "q.png")
    assert code == 0, err
    r = open_run(token_run)
    aligner, clip = run_aligner(r), run_clip_space(r)
    ranking = run_shared_aligner(r).map(run_features(r))  # the whole run in memory, through the shared map
    scores = {p: property_scores(ranking, words, clip=clip) for p, words in properties_for(r, None).items()}
    chosen = printed(out, "components")
    assert chosen == property_components(scores, "location", 5)
    v = summed_in_clip(r, aligner, chosen)
    v = v - v.mean(0)
    similarity = (v @ v[7]) / (v.norm(dim=1) * v[7].norm())
    similarity[7] = -np.inf  # the query is not its own neighbour
    assert printed(out, "retrieved") == [r.ids[int(i)] for i in torch.argsort(similarity, descending=True)[:4]]
    assert (tmp_path / "q.png").is_file()


def test_retrieve_by_text_ranks_images_along_the_description(token_run, tmp_path, capsys):
    from fxdecomp.retrieval import description_components

    code, out, err = run_cli(capsys, "retrieve", token_run, "--text", "red", "--against", "green", "blue", "yellow",
                             "--images", "5", "--out", tmp_path / "r.png")
    assert code == 0, err
    r = open_run(token_run)
    aligner, clip = run_aligner(r), run_clip_space(r)
    t = clip.encode_texts(["red", "green", "blue", "yellow"]).double()
    direction = torch.nn.functional.normalize(t[0] - t.mean(0), dim=0)
    chosen = printed(out, "components")
    assert chosen == description_components(run_shared_aligner(r).map(run_features(r)), direction, 5)
    along = summed_in_clip(r, aligner, chosen) @ direction
    assert printed(out, "retrieved") == [r.ids[int(i)] for i in torch.argsort(along, descending=True)[:5]]


def test_spurious_over_a_waterbirds_run(tmp_path, capsys):
    write_waterbirds(tmp_path / "wb", ((40, 0.95, 41), (24, 0.5, 42), (24, 0.5, 43)))
    ckpt = tmp_path / "spurious.safetensors"
    save_file({k: v.contiguous() for k, v in load("world-spurious").state_dict().items()}, str(ckpt))
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "decompose", "world-spurious", tmp_path / "wb", "--checkpoint", ckpt, "--out",
                             run, "--batch", "22", "--workers", "0")
    assert code == 0, err
    r = open_run(run)
    assert r.head() is not None and set(r.labels) == {"target", "place", "group", "split"}
    code, out, err = run_cli(capsys, "spurious", run, "--spurious-words", "sea", "lake")
    assert code == 2 and "align" in err
    assert run_cli(capsys, "align", run, "--epochs", "1", "--workers", "0")[0] == 0
    code, out, err = run_cli(capsys, "spurious", run, "--spurious-words", "sea", "lake", "marsh", "forest", "desert",
                             "city", "--label-words", "circle", "square", "star", "--max-k", "5")
    assert code == 0, err
    result = json.loads((run / "spurious" / "result.json").read_text())
    assert 0 <= result["k"] <= 5 and len(result["ablated"]) == result["k"]
    # before any ablation, the numbers are the classifier's own on the test split
    head = r.head()
    test = np.nonzero(r.labels["split"] == 2)[0]
    logits = head(torch.from_numpy(np.stack([r.outputs()[i].numpy() for i in test])))
    pred = logits.argmax(1).numpy()
    groups, target = r.labels["group"][test], r.labels["target"][test]
    worst = min(float((pred[groups == g] == target[groups == g]).mean()) for g in range(4))
    assert result["worst_before"] == pytest.approx(worst)


def test_bad_arguments_get_one_line_and_exit_code_2(tmp_path, capsys, token_run):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG not really")
    cases = [
        (["decompose", "not-a-model", "world:4", "--out", tmp_path / "a"], "unknown model"),
        (["decompose", "world-vit", tmp_path / "empty", "--out", tmp_path / "b"], "no images"),
        (["decompose", "world-vit", tmp_path / "broken", "--out", tmp_path / "c", "--workers", "0"],
         "cannot read image"),
        (["decompose", "world-swin", "world:60:9", "--granularity", "token", "--out", token_run],
         "already holds a different run"),
        (["decompose", "world-vit", "world:abc", "--out", tmp_path / "d"], "world:N"),
        (["align", tmp_path / "empty"], "not a complete fxdecomp run"),
        (["align", token_run, "--clip", "tensorflow:clip"], "unknown CLIP"),
        (["heatmap", token_run, "--image", "999", "--component", "blocks.5.attn[h1]", "--out", tmp_path / "x.png"],
         "out of range"),
        (["heatmap", token_run, "--image", "1", "--component", "blocks.9.attn[h1]", "--out", tmp_path / "x.png"],
         "no component"),
        (["retrieve", token_run, "--image", "1", "--out", tmp_path / "x.png"], "--property"),
    ]
    for args, says in cases:
        code, out, err = run_cli(capsys, *args)
        assert code == 2, (args, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and says in lines[0], (args, err)
    with pytest.raises(SystemExit) as info:
        main(["decompose", "world-vit", "world:4", "--out", str(tmp_path / "e"), "--batch", "0"])
    assert info.value.code == 2 and "must be positive" in capsys.readouterr().err


def test_the_demo_shows_words_and_writes_its_report(tmp_path, capsys):
    code, out, err = run_cli(capsys, "demo", "--report", tmp_path / "demo")
    assert code == 0, err
    assert "in words" in out and "scores highest on" in out
    assert float(out.split("max relative error")[1].split()[0]) < 1e-5
    assert (tmp_path / "demo" / "index.html").is_file()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="needs Chromium and chromedriver (.ci/run installs "
                                                                "the Debian packages chromium, chromium-driver)")
def test_the_report_in_a_real_browser(token_run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    assert main(["explain", str(token_run), "--out", str(tmp_path / "report"), "--top", "4", "--images", "60"]) == 0
    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,2000"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        driver.get((tmp_path / "report" / "index.html").resolve().as_uri())
        assert "world-vit" in driver.title
        images = driver.find_elements("tag name", "img")
        assert len(images) >= 5
        loaded = driver.execute_script("return Array.from(document.images).every(i => i.complete && "
                                       "i.naturalWidth > 0)")
        assert loaded, "an image of the report did not load"
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        driver.quit()
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # text and figures, not a blank page
