"""Fault injection on a multi-label CSV's rows: ids of any shape, unclosed quotes, a ';' separator and
unsafe ids, each read row for row with the error (if any) naming its physical line, and never a row
merged into another.

``CSV_FAULTS`` is the table of these cases, for the README.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mmfuse.data import CsvFormat, read_course, read_csv
from mmfuse.errors import DataError
from mmfuse.runs import read_label_sets

CSV_FAULTS = [  # (fault, what mmfuse does, the test that injects it)
    ("an ImageID with a space (`my photo.jpg`) after a quoted caption with a comma",
     "a row of its own: the previous caption's closed quote ends that record, whatever the next id looks like",
     "test_ids_with_spaces_or_without_extension_are_rows_of_their_own"),
    ("an ImageID without extension, with or without the image file",
     "a row of its own, read as `ID.jpg` (or `ID` when that file exists); without the image: `image file missing`",
     "test_an_id_without_extension_is_a_row_whether_or_not_its_image_exists"),
    ("an ImageID `.`, `..`, empty, with `/` or `\\`, or absolute",
     "an error on its line (`image id '..' is not a file name inside IMAGES`); no file outside the image folder "
     "is looked up",
     "test_ids_that_are_not_plain_file_names_are_refused_naming_the_line"),
    ("a quoted caption that is never closed, before rows of any id shape",
     "an error naming its line (`a quote opened here is never closed`); the rows after it are read as they are",
     "test_an_unclosed_quote_names_its_line_and_never_takes_the_next_rows"),
    ("a quoted caption over three lines whose middle line has two commas (it looks like a row)",
     "one row: a quote-free line goes on an open caption when a following line closes it",
     "test_a_caption_over_lines_that_look_like_rows_is_one_row"),
    ("one row written with `;` separators", "an error on its line (`it splits into 3 fields at ';': is the "
     "separator ','?`); the other rows are read",
     "test_a_semicolon_row_is_an_error_naming_its_line"),
    ("a whole file written with `;` separators (header too, or rows only)",
     "stops with `FILE line N: ... is the separator ','?` instead of a wrong label count",
     "test_a_semicolon_file_names_the_line_and_the_separator"),
    ("an unclosed quote that leaves a single label in the rows that parse",
     "stops with `FILE line N: cannot parse line N ...` instead of `needs at least 2 labels`",
     "test_unparsed_rows_that_break_the_label_set_name_the_line"),
    ("a `;` row in a truth or predictions file (`mmfuse score`)", "stops with `FILE line N: cannot parse ...`",
     "test_a_label_sets_file_names_the_physical_line"),
    ("a course-format `guid,tag` file with a quoted field over two lines",
     "the rows after it are named by their physical line (`train.txt:16`), not by their record number",
     "test_course_rows_are_named_by_their_physical_line"),
]


def images(root: Path, names=("0.jpg", "1.jpg", "2.jpg")) -> Path:
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), (200, 0, 0)).save(folder / name, "JPEG")
    return folder


def read(tmp_path: Path, body: str, names=("0.jpg", "1.jpg", "2.jpg"), **fmt):
    path = tmp_path / "data.csv"
    path.write_text(body)
    ds = read_csv(path, CsvFormat(images(tmp_path, names), **fmt))
    return ds, [(r.guid, r.labels, r.text) for r in ds.records]


def test_ids_with_spaces_or_without_extension_are_rows_of_their_own(tmp_path):
    ds, rows = read(tmp_path, 'ImageID,Labels,Caption\n'
                              '1.jpg,1,"a dog, running"\n'
                              'my photo.jpg,2,"a cat"\n'
                              '2.jpg,1 2,"two, things"\n'
                              'ghost,2,"no extension, no image"\n', names=("1.jpg", "2.jpg", "my photo.jpg"))
    assert rows == [("1.jpg", ("1",), "a dog, running"), ("my photo.jpg", ("2",), "a cat"),
                    ("2.jpg", ("1", "2"), "two, things"), ("ghost", ("2",), "no extension, no image")]
    assert [r.source for r in ds.records] == ["data.csv:2", "data.csv:3", "data.csv:4", "data.csv:5"]
    assert [r.source for r in ds.errors] == ["data.csv:5"] and "image file missing" in ds.errors[0].error
    assert ds.records[1].image_path == tmp_path / "images" / "my photo.jpg"


def test_an_id_without_extension_is_a_row_whether_or_not_its_image_exists(tmp_path):
    folder = images(tmp_path)
    (folder / "raw").write_bytes((folder / "0.jpg").read_bytes())  # an image file without extension
    ds, rows = read(tmp_path, "ImageID,Labels,Caption\n0,1,a\nghost,2,b\nraw,1,c\n1,2,d\n")
    assert rows == [("0", ("1",), "a"), ("ghost", ("2",), "b"), ("raw", ("1",), "c"), ("1", ("2",), "d")]
    paths = [r.image_path.name for r in ds.records]
    assert paths == ["0.jpg", "ghost.jpg", "raw", "1.jpg"]
    assert [(r.source, r.error.split(":")[0]) for r in ds.errors] == [("data.csv:3", "image file missing")]


@pytest.mark.parametrize("image_id", [".", "..", "", "a/b.jpg", "a\\b.jpg", "/etc/passwd", "../0.jpg"])
def test_ids_that_are_not_plain_file_names_are_refused_naming_the_line(tmp_path, image_id):
    ds, rows = read(tmp_path, f"ImageID,Labels,Caption\n0.jpg,1,a\n{image_id},2,b\n1.jpg,2,c\n")
    assert [g for g, _, _ in rows] == ["0.jpg", image_id or "<line 3>", "1.jpg"]  # nothing dropped or shifted
    (bad,) = ds.errors
    assert bad.source == "data.csv:3" and "is not a file name inside" in bad.error
    assert bad.image_path.parent == tmp_path / "images"  # never a path outside the image folder
    with pytest.raises(DataError, match=r"\(data\.csv:3\).*not a file name inside"):
        ds.check("raise")


def test_an_unclosed_quote_names_its_line_and_never_takes_the_next_rows(tmp_path):
    ds, rows = read(tmp_path, 'ImageID,Labels,Caption\n0.jpg,1,"never closed\nmy photo.jpg,2,"a cat"\n'
                              'ghost,1,plain\n1.jpg,2,"two\nlines"\n', names=("0.jpg", "1.jpg", "my photo.jpg"))
    assert rows[1:] == [("my photo.jpg", ("2",), "a cat"), ("ghost", ("1",), "plain"), ("1.jpg", ("2",), "two\nlines")]
    bad = ds.records[0]
    assert bad.guid == "0.jpg" and bad.source == "data.csv:2"
    assert "cannot parse line 2" in bad.error and "never closed" in bad.error


def test_a_caption_over_lines_that_look_like_rows_is_one_row(tmp_path):
    _, rows = read(tmp_path, 'ImageID,Labels,Caption\n0.jpg,1,"first line\nsecond, with, commas\n'
                             'third, ""quoted"", too\nend"\n1.jpg,2,"a, b"\n')
    assert rows == [("0.jpg", ("1",), 'first line\nsecond, with, commas\nthird, "quoted", too\nend'),
                    ("1.jpg", ("2",), "a, b")]


def test_a_semicolon_row_is_an_error_naming_its_line(tmp_path):
    ds, rows = read(tmp_path, "ImageID,Labels,Caption\n0.jpg,1,a\n1.jpg;2;b, c, d\n2.jpg,2,e\n")
    assert [g for g, _, _ in rows] == ["0.jpg", "<line 3>", "2.jpg"]
    (bad,) = ds.errors
    assert bad.source == "data.csv:3" and "cannot parse line 3" in bad.error
    assert "fields at ';': is the separator ','?" in bad.error


def test_a_semicolon_file_names_the_line_and_the_separator(tmp_path):
    with pytest.raises(DataError, match=r"data\.csv line 1: .*is the separator ','\?"):
        read(tmp_path, "ImageID;Labels;Caption\n0.jpg;1;a\n1.jpg;2;b\n")
    with pytest.raises(DataError, match=r"data\.csv line 2: cannot parse line 2 .*is the separator ','\?"):
        read(tmp_path, "ImageID,Labels,Caption\n0.jpg;1;a\n1.jpg;2;b\n")


def test_unparsed_rows_that_break_the_label_set_name_the_line(tmp_path):
    with pytest.raises(DataError, match=r"data\.csv line 2: cannot parse line 2 .*never closed"):
        read(tmp_path, 'ImageID,Labels,Caption\n0.jpg,2,"never closed\n1.jpg,1,b\n')
    ds, _ = read(tmp_path, 'ImageID,Labels,Caption\n0.jpg,2,"never closed\n1.jpg,1,b\n', label_names=("1", "2"))
    assert [r.source for r in ds.errors] == ["data.csv:2"]  # a fixed label set: a record error, the run decides


def test_a_label_sets_file_names_the_physical_line(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text('ImageID,Labels,Caption\n0.jpg,1,"two\nlines"\nmy photo.jpg,2,x\n2.jpg;1;y\n')
    with pytest.raises(DataError, match=r"truth\.csv line 5: cannot parse line 5 .*separator"):
        read_label_sets(path)
    path.write_text('ImageID,Labels,Caption\n0.jpg,1,"two\nlines"\nmy photo.jpg,2,x\nghost,1 2,y\n')
    assert read_label_sets(path) == {"0.jpg": ["1"], "my photo.jpg": ["2"], "ghost": ["1", "2"]}


def test_course_rows_are_named_by_their_physical_line(clean_course_dir):
    with open(clean_course_dir / "train.txt", "a") as f:  # header + 12 rows: the new rows start at line 14
        f.write('"multi\nline",positive\n999,angry\n')
    ds = read_course(clean_course_dir, "train")
    errors = {r.guid: r for r in ds.errors}
    assert errors["multi\nline"].source == "train.txt:14"
    assert errors["999"].source == "train.txt:16" and "unknown tag 'angry'" in errors["999"].error


def test_every_fault_names_a_test_of_this_module():
    assert all(callable(globals().get(name)) for _, _, name in CSV_FAULTS)
