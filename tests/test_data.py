"""Reading the course format: file order, encodings, image formats, and errors that name the guid."""
from __future__ import annotations

import pytest

from mmfuse.data import decode_text, open_image, read_course
from mmfuse.errors import DataError


def test_records_in_file_order_with_labels(clean_course_dir):
    ds = read_course(clean_course_dir, "train")
    assert [r.guid for r in ds.records] == [str(100 + i) for i in range(12)]
    assert ds.records[0].labels == ("positive",) and ds.records[1].labels == ("neutral",)
    assert not ds.errors
    test = read_course(clean_course_dir, "test")
    assert len(test.records) == 3 and all(r.labels == () for r in test.records)


def test_non_utf8_text_is_decoded_and_counted(clean_course_dir):
    ds = read_course(clean_course_dir, "train")
    assert ds.fallback_count == 1 and ds.encodings["gb18030"] == 1
    assert "\u201cquoted\u201d \u2026" in ds.records[2].text
    assert decode_text(b"caf\xe9 au lait") == ("caf\xe9 au lait", "cp1252")
    assert decode_text(b"\x81\x8d", fallbacks=("cp1252",))[1] == "latin-1"  # never crashes


@pytest.mark.parametrize("i", [3, 4, 5, 6])  # PNG named .jpg, grayscale, CMYK, RGBA
def test_any_image_format_opens_as_rgb(clean_course_dir, i):
    img = open_image(clean_course_dir / "data" / f"{100 + i}.jpg", draft_size=32)
    assert img.mode == "RGB" and min(img.size) >= 32


def test_bad_rows_are_errors_naming_guid_and_file(clean_course_dir):
    (clean_course_dir / "data" / "101.txt").unlink()
    (clean_course_dir / "data" / "102.jpg").unlink()
    with open(clean_course_dir / "train.txt", "a") as f:
        f.write("103,positive\n104,angry\n")
    ds = read_course(clean_course_dir, "train")
    errors = {r.guid: r.error for r in ds.errors}
    assert "text file missing" in errors["101"] and "101.txt" in errors["101"]
    assert "image file missing" in errors["102"]
    assert "duplicate guid" in errors["103"] and "train.txt:5" in errors["103"]
    assert "unknown tag 'angry'" in errors["104"]
    with pytest.raises(DataError, match=r"4 bad record\(s\).*guid 101.*--on-error skip"):
        ds.check("raise")
    assert len(ds.check("skip")) == 4


def test_missing_folder_and_bad_header(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        read_course(tmp_path / "nope")
    (tmp_path / "train.txt").write_text("id,label\n1,positive\n")
    with pytest.raises(DataError, match="header 'guid,tag'"):
        read_course(tmp_path, "train")


def test_demo_data_is_a_readable_course_folder(tmp_path):
    from typer.testing import CliRunner

    from mmfuse.cli import app

    result = CliRunner().invoke(app, ["demo-data", str(tmp_path / "demo"), "--n-train", "50", "--n-test", "10"])
    assert result.exit_code == 0, result.output
    train, test = read_course(tmp_path / "demo", "train"), read_course(tmp_path / "demo", "test")
    assert len(train.records) == 50 and len(test.records) == 10 and not train.errors
    assert {r.labels[0] for r in train.records} == {"positive", "neutral", "negative"}
    assert train.encodings["gb18030"] == 2  # every 25th text, as in the course data
    assert (tmp_path / "demo" / "test_labels.txt").read_text().count("\n") == 11
