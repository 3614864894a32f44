"""`ov3 serve` through its HTTP API (gradio_client), on a tiny model with a tiny generator: every
view's pictures have the right size and are not blank, its numbers are in range, bad input gets a
message and the server answers the next request; an encoder-only tower says what it lacks."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="ov3 serve needs the app extra: pip install -e '.[app]'")
from gradio_client import Client, handle_file  # noqa: E402

from openvision3 import cli  # noqa: E402
from openvision3.app.explorer import Explorer  # noqa: E402
from openvision3.app.page import launch  # noqa: E402
from openvision3.app.parts import load_generator, load_parts  # noqa: E402

from serve_helpers import (GRID, RES, free_port, make_example, make_generator, make_model,  # noqa: E402
                           not_blank, read)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def generator_run(model_dir, tmp_path_factory):
    return make_generator(model_dir, tmp_path_factory.mktemp("gen"))


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return make_example(tmp_path_factory.mktemp("img"))


def serve(parts, generator=None, gallery=None):
    ex = Explorer(parts, generator, gallery_spec=gallery, gallery_size=40)
    ex.warm_up()
    port = free_port()
    page = launch(ex, port=port, block=False)
    return page, Client(f"http://127.0.0.1:{port}/", verbose=False), ex


@pytest.fixture(scope="module")
def app(model_dir, generator_run):
    page, client, ex = serve(load_parts(str(model_dir), device="cpu"), load_generator(str(generator_run), "cpu"))
    yield client, ex
    page.close()


def test_reconstruct_returns_three_pictures_at_the_model_resolution_with_psnr_and_lpips(app, example):
    client, ex = app
    orig, recon, diff, text = client.predict(handle_file(example), 0.0, api_name="/reconstruct")
    for p in (orig, recon):
        assert read(p).shape == (RES, RES, 3) and not_blank(read(p))
    assert read(diff).shape == (RES, RES, 3)
    # the page's numbers are the ones the library computes for the same picture
    r = ex.reconstruct(ex.image(example)[0])
    assert f"PSNR {r['psnr']:.2f} dB" in text and f"LPIPS (AlexNet) {r['lpips']:.3f}" in text
    assert 0 < r["psnr"] < 60 and 0 <= r["lpips"] <= 1
    assert np.array_equal(read(orig), r["original"]) and np.array_equal(read(recon), r["reconstruction"])
    # token noise changes the reconstruction; the same sigma gives the same picture (seeded)
    _, noisy, _, text2 = client.predict(handle_file(example), 1.5, api_name="/reconstruct")
    _, noisy2, _, _ = client.predict(handle_file(example), 1.5, api_name="/reconstruct")
    assert "σ = 1.50" in text2 and not np.array_equal(read(noisy), read(recon))
    assert np.array_equal(read(noisy), read(noisy2))


def test_tokens_pca_picture_and_similarity_peak_at_the_chosen_token(app, example):
    client, ex = app
    pca, heat, text = client.predict(handle_file(example), 1, 2, api_name="/tokens")
    pca, heat = read(pca), read(heat)
    side = GRID * ex.token_block
    assert pca.shape == heat.shape == (side, side, 3) and side >= 256 and not_blank(pca) and not_blank(heat)
    # one colour per token: every block is uniform
    assert (pca.reshape(GRID, ex.token_block, GRID, ex.token_block, 3).std(axis=(1, 3)) == 0).all()
    assert "token (1, 2): cosine to itself 1.00" in text
    # the chosen token is the most similar to itself: yellow (viridis' top) at row 1, column 2
    heat2, text2 = client.predict(handle_file(example), 3, 0, api_name="/similarity")
    blocks = read(heat2).reshape(GRID, ex.token_block, GRID, ex.token_block, 3).mean(axis=(1, 3))
    brightness = blocks[..., :2].sum(-1)  # yellow: high red and green
    assert np.unravel_index(brightness.argmax(), brightness.shape) == (3, 0) and "token (3, 0)" in text2
    b = ex.token_block  # a click at pixel (2.5 blocks, 3.9 blocks) is token row 3, column 2
    assert ex.token_at(x_px=int(2.5 * b), y_px=int(3.9 * b)) == (3, 2) and ex.token_at(9999, -5) == (0, GRID - 1)
    _, bad = client.predict(handle_file(example), 4, 0, api_name="/similarity")
    assert "outside the 4 x 4 grid" in bad


def test_understand_gives_probabilities_over_the_typed_labels_and_a_caption(app, example):
    client, _ = app
    label, caption, text = client.predict(handle_file(example), "red circle, blue square , ,red circle, cat",
                                          api_name="/understand")
    conf = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(conf) == {"red circle", "blue square", "cat"} and abs(sum(conf.values()) - 1) < 1e-4
    assert all(0 <= v <= 1 for v in conf.values()) and isinstance(caption, str) and text == "3 labels"
    _, _, empty = client.predict(handle_file(example), " , ", api_name="/understand")
    assert "type at least one label" in empty


def test_retrieve_text_to_image_and_image_to_text_over_a_gallery_encoded_once(app, example):
    client, ex = app
    found, text = client.predict("red star", "", 5, api_name="/search_text")
    assert len(found) == 5 and "gallery `shapes?captions=" in text and "40 images" in text
    scores = [float(f["caption"].split(" · ")[0]) for f in found]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert all(read(f["image"]).shape == (RES, RES, 3) and not_blank(read(f["image"])) for f in found)
    # the scores are the cosines of the query to the gallery's image embeddings
    g = ex.gallery()
    q = torch.nn.functional.normalize(ex.parts.model.encode_text(["red star"]).float(), dim=-1)[0]
    assert abs(float((g.features @ q.detach()).max()) - scores[0]) < 1e-3
    table, _ = client.predict(handle_file(example), "", 3, api_name="/search_image")
    rows = table["data"]
    assert [r[0] for r in rows] == [1, 2, 3] and all(r[1] in g.texts for r in rows)
    assert rows[0][2] >= rows[1][2] >= rows[2][2]
    assert len(ex._galleries) == 1  # the default gallery was encoded once, at start-up


def test_generate_returns_a_grid_of_samples(app):
    client, ex = app
    grid, text = client.predict(3, 2.0, 2, 4, 0, api_name="/generate")
    a = read(grid)
    assert a.shape == (RES + 4, 4 * (RES + 2) + 2, 3) and not_blank(a)  # 4 samples in a row, 2 px gaps
    assert f"4 samples of '{ex.class_names()[3]}'" in text
    again, _ = client.predict(3, 2.0, 2, 4, 0, api_name="/generate")
    assert np.array_equal(read(again), a)  # seeded


def test_bad_input_gets_a_message_and_the_server_serves_the_next_request(app, example, tmp_path):
    client, _ = app
    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    out = client.predict(handle_file(str(text_file)), 0.0, api_name="/reconstruct")
    assert out[:3] == (None, None, None) and "'notes.png' cannot be used: not an image" in out[3]
    _, _, msg = client.predict(handle_file(str(text_file)), "red circle", api_name="/understand")
    assert "not an image" in msg
    # a 6000 px photo is read (at the model's resolution) and said so
    photo = tmp_path / "photo.jpg"
    ramp = Image.linear_gradient("L").resize((6000, 4000))
    Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_180), ramp)).save(photo, quality=70)
    orig, _, _, text = client.predict(handle_file(str(photo)), 0.0, api_name="/reconstruct")
    assert read(orig).shape == (RES, RES, 3) and "PSNR" in text
    from openvision3.app.uploads import read_upload
    assert "6000 x 4000 px picture: the model reads it at 32 x 32" in read_upload(str(photo), RES)[1]
    # a gallery spec that does not exist
    found, msg = client.predict("red star", "folder:/no/such/dir", 3, api_name="/search_text")
    assert not found and "gallery 'folder:/no/such/dir' cannot be opened" in msg
    _, msg = client.predict("red star", "nonsense:x", 3, api_name="/search_text")
    assert "cannot be opened: unknown data spec" in msg
    _, msg = client.predict("   ", "", 3, api_name="/search_text")
    assert "type a text query" in msg
    # and the server still answers
    orig, _, _, text = client.predict(handle_file(example), 0.0, api_name="/reconstruct")
    assert read(orig).shape == (RES, RES, 3) and "PSNR" in text


def test_encoder_only_tower_shows_tokens_and_says_what_it_lacks(model_dir, tmp_path, example):
    from openvision3.interop.transformers import export_hf
    export_hf(str(model_dir), tmp_path / "tower")
    parts = load_parts(str(tmp_path / "tower"), device="cpu")
    assert parts.model is None and parts.grid == (GRID, GRID)
    page, client, ex = serve(parts)
    try:
        pca, heat, text = client.predict(handle_file(example), 0, 0, api_name="/tokens")
        assert read(pca).shape[:2] == (GRID * ex.token_block,) * 2 and "cosine to itself 1.00" in text
        out = client.predict(handle_file(example), 0.0, api_name="/reconstruct")
        assert out[0] is None and "reconstruct needs a latent decoder" in out[3] and "vision tower only" in out[3]
        assert "needs a text encoder" in client.predict(handle_file(example), "a, b", api_name="/understand")[2]
        assert "retrieve needs a text encoder" in client.predict("red", "", 3, api_name="/search_text")[1]
        assert "/generate" not in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        # the same lines are in the page before anything is asked
        config = json.dumps(page.config)
        assert "no generator: start the page with --generator RUN" in config
        assert "reconstruct needs a latent decoder" in config
    finally:
        page.close()


@pytest.mark.parametrize("argv, message", [
    (["--model", "/no/such/model"], "cannot load model '/no/such/model'"),
    (["--model", "MODEL", "--generator", "/no/such/run"], "cannot load generator '/no/such/run'"),
])
def test_cli_bad_model_or_generator_is_one_line(model_dir, capsys, argv, message):
    argv = [str(model_dir) if a == "MODEL" else a for a in argv]
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ov3 serve: error:") and message in err and len(err.splitlines()) == 1
