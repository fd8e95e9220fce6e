"""Fault injection on the converters and inspect, through their command lines: inputs of the
wrong shape or encoding, null captions, symlink loops, bad sizes and outputs are one line (exit
2) or a counted skip; re-running into an output dir with another input or other parameters is
refused, and --overwrite rebuilds it whole (never a mix of old and new shards)."""
import json
import os

import pytest
import webdataset as wds
from PIL import Image

from helpers import assert_one_error, run_cli


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    for i in range(6):
        Image.new("RGB", (40, 32), (40 * i, 90, 200)).save(root / f"im{i}.png")
    return root


def _convert(kind, source, out, *extra, image_root=None):
    root = ["--image-root", str(image_root)] if image_root else []
    return run_cli("-m", "llip.data.convert", kind, str(source), "--out", str(out), *root,
                   "--workers", "1", *extra, timeout=120)


def _captions(out_dir):
    found = {}
    for shard in sorted(f for f in os.listdir(out_dir) if f.endswith(".tar")):
        for s in wds.WebDataset(str(out_dir / shard), shardshuffle=False, empty_check=False):
            found[s["__key__"]] = s["txt"].decode()
    return found


@pytest.mark.parametrize("content,needle", [
    ('{"image": "im0.png", "caption": "a"}', "expected a JSON list"),
    ('["im0.png", "im1.png"]', "record 0 is not an object"),
    ('[{"image": ["im0.png"], "caption": "a"}]', "record 0 has image=['im0.png']"),
    ('[{"image": "im0.png", "caption": "a"}', "is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "is nested too deeply"),
])
def test_json_of_the_wrong_shape_is_one_line(images, tmp_path, content, needle):
    source = tmp_path / "pairs.json"
    source.write_text(content)
    assert_one_error(_convert("json", source, tmp_path / "out", image_root=images), needle)


def test_non_utf8_input_is_one_line_and_a_null_caption_is_skipped_not_none(images, tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_bytes(b"filepath,title\nim0.png,caf\xe9 au lait\n")
    assert_one_error(_convert("csv", csv, tmp_path / "a", image_root=images), "is not UTF-8 text")
    source = tmp_path / "pairs.json"
    source.write_text(json.dumps([{"image": "im0.png", "caption": None},
                                  {"image": "im1.png", "caption": "a caption"},
                                  {"image": "im2.png", "caption": [None, "kept"]}]))
    done = _convert("json", source, tmp_path / "b", image_root=images)
    assert done.returncode == 0, done.stderr[-2000:]
    captions = _captions(tmp_path / "b")
    assert sorted(captions.values()) == ["a caption", "kept"]  # never the text "None"
    failed = (tmp_path / "b" / "failed.tsv").read_text().splitlines()
    assert len(failed) == 2 and failed[1].endswith("no caption")


def test_symlink_loop_in_a_folder_terminates(images, tmp_path):
    (images / "im0.txt").write_text("zero")
    (images / "sub").mkdir()
    os.symlink("..", images / "sub" / "back")  # images/sub/back -> images: a loop
    done = _convert("folder", images, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(_captions(tmp_path / "out").values()) == ["zero"]  # once, not once per lap


@pytest.mark.parametrize("extra,needle", [
    (["--per-shard", "0"], "--per-shard=0 must be >= 1"),
    (["--per-shard", "-3"], "--per-shard=-3 must be >= 1"),
])
def test_bad_sizes_are_one_line(images, tmp_path, extra, needle):
    source = tmp_path / "pairs.json"
    source.write_text(json.dumps([{"image": "im0.png", "caption": "a"}]))
    assert_one_error(_convert("json", source, tmp_path / "out", *extra, image_root=images), needle)


def test_output_that_is_a_file_is_one_line(images, tmp_path):
    source = tmp_path / "pairs.json"
    source.write_text(json.dumps([{"image": "im0.png", "caption": "a"}]))
    (tmp_path / "taken").write_text("not a directory")
    assert_one_error(_convert("json", source, tmp_path / "taken", image_root=images),
               f"{tmp_path / 'taken'} exists and is not a directory")
    assert (tmp_path / "taken").read_text() == "not a directory"


def test_reconversion_is_refused_or_rebuilt_whole(images, tmp_path):
    source, out = tmp_path / "pairs.json", tmp_path / "out"
    records = [{"image": f"im{i}.png", "caption": f"old {i}"} for i in range(6)]
    source.write_text(json.dumps(records))
    assert _convert("json", source, out, "--per-shard", "4", image_root=images).returncode == 0
    before = _captions(out)

    assert_one_error(_convert("json", source, out, "--per-shard", "3", image_root=images),
               "per_shard 4 -> 3")
    assert _captions(out) == before  # refused: nothing touched
    rebuilt = _convert("json", source, out, "--per-shard", "3", "--overwrite",
                       image_root=images)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert sorted(_captions(out).values()) == sorted(before.values())  # 6 samples, not 8
    assert sorted(f for f in os.listdir(out) if f.endswith(".tar")) == \
        ["shard-000000.tar", "shard-000001.tar"]

    source.write_text(json.dumps([{**r, "caption": f"new {i}"} for i, r in enumerate(records)]))
    assert_one_error(_convert("json", source, out, "--per-shard", "3", image_root=images),
               "input_sha256")
    (out / "notes.txt").write_text("the user's own file")
    again = _convert("json", source, out, "--per-shard", "3", "--overwrite", image_root=images)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(_captions(out).values()) == [f"new {i}" for i in range(6)]
    assert (out / "notes.txt").read_text() == "the user's own file"  # only its own files go
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total_samples"] == 6


def test_inspect_of_a_broken_manifest_is_one_line(images, tmp_path):
    source = tmp_path / "pairs.json"
    source.write_text(json.dumps([{"image": "im0.png", "caption": "a"}]))
    assert _convert("json", source, tmp_path / "out", image_root=images).returncode == 0
    (tmp_path / "out" / "manifest.json").write_text('{"shards": ["shard-000000.tar"]}')
    shown = run_cli("-m", "llip.data.inspect", str(tmp_path / "out" / "shard-000000.tar"),
                    "--fast")
    assert_one_error(shown, "is not a manifest of llip.data.convert")
