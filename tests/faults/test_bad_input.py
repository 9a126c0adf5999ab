"""Fault injection on the data: every bad or odd input of the README's fault table, injected into a
clean course-format folder, with the documented outcome checked and no row lost or shifted.

``FAULTS`` is the table; ``test_readme_table.py`` keeps the README's copy equal to it.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mmfuse.cache import FeatureCache
from mmfuse.cli import app
from mmfuse.data import open_image, read_course

runner = CliRunner()
GUIDS = [str(100 + i) for i in range(12)]


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def set_tag(root: Path, guid: str, line: str) -> None:
    rows = (root / "train.txt").read_text().splitlines()
    rows = [line if r.split(",")[0] == guid else r for r in rows]
    (root / "train.txt").write_text("\n".join(rows) + "\n")


def image(root: Path, guid: str) -> Path:
    return root / "data" / f"{guid}.jpg"


# name -> (how to inject it into a clean folder, what mmfuse does: the README's wording)
FAULTS = {
    # images that cannot be decoded: an error naming the guid and the file, or skipped and recorded
    "zero-byte image": (lambda r: image(r, "103").write_bytes(b""), "decode error"),
    "truncated JPEG": (lambda r: image(r, "103").write_bytes(image(r, "103").read_bytes()[:300]), "decode error"),
    "HTML saved as .jpg": (lambda r: image(r, "103").write_bytes(b"<html><body>404</body></html>"), "decode error"),
    "decompression bomb (a header claiming 40000 x 40000)": (lambda r: image(r, "103").write_bytes(png_claiming(40000, 40000)),
                                                             "decode error"),
    # odd but valid images: extracted like any other
    "1 x 1 image": (lambda r: Image.new("RGB", (1, 1), "red").save(image(r, "104"), "JPEG"), "extracted"),
    "10000 x 50 image": (lambda r: Image.new("RGB", (10000, 50), "blue").save(image(r, "104"), "JPEG"), "extracted"),
    "CMYK JPEG": (lambda r: Image.new("CMYK", (60, 40), (0, 90, 90, 0)).save(image(r, "104"), "JPEG"), "extracted"),
    "16-bit PNG": (lambda r: Image.fromarray((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20))
                   .save(image(r, "104"), "PNG"), "extracted"),
    "palette PNG with transparency": (lambda r: _transparent_palette(image(r, "104")), "extracted"),
    "animated GIF": (lambda r: Image.new("P", (30, 30), 1).save(image(r, "104"), "GIF", save_all=True,
                                                                append_images=[Image.new("P", (30, 30), 2)]),
                     "extracted"),
    "EXIF-rotated photo": (lambda r: _exif_rotated(image(r, "104")), "extracted"),
    # rows that are wrong: an error naming the guid and line, or skipped and recorded
    "missing text file": (lambda r: (r / "data" / "105.txt").unlink(), "record error"),
    "guid with no files": (lambda r: ((r / "data" / "105.txt").unlink(), image(r, "105").unlink()), "record error"),
    "duplicate guid": (lambda r: set_tag(r, "105", "104,negative"), "record error"),
    "unknown tag": (lambda r: set_tag(r, "105", "105,angry"), "record error"),
    "guid with ../": (lambda r: set_tag(r, "105", "../105,positive"), "record error"),
    "absolute-path guid": (lambda r: set_tag(r, "105", "/etc/passwd,positive"), "record error"),
    # texts: read, never a crash
    "empty text": (lambda r: (r / "data" / "106.txt").write_bytes(b""), "extracted"),
    "very long text (200,000 characters)": (lambda r: (r / "data" / "105.txt").write_text("good day " * 22222),
                                            "extracted"),
    "text with NUL bytes": (lambda r: (r / "data" / "106.txt").write_bytes(b"good\x00 day\x00"), "extracted"),
    "mixed encodings": (lambda r: ((r / "data" / "106.txt").write_bytes("caf\u00e9".encode("cp1252")),
                                   (r / "data" / "107.txt").write_bytes("\u4e2d\u6587".encode("gb18030"))), "extracted"),
    # the split file
    "labels file with a BOM, CRLF line ends, blank lines, trailing spaces": (lambda r: _messy_split_file(r), "extracted"),
}
OUTCOMES = {
    "decode error": "one-line error naming the guid and the image file; `--on-error skip` skips the row and records "
                    "the reason in the cache",
    "record error": "one-line error naming the guid and the split file's line, before any model loads; "
                    "`--on-error skip` skips the row and records the reason",
    "extracted": "extracted like any other row",
}
NOTES = {
    "decompression bomb (a header claiming 40000 x 40000)": "Pillow's limit is kept: DecompressionBombError",
    "16-bit PNG": "scaled to 8 bits, where Pillow alone clips it to white",
    "palette PNG with transparency": "transparent pixels become white",
    "animated GIF": "its first frame",
    "EXIF-rotated photo": "the stored pixels: the orientation tag is not applied, as in torchvision's loaders",
    "guid with ../": "its files are never opened",
    "absolute-path guid": "its files are never opened",
    "text with NUL bytes": "NUL bytes removed",
    "mixed encodings": "each text decoded on its own: UTF-8, else GB18030, cp1252, latin-1",
    "empty text": "an empty string is encoded",
    "very long text (200,000 characters)": "cut to `--max-length` tokens",
    "labels file with a BOM, CRLF line ends, blank lines, trailing spaces": "the same rows as a clean file",
}


def _transparent_palette(path: Path) -> None:
    img = Image.new("P", (40, 40), 3)
    img.putpalette([v for c in range(256) for v in (c, 0, 0)])
    img.save(path, "PNG", transparency=3)  # every pixel is palette entry 3, the transparent one


def _exif_rotated(path: Path) -> None:
    img = Image.new("RGB", (80, 40), "green")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    img.save(path, "JPEG", exif=exif)


def _messy_split_file(root: Path) -> None:
    rows = (root / "train.txt").read_text().splitlines()
    messy = "\ufeff" + rows[0] + "\r\n" + "".join(f"{r}  \r\n" + ("\r\n" if i % 4 == 0 else "") for i, r in enumerate(rows[1:]))
    (root / "train.txt").write_bytes(messy.encode("utf-8"))


def faulty(tmp_path, clean_course_dir, name) -> Path:
    FAULTS[name][0](clean_course_dir)
    return clean_course_dir


@pytest.mark.parametrize("name", [n for n, (_, o) in FAULTS.items() if o == "decode error"])
def test_an_image_that_cannot_be_decoded_is_named_then_skipped_on_request(name, clean_course_dir, extract_args, tmp_path):
    data = faulty(tmp_path, clean_course_dir, name)
    result = runner.invoke(app, extract_args(data, tmp_path / "a.h5"))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith("error: cannot decode image of guid 103: ") and str(image(data, "103")) in errors[0]
    if "bomb" in name:
        assert "DecompressionBombError" in result.output
    result = runner.invoke(app, extract_args(data, tmp_path / "b.h5", "--on-error", "skip"))
    assert result.exit_code == 0, result.output
    cache = FeatureCache(tmp_path / "b.h5")
    assert cache.guids == [g for g in GUIDS if g != "103"]  # nothing else lost, nothing shifted
    assert cache.skipped[0][0] == "103" and "image unreadable" in cache.skipped[0][1]


@pytest.mark.parametrize("name", [n for n, (_, o) in FAULTS.items() if o == "record error"])
def test_a_wrong_row_is_named_before_any_model_loads_then_skipped_on_request(name, clean_course_dir, tmp_path):
    data = faulty(tmp_path, clean_course_dir, name)
    # a model that cannot load: the row error must come first
    args = ["extract", str(data), "--out", str(tmp_path / "a.h5"), "--text-model", str(tmp_path / "no-model")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "bad record(s) in" in result.output and "train.txt:" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    ds = read_course(data, "train")
    bad = ds.check("skip")
    assert len(ds.records) == 12 and len(bad) == 1  # one row flagged, none dropped
    assert [r.guid for r in ds.records if not r.error] == [g for g in GUIDS if g != "105"]
    if name in ("guid with ../", "absolute-path guid"):
        assert "not a plain file name" in bad[0].error


def test_odd_images_and_texts_and_a_messy_split_file_extract_like_any_other(clean_course_dir, extract_args, tmp_path):
    data = clean_course_dir
    for name, (inject, outcome) in FAULTS.items():
        if outcome == "extracted" and name not in ("1 x 1 image", "10000 x 50 image", "CMYK JPEG", "16-bit PNG",
                                                   "palette PNG with transparency", "animated GIF"):
            inject(data)
    odd = {"1 x 1 image": "108", "10000 x 50 image": "109", "CMYK JPEG": "110", "16-bit PNG": "111",
           "palette PNG with transparency": "100", "animated GIF": "101"}
    for name, guid in odd.items():  # each on a guid of its own
        FAULTS[name][0](data)
        image(data, "104").replace(image(data, guid))
    FAULTS["EXIF-rotated photo"][0](data)
    result = runner.invoke(app, extract_args(data, tmp_path / "c.h5"))
    assert result.exit_code == 0, result.output
    cache = FeatureCache(tmp_path / "c.h5")
    assert cache.guids == GUIDS and not cache.skipped
    assert np.isfinite(cache.features("image/pooled")).all() and np.isfinite(cache.features("text/mean")).all()
    sixteen = np.asarray(open_image(image(data, "111")))
    assert 40 < sixteen.mean() < 215  # a grey ramp, not white
    assert np.asarray(open_image(image(data, "100"))).min() == 255  # all transparent: white
    assert open_image(image(data, "104")).size == (80, 40)  # stored pixels, orientation tag not applied
    texts = {r.guid: r.text for r in read_course(data, "train").records}
    assert texts["106"] == "caf\u00e9" and texts["107"] == "\u4e2d\u6587"


def test_a_text_with_nul_bytes_loses_only_them(clean_course_dir):
    FAULTS["text with NUL bytes"][0](clean_course_dir)
    assert {r.guid: r.text for r in read_course(clean_course_dir).records}["106"] == "good day"
