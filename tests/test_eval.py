"""Evaluation library and the ov3 eval / reconstruct / caption / encode commands (tiny model, CPU)."""
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openvision3.cli import main
from openvision3.config import get_config
from openvision3.eval import EvalError, evaluate
from openvision3.eval.retrieval import recall_at_k
from openvision3.models.openvision3 import OpenVision3

from conftest import TINY_OVERRIDES

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 30), "blue": (30, 20, 230)}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return OpenVision3(get_config(None, list(TINY_OVERRIDES))).eval()


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("model") / "m"))


def _colour_folder(root, labelled: bool, per_class: int = 2):
    """folder: data of solid-colour PNGs with .txt captions; sub-directories = classes when labelled."""
    root.mkdir(parents=True, exist_ok=True)
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (40, 36), tuple(max(0, c - 10 * i) for c in rgb)).save(d / f"{i}.png")
            (d / f"{i}.txt").write_text(f"a {name} square\n")
    if labelled:
        (root / "classes.txt").write_text("\n".join(COLOURS) + "\n")
    return f"folder:{root}"


def _good_and_bad_images(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (48, 40), (200, 40, 40)).save(good)
    bad.write_text("this is text, not a PNG\n")
    return str(good), str(bad)


# --- the library ------------------------------------------------------------------------------
def test_evaluate_on_shapes_returns_every_metric_and_writes_the_report(tiny_model, tmp_path):
    out = tmp_path / "eval"
    r = evaluate(tiny_model, "shapes", num_samples=8, batch_size=8, out_dir=out, progress=False, probe_train=16)
    rec = r["recon"]
    assert rec["n"] == 8 and rec["psnr"] > 0 and 0 <= rec["lpips_alex"] <= 1 and -1 <= rec["ssim"] <= 1
    assert rec["rfid"] is None and rec["rfid_status"].startswith("skipped")
    assert 0 <= r["zeroshot"]["top1"] <= r["zeroshot"]["top5"] <= 1 and r["zeroshot"]["num_classes"] == 64
    # a right class has the right shape and colour, so each attribute is at least as often right
    assert r["zeroshot"]["top1"] <= min(r["zeroshot"]["top1_shape"], r["zeroshot"]["top1_colour"]) <= 1
    for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert 0 <= r["retrieval"][k] <= 1, k
    assert r["retrieval"]["i2t_r1"] <= r["retrieval"]["i2t_r5"] <= r["retrieval"]["i2t_r10"]
    assert 0 <= r["caption"]["bleu4"] <= 1 and 0 <= r["caption"]["rouge_l"] <= 1
    assert len(r["caption"]["examples"]) == 8
    assert 0 <= r["probe"]["top1"] <= 1 and r["probe"]["n_train"] == 16
    assert r["meta"]["resolution"] == 32
    assert r["meta"]["tasks"] == ["recon", "zeroshot", "retrieval", "caption", "probe"]
    for f in ("eval.json", "eval.md", "recon.png", "zeroshot_confusion.png", "retrieval.png", "captions.png"):
        assert (out / f).stat().st_size > 0, f
    saved = json.loads((out / "eval.json").read_text())
    assert saved["recon"]["psnr"] == pytest.approx(rec["psnr"]) and saved["recon"]["rfid"] is None
    md = (out / "eval.md").read_text()
    assert "PSNR" in md and "![Reconstruction](recon.png)" in md and "Skipped" not in md


def test_evaluate_on_webdataset_shards_packed_from_labelled_data(tiny_model, tmp_path):
    """wds: specs evaluate like any other source; labels and class names survive packing."""
    from openvision3.data.pack import pack_data
    r = pack_data(_colour_folder(tmp_path / "src", labelled=True), str(tmp_path / "wds"), shard_size=4,
                  image_format="png")
    assert r["samples"] == 6 and r["shards"] == 2
    out = evaluate(tiny_model, f"wds:{tmp_path / 'wds'}", tasks=("recon", "zeroshot", "retrieval", "caption"),
                   num_samples=6, batch_size=4, progress=False, write_files=False)
    assert out["recon"]["n"] == 6 and out["retrieval"]["n"] == 6 and len(out["caption"]["examples"]) == 6
    assert out["retrieval"]["unique_captions"] == 3
    assert out["zeroshot"]["num_classes"] == 3 and out["zeroshot"]["n"] == 6


def test_attribute_accuracy_tells_shape_errors_from_colour_errors():
    from openvision3.data import open_data
    from openvision3.eval.zeroshot import attribute_accuracy
    ds = open_data("shapes", split="test", train=False, kind="single")
    attrs = ds.class_attributes
    from openvision3.data.shapes import COLOR_NAMES, SHAPES
    for c, name in enumerate(ds.class_names):  # "red star": its colour's and its shape's index
        colour, shape = name.split()
        assert (attrs["colour"][c], attrs["shape"][c]) == (COLOR_NAMES.index(colour), SHAPES.index(shape))
    # every prediction keeps the colour and picks the next shape: colour always right, shape never
    conf = torch.zeros(64, 64, dtype=torch.long)
    for c in range(64):
        conf[c, (c + 8) % 64] = 3
    assert attribute_accuracy(conf, attrs) == {"top1_shape": 0.0, "top1_colour": 1.0}
    conf[torch.arange(64), torch.arange(64)] = 1  # one right answer per class in four
    got = attribute_accuracy(conf, attrs)
    assert got["top1_shape"] == pytest.approx(0.25) and got["top1_colour"] == pytest.approx(1.0)
    assert open_data("shapes?label=shape", split="test", train=False, kind="single").class_attributes is None


def test_recall_at_k_on_hand_built_similarities():
    n = 20
    eye = torch.eye(n, dtype=torch.bool)
    assert recall_at_k(torch.eye(n), eye) == {1: 1.0, 5: 1.0, 10: 1.0}
    # every query ranks gallery item j at place j, so query i finds its match at rank i
    sim = -torch.arange(n, dtype=torch.float).expand(n, n)
    assert recall_at_k(sim, eye) == pytest.approx({1: 1 / n, 5: 5 / n, 10: 10 / n})
    # the match always ranked last: no hit in the top 10 of 20
    assert recall_at_k(-torch.eye(n) - torch.arange(n) * 1e-3, eye) == {1: 0.0, 5: 0.0, 10: 0.0}
    # tie rule: an identical caption ranked first counts as a hit
    same = eye.clone()
    same[0, 1] = same[1, 0] = True
    sim = torch.zeros(n, n)
    sim[0, 1] = sim[1, 0] = 1.0
    assert recall_at_k(sim, same)[1] >= 2 / n and recall_at_k(sim, eye)[1] < recall_at_k(sim, same)[1]


def _rig(model, monkeypatch, text_class_of):
    """Image features = mean RGB (the dominant channel is the colour class); text features = one-hot
    of ``text_class_of[name]`` for the class named in the prompt."""
    names = list(COLOURS)

    def encode_image(x):
        return x.mean(dim=(2, 3))[:, None, :]  # (B, 1, 3)

    def encode_text(texts):
        rows = [F.one_hot(torch.tensor(text_class_of[next(n for n in names if n in t)]), 3).float() for t in texts]
        return torch.stack(rows)

    monkeypatch.setattr(model, "encode_image", encode_image)
    monkeypatch.setattr(model, "image_features", lambda tokens: tokens.mean(1))
    monkeypatch.setattr(model, "encode_text", encode_text)


def test_zeroshot_picks_the_right_class_when_features_agree_and_fails_when_they_do_not(
        tiny_model, tmp_path, monkeypatch):
    spec = _colour_folder(tmp_path / "labelled", labelled=True)
    _rig(tiny_model, monkeypatch, {"red": 0, "green": 1, "blue": 2})
    r = evaluate(tiny_model, spec, tasks="zeroshot", num_samples=6, batch_size=4, progress=False)
    assert r["zeroshot"]["top1"] == 1.0 and r["zeroshot"]["n"] == 6 and r["zeroshot"]["num_classes"] == 3
    _rig(tiny_model, monkeypatch, {"red": 1, "green": 2, "blue": 0})  # text towers disagree with images
    r = evaluate(tiny_model, spec, tasks="zeroshot", num_samples=6, batch_size=4, progress=False)
    assert r["zeroshot"]["top1"] == 0.0


def test_label_tasks_on_unlabelled_data_are_skipped_or_refused(tiny_model, tmp_path):
    spec = _colour_folder(tmp_path / "plain", labelled=False)
    r = evaluate(tiny_model, spec, tasks=("zeroshot", "probe"), num_samples=4, progress=False)
    assert "class labels" in r["zeroshot"]["skipped"] and "class labels" in r["probe"]["skipped"]
    with pytest.raises(EvalError, match="needs class labels"):
        evaluate(tiny_model, spec, tasks=("zeroshot",), num_samples=4, progress=False, require_labels=True)
    with pytest.raises(EvalError, match="unknown task"):
        evaluate(tiny_model, spec, tasks="recon,zeroshoot", progress=False)


# --- the command line -------------------------------------------------------------------------
def test_cli_eval_json_is_the_last_line(model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "--model", model_dir, "--data", "shapes", "--tasks", "recon,retrieval", "--num-samples", "4",
               "--batch-size", "4", "--out", str(out), "--no-progress", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    r = json.loads(lines[-1])
    assert set(r) == {"recon", "retrieval", "meta"} and r["recon"]["n"] == 4 and r["recon"]["rfid"] is None
    assert any(line.startswith("recon: psnr") for line in lines[:-1])
    assert (out / "eval.json").exists() and (out / "eval.md").exists() and (out / "recon.png").exists()


def test_cli_eval_default_tasks_skip_label_tasks_but_named_ones_fail(model_dir, tmp_path, capsys):
    spec = _colour_folder(tmp_path / "plain", labelled=False, per_class=1)
    rc = main(["eval", "--model", model_dir, "--data", spec, "--num-samples", "3", "--no-progress",
               "--lpips", "none", "--out", str(tmp_path / "ev"), "--json"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and "skipped" in r["zeroshot"] and "skipped" in r["probe"] and r["caption"]["n"] == 3
    assert "lpips_alex" not in r["recon"]
    rc = main(["eval", "--model", model_dir, "--data", spec, "--tasks", "zeroshot", "--out", str(tmp_path / "e2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "needs class labels" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--lpips", "squeeze"], "unknown net"),
    (["--tasks", "recon,nope"], "unknown task"),
    (["--inception", "/nonexistent/pt_inception.pth"], "--inception"),
])
def test_cli_eval_bad_options_give_one_line(model_dir, tmp_path, capsys, argv, message):
    rc = main(["eval", "--model", model_dir, "--data", "shapes", "--out", str(tmp_path / "e"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]


def test_cli_model_dir_without_weights_is_one_line(model_dir, tmp_path, capsys):
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.yaml").write_text(open(f"{model_dir}/config.yaml").read())
    for argv in (["eval", "--data", "shapes"], ["caption", str(tmp_path / "x.png")],
                 ["encode", "--data", "shapes", "--out", str(tmp_path / "f.safetensors")]):
        rc = main([argv[0], "--model", str(empty), *argv[1:]])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "model.safetensors is missing" in err[0], argv


def test_cli_reconstruct_writes_readable_images_and_reports_the_rest(model_dir, tmp_path, capsys):
    good, bad = _good_and_bad_images(tmp_path)
    out = tmp_path / "rec"
    rc = main(["reconstruct", "--model", model_dir, good, bad, "--out", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc == 0
    assert Image.open(out / "good.png").size == (32, 32)
    assert Image.open(out / "good_pair.png").size[0] > 2 * 32  # original | reconstruction
    assert not (out / "bad.png").exists()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and "bad.png" in err[0] and "not an image" in err[0]
    r = json.loads(cap.out.strip().splitlines()[-1])
    assert [im["path"] for im in r["images"]] == [good] and r["images"][0]["psnr"] > 0
    assert any(line.startswith(good + "\tPSNR") for line in cap.out.splitlines())
    rc = main(["reconstruct", "--model", model_dir, bad, "--out", str(out)])
    assert rc == 2 and "none of the 1 image(s) could be read" in capsys.readouterr().err


def test_cli_caption_prints_path_tab_caption(model_dir, tmp_path, capsys):
    good, bad = _good_and_bad_images(tmp_path)
    rc = main(["caption", "--model", model_dir, good, bad, str(tmp_path / "missing.jpg"), "--max-len", "6", "--json"])
    cap = capsys.readouterr()
    assert rc == 0
    lines = cap.out.strip().splitlines()
    path, caption = lines[0].split("\t")
    assert path == good and isinstance(caption, str)
    assert json.loads(lines[-1])["captions"][0]["caption"] == caption
    err = cap.err.strip().splitlines()
    assert len(err) == 2 and "bad.png" in err[0] and "missing.jpg" in err[1]


def test_cli_encode_writes_tokens_pooled_labels_and_keys(model_dir, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file
    out = tmp_path / "feats.safetensors"
    rc = main(["encode", "--model", model_dir, "--data", "shapes", "--num-samples", "6", "--batch-size", "4",
               "--out", str(out), "--no-progress", "--json"])
    assert rc == 0
    t = load_file(str(out))
    assert t["tokens"].shape == (6, 16, 32) and t["pooled"].shape == (6, 16) and t["labels"].shape == (6,)
    model = OpenVision3.from_pretrained(model_dir)
    assert torch.allclose(model.image_features(t["tokens"]), t["pooled"], atol=1e-5)
    side = json.loads((tmp_path / "feats.json").read_text())
    assert len(side["keys"]) == len(side["captions"]) == 6 and len(side["class_names"]) == 64
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["sidecar"] == "feats.json" and f.metadata()["data"] == "shapes"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 6
    # unlabelled data: no labels tensor; a wrong suffix is one line
    spec = _colour_folder(tmp_path / "plain", labelled=False, per_class=1)
    assert main(["encode", "--model", model_dir, "--data", spec, "--out", str(tmp_path / "p.safetensors"),
                 "--no-progress"]) == 0
    assert set(load_file(str(tmp_path / "p.safetensors"))) == {"tokens", "pooled"}
    capsys.readouterr()
    assert main(["encode", "--model", model_dir, "--data", "shapes", "--out", str(tmp_path / "f.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


def test_picture_titles_keep_each_line_and_wrap_it_alone():
    from openvision3.eval.common import wrap_title
    gt = "small red star left of large blue circle and medium green ring top"
    title = wrap_title(f"GT: {gt}\nOURS: red star", width=40)
    lines = title.split("\n")
    assert lines[-1] == "OURS: red star"  # not run into the end of the GT line
    assert all(len(line) <= 40 for line in lines)
    assert " ".join(lines[:-1]) == f"GT: {gt}"  # nothing cut
    assert len(wrap_title("a " * 200, width=10, max_lines=3).split("\n")) == 3


def test_cider_ranks_matching_captions_first_and_ignores_case_and_punctuation():
    from openvision3.eval.captioning import caption_scores
    refs = ["a red star", "two blue circles", "a small green ring", "a large yellow square"]
    same = caption_scores(refs, refs)["cider"]
    noisy = ["A red star.", "Two blue circles!", "a small, green ring", "A large yellow square"]
    assert caption_scores(noisy, refs)["cider"] == pytest.approx(same)
    assert caption_scores(refs[1:] + refs[:1], refs)["cider"] < same / 2


def test_probe_baselines_are_the_same_images_as_pixels_and_as_vae_latents(tiny_model):
    from openvision3.eval.common import iterate, open_for
    from openvision3.eval.probe import FEATURES, eval_probe, features
    ds = open_for("probe", "shapes", "test", 32)
    x, y = features(tiny_model, ds, 6, 4, "probe", progress=False, kinds=FEATURES)
    images = torch.cat([b["image"] for b in iterate(ds, 6, 4, "again", progress=False)])
    assert len(y) == 6
    torch.testing.assert_close(torch.from_numpy(x["pixels"]), images.flatten(1))
    with torch.no_grad():
        latents = tiny_model.vae.encode(images)
        pooled = tiny_model.image_features(tiny_model.encode_image(images))
    torch.testing.assert_close(torch.from_numpy(x["vae_latents"]), latents.flatten(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(x["tokens"]), pooled, rtol=1e-4, atol=1e-5)
    r = eval_probe(tiny_model, open_for("probe", "shapes", "train", 32), ds, 16, 8, 8, progress=False)
    assert set(r["baselines"]) == {"pixels", "vae_latents"}
    assert r["baselines"]["pixels"]["dim"] == 3 * 32 * 32 and 0 <= r["baselines"]["pixels"]["top1"] <= 1
    assert r["baselines"]["vae_latents"]["dim"] == latents[0].numel()
