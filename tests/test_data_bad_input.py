"""Broken files are skipped and counted by reason, never a crash or a silent drop; bad specs
raise DataSpecError and the CLI exits non-zero with one line."""
import io
import json
import tarfile
from collections import Counter

import pytest
from PIL import Image

from openvision3.cli import main
from openvision3.data import DataSpecError, make_loader, open_data
from openvision3.data.inspect import inspect_data


def _bytes(fmt, size=(24, 24)):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, fmt)
    return buf.getvalue()


EXPECTED_FOLDER = Counter({"empty_file": 1, "truncated_image": 2, "not_an_image": 1,
                           "empty_caption": 1, "caption_not_utf8": 1, "no_caption": 1})


@pytest.fixture
def bad_folder(tmp_path):
    files = {
        "good1.png": _bytes("PNG"), "good2.jpg": _bytes("JPEG"),
        "zero.jpg": b"", "trunc.png": _bytes("PNG", (64, 64))[:60],
        "trunc.jpg": _bytes("JPEG", (64, 64))[:200], "text.jpg": b"this is not an image\n",
        "emptycap.png": _bytes("PNG"), "latin1.png": _bytes("PNG"), "nocap.png": _bytes("PNG"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        if name != "nocap.png":
            (tmp_path / name).with_suffix(".txt").write_bytes(f"caption of {name}".encode())
    (tmp_path / "emptycap.txt").write_bytes(b"\n   \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    return tmp_path


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_bad_files_counted_by_reason(bad_folder, workers):
    ds = open_data(f"folder:{bad_folder}", resolution=16, train=False)
    loader = make_loader(ds, 2, num_workers=workers)
    seen, per_batch = [], Counter()
    for b in loader:
        seen += b["key"]
        per_batch.update(b["skipped"])
    assert sorted(seen) == ["good1.png", "good2.jpg"]
    assert loader.skipped_total == EXPECTED_FOLDER
    # Every skip reaches some batch too (the final ones ride on the last batch or the total).
    assert per_batch + Counter() <= EXPECTED_FOLDER


def test_folder_skip_deltas_reach_batches_when_training(bad_folder):
    ds = open_data(f"folder:{bad_folder}", resolution=16, train=True)  # infinite
    it, total = iter(make_loader(ds, 2)), Counter()
    for _ in range(5):  # one batch = one epoch (2 good samples)
        total.update(next(it)["skipped"])
    # Each epoch meets every bad file again; only the last epoch's trailing skips are still pending.
    for reason, n in EXPECTED_FOLDER.items():
        assert 4 * n <= total[reason] <= 5 * n, (reason, total)
    assert set(total) == set(EXPECTED_FOLDER)


def _tar(path, members, truncate_to=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(raw[:truncate_to] if truncate_to else raw)


@pytest.fixture
def bad_shards(tmp_path):
    good = [("a.jpg", _bytes("JPEG")), ("a.txt", b"good a"),
            ("b.png", _bytes("PNG")),  # no caption
            ("c.txt", b"only a caption"),  # no image
            ("d.jpg", b"not a jpeg"), ("d.txt", b"bad image"),
            ("e.jpg", _bytes("JPEG")), ("e.txt", b"\xff\xfe\xfa"),
            ("f.jpg", _bytes("JPEG")), ("f.txt", b"good f")]
    _tar(tmp_path / "000.tar", good)
    big = _bytes("PNG", (200, 200))
    _tar(tmp_path / "001.tar", [("g.jpg", _bytes("JPEG")), ("g.txt", b"good g"),
                                ("h.png", big), ("h.txt", b"cut off")], truncate_to=2048 + len(big) // 2)
    (tmp_path / "002.tar").write_bytes(b"")
    return tmp_path


def test_wds_bad_members_and_truncated_tar(bad_shards):
    ds = open_data(f"wds:{bad_shards}/{{000..002}}.tar", resolution=16, train=False)
    loader = make_loader(ds, 4)
    keys = [k for b in loader for k in b["key"]]
    assert keys == ["a", "f", "g"]
    assert loader.skipped_total == Counter({"no_caption": 1, "no_image": 1, "not_an_image": 1,
                                            "caption_not_utf8": 1, "tar_error": 2})


def test_inspect_reports_reasons_and_cli_json(bad_folder, capsys, tmp_path):
    r = inspect_data(f"folder:{bad_folder}")
    assert r["samples"] == 2 and r["skipped"] == 7 and r["skipped_by_reason"] == dict(EXPECTED_FOLDER)
    grid = tmp_path / "grid.png"
    assert main(["data", "inspect", f"folder:{bad_folder}", "--json", "--grid", str(grid)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["samples"] == 2 and last["skipped_by_reason"]["truncated_image"] == 2
    assert grid.stat().st_size > 1000


def test_cli_pack_then_inspect(tmp_path, capsys):
    assert main(["data", "pack", "shapes?n=10", "--split", "val", "--out", str(tmp_path / "s"),
                 "--shard-size", "4", "--resolution", "24", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shards"] == 3
    assert main(["data", "inspect", f"wds:{tmp_path / 's'}", "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["samples"] == 10 and last["image_sizes"] == {"24x24": 10}


@pytest.mark.parametrize("spec", ["", "nope:x", "folder:/does/not/exist", "folder:", "wds:",
                                  "wds:/does/not/exist/{000..009}.tar", "shapes?bogus=1"])
def test_bad_specs_raise_one_clear_error(spec, capsys):
    with pytest.raises(DataSpecError):
        open_data(spec)
    assert main(["data", "inspect", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ov3 data: error:")


def test_empty_folder_and_empty_dir_of_tars(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataSpecError, match="no image files"):
        open_data(f"folder:{tmp_path}")
    with pytest.raises(DataSpecError, match="no .tar"):
        open_data(f"wds:{tmp_path}")


def test_all_bad_training_stream_errors_instead_of_spinning(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    (tmp_path / "x.txt").write_text("cap")
    with pytest.raises(DataSpecError, match="no readable samples"):
        next(iter(make_loader(open_data(f"folder:{tmp_path}", resolution=8, train=True), 2)))
