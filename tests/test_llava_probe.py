"""`ov3 probe llava`: the questions are right, the tokenizer closed, labels only on answers, and the
whole recipe runs end to end on a tiny model (a few steps: what it reaches is measured in docs/llava.md)."""
import json
import random

import numpy as np
import torch

from openvision3.cli import main
from openvision3.data.shapes import render
from openvision3.models.openvision3 import OpenVision3
from openvision3.recipes.llava_probe import majority_baselines
from openvision3.recipes.llava_probe_data import (QUESTION_TYPES, build_tokenizer, conversation_sequence,
                                                   questions_for, render_pool)


def test_questions_agree_with_the_drawn_objects():
    rng = np.random.default_rng(0)
    seen = set()
    for i in range(300):
        _, _, _, objs = render(i, split="train", kind="mixed", resolution=32, single_fraction=1 / 3)
        by_shape = {o["shape"]: o for o in objs}
        for qtype, q, a in questions_for(objs, rng):
            seen.add(qtype)
            words = q.rstrip(" ?").split()
            if qtype == "colour":
                assert a == by_shape[words[-1]]["color"] and [o["shape"] for o in objs].count(words[-1]) == 1
            elif qtype == "count":
                assert a == ["one", "two", "three"][len(objs) - 1]
            elif qtype == "relation":  # "where is the A relative to the B": from the coordinates
                o1, o2 = by_shape[words[3]], by_shape[words[-1]]
                dx, dy = o1["x"] - o2["x"], o1["y"] - o2["y"]
                assert a == (("left" if dx < 0 else "right") if abs(dx) >= abs(dy) else ("above" if dy < 0 else "below"))
            else:
                colour, shape = words[-2], words[-1]
                assert a == ("yes" if any(o["color"] == colour and o["shape"] == shape for o in objs) else "no")
    assert seen == set(QUESTION_TYPES)


def test_tokenizer_is_closed_and_labels_cover_answers_only():
    _, caps, qas = render_pool(40, "train", 32, 0, 1 / 3)
    tok = build_tokenizer(caps + [f"{q} {a}" for qs in qas for _, q, a in qs] + ["user : assistant :"])
    ids, labels = conversation_sequence(tok, qas[0], 4, tok.convert_tokens_to_ids("<image>"), random.Random(0))
    assert tok.unk_token_id not in ids and ids.count(tok.convert_tokens_to_ids("<image>")) == 4
    supervised = [i for i, lab in zip(ids, labels) if lab != -100]
    answers = [w for _, _, a in qas[0] for w in (a, "</s>")]
    assert sorted(tok.convert_ids_to_tokens(supervised)) == sorted(answers)


def test_majority_baseline():
    train = [[("count", "q", "two")], [("count", "q", "two")], [("count", "q", "one")]]
    test = [[("count", "q", "two")], [("count", "q", "three")]]
    b = majority_baselines(train, test)
    assert b["count"] == {"answer": "two", "accuracy": 0.5} and b["overall"]["accuracy"] == 0.5


def test_probe_runs_end_to_end_and_bad_input_is_one_line(tiny_cfg, tmp_path, capsys):
    torch.manual_seed(0)
    OpenVision3(tiny_cfg).save_pretrained(tmp_path / "model")
    args = ["probe", "llava", "--model", str(tmp_path / "model"), "--steps", "2", "--train-images", "12",
            "--test-images", "6", "--no-progress", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(r["per_type"]) <= set(QUESTION_TYPES) and 0.0 <= r["accuracy"] <= 1.0
    assert {"accuracy", "per_type", "steps", "seconds", "baselines"} <= set(r)
    assert (tmp_path / "model" / "eval" / "llava_probe.json").exists()  # where the model card looks
    assert main(args[:4] + ["--features", "vae", "--steps", "1", "--train-images", "8", "--test-images", "4",
                            "--no-progress", "--out", str(tmp_path / "vae")]) == 0
    assert json.loads((tmp_path / "vae" / "llava_probe.json").read_text())["vision_feature_layer"] == -1
    capsys.readouterr()
    assert main(["probe", "llava", "--model", str(tmp_path), "--no-progress"]) == 2
    assert main(args[:4] + ["--vision-feature-layer", "5", "--steps", "1", "--train-images", "4",
                            "--test-images", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is not an OpenVision 3 model" in err[0] and "out of range" in err[1]


def test_cached_tower_features_give_llava_s_own_loss_and_gradients(tiny_cfg, tmp_path):
    """The probe trains on the frozen tower's features computed once (tower_features); the loss and
    the trainable parameters' gradients must be LLaVA's own from pixels."""
    from openvision3.interop import transformers as ov3hf
    from openvision3.recipes.llava_probe import (ProbeBatches, ProbeConfig, build_llava, llava_forward, load_tower,
                                                  tower_features)
    from openvision3.recipes.llava_probe_data import SPECIAL
    torch.manual_seed(0)
    OpenVision3(tiny_cfg).save_pretrained(tmp_path / "model")
    tower = load_tower(tmp_path / "model")
    imgs, _, qas = render_pool(6, "train", 32, 0, 1 / 3)
    tok = build_tokenizer([f"{q} {a}" for qs in qas for _, q, a in qs] + ["user : assistant :"])
    pcfg = ProbeConfig(batch_size=4)
    llava = build_llava(tower, tok, pcfg, -2)
    ov3hf.set_llava_trainable(llava, 2)
    pixels = ov3hf.llava_processor(tower.config, tok).image_processor(imgs, return_tensors="pt")["pixel_values"]
    feats = tower_features(llava, pixels, batch_size=4)  # two chunks
    n_image, image_id = ov3hf.num_image_tokens(tower.config), tok.convert_tokens_to_ids(SPECIAL["image"])
    assert feats.shape == (6, n_image, tower.config.hidden_size)

    class Seq:
        n = len(qas)

        def __call__(self, i):
            return conversation_sequence(tok, qas[i], n_image, image_id, random.Random(i))
    from_pixels = next(ProbeBatches(Seq(), pixels, pcfg.batch_size, tok, {"batch": random.Random(3)}))
    cached = next(ProbeBatches(Seq(), feats, pcfg.batch_size, tok, {"batch": random.Random(3)}, "image_features"))
    assert torch.equal(from_pixels["input_ids"], cached["input_ids"])
    grads = []
    for batch in (from_pixels, cached):
        llava.zero_grad(set_to_none=True)
        loss = llava_forward(llava, batch).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in llava.named_parameters() if p.grad is not None}))
    (l1, g1), (l2, g2) = grads
    assert torch.allclose(l1, l2, atol=1e-5) and g1.keys() == g2.keys() and len(g1) > 0
    assert not any(n.startswith("model.vision_tower") for n in g1)
    for n in g1:
        assert torch.allclose(g1[n], g2[n], atol=1e-5, rtol=1e-4), n
