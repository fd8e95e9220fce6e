"""Images are not changed behind the user's back, and a file that only looks like an image stays
one item's problem: 16-bit PNGs keep their grey levels, EXIF-rotated JPEGs come out upright, a
1 x 4,000,000 PNG is refused by name, and a FIFO named like an image never blocks a reader: in
training's decoder and in the converter (files built for real); imagefolder evals read their
files through the same open_image."""
import io
import os

import numpy
import pytest
import webdataset as wds
from PIL import Image

from helpers import run_cli
from llip.data import open_image, sample_image


def _png_16bit(value: int, size=(24, 16)) -> bytes:
    image = Image.fromarray(numpy.full(size[::-1], value, dtype=numpy.uint16))  # mode I;16
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_rotated() -> bytes:
    """A 40x20 picture, red left and blue right, stored as a camera stores a portrait shot:
    the pixels as the sensor read them, with EXIF orientation 6 (rotate 90 degrees clockwise)."""
    pixels = numpy.zeros((20, 40, 3), dtype=numpy.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def _png_thin() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4_000_000, 1)).save(buf, format="PNG")
    return buf.getvalue()


def test_decoding_keeps_what_the_image_shows():
    grey = numpy.asarray(sample_image({"__key__": "a", "png": _png_16bit(32768)}))
    assert grey.shape == (16, 24, 3) and abs(int(grey.mean()) - 128) <= 1  # not 255: white
    upright = sample_image({"__key__": "b", "jpg": _jpeg_rotated()})
    assert upright.size == (20, 40)  # rotated to portrait: 20 wide, 40 tall
    top, bottom = numpy.asarray(upright)[2, 10], numpy.asarray(upright)[-3, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # red on top
    thin = _png_thin()
    assert len(thin) < 20_000
    with pytest.raises(ValueError, match=r"4000000x1 pixels: an aspect ratio beyond 50:1"):
        sample_image({"__key__": "c", "png": thin})


def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "cat.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is not a regular file"):
        open_image(str(fifo))


def test_converter_on_hostile_files(tmp_path):
    """`convert folder` over a 16-bit PNG, a rotated JPEG, a thin PNG and a FIFO: two samples,
    upright and grey as they were; the other two listed as failed; nothing hangs (timeout)."""
    src = tmp_path / "src"
    src.mkdir()
    for name, data in (("grey.png", _png_16bit(32768)), ("rot.jpg", _jpeg_rotated()),
                       ("thin.png", _png_thin())):
        (src / name).write_bytes(data)
        (src / name).with_suffix(".txt").write_text(f"a picture called {name}")
    os.mkfifo(src / "pipe.jpg")
    (src / "pipe.txt").write_text("a pipe")
    out = tmp_path / "shards"
    done = run_cli("-m", "llip.data.convert", "folder", str(src), "--out", str(out),
                   "--workers", "1", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    samples = {}
    for shard in sorted(f for f in os.listdir(out) if f.endswith(".tar")):
        for s in wds.WebDataset(str(out / shard), shardshuffle=False, empty_check=False):
            samples[s["txt"].decode()] = numpy.asarray(Image.open(io.BytesIO(s["jpg"])))
    assert set(samples) == {"a picture called grey.png", "a picture called rot.jpg"}
    assert abs(int(samples["a picture called grey.png"].mean()) - 128) <= 2
    assert samples["a picture called rot.jpg"].shape[:2] == (40, 20)
    failed = (out / "failed.tsv").read_text()
    assert "thin.png" in failed and "aspect ratio" in failed
    assert "pipe.jpg" in failed and "not a regular file" in failed


@pytest.mark.parametrize("members, captions", [
    ({"txt": b"a dog\non a beach"}, ["a dog\non a beach"]),  # open_clip: the whole text
    ({"txt": b'["not", "json"] a caption'}, ['["not", "json"] a caption']),
    ({"json": b'{"id": 3}', "txt": b"a good caption"}, ["a good caption"]),  # no shadowing
    ({"json": b"{not json", "txt": b"kept"}, ["kept"]),
    ({"json": b'{"captions": ["one", "two"]}', "txt": b"one\ntwo"}, ["one", "two"]),
    ({"json": b'{"caption": "only"}'}, ["only"]),
    ({"json": b'{"id": 3}'}, []),
])
def test_captions_mean_what_open_clip_and_the_json_say(members, captions):
    from llip.data import sample_captions
    assert sample_captions({"__key__": "k", **members}) == captions


def test_inspect_prints_hostile_member_names_escaped(tmp_path):
    """A tar whose member names carry terminal escape sequences (and a broken image): inspect
    reports the corrupt sample with its name escaped, never sending ESC to the terminal."""
    import tarfile
    shard = tmp_path / "evil.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("a\x1b[2J\x1b[31mred.jpg", b"not a jpeg"),
                           ("a\x1b[2J\x1b[31mred.txt", b"a caption")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = run_cli("-m", "llip.data.inspect", str(shard), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\x1b" not in out.stdout and "\\x1b[2J" in out.stdout, out.stdout
