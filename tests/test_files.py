"""Tests of util/files.py: the row-by-row CSV writer and the person crops folder."""

import csv
import errno
import os

import pytest

from util import files


def test_csv_rows_on_disk_row_by_row(tmp_path):
    path = tmp_path / "out" / "predictions.csv"  # its folder is made
    saved = files.CSVRows(path, ["file", "p_fake"])
    assert path.read_bytes() == b"file,p_fake\r\n"  # the header, before any row (csv's line ends)
    saved.write_rows([{"file": "a.mp4", "p_fake": 0.25}])
    assert list(csv.DictReader(open(path))) == [{"file": "a.mp4", "p_fake": "0.25"}]  # not yet closed
    saved.write_rows([{"file": "b.mp4", "p_fake": None}, {"file": "c.mp4", "p_fake": 1.0}])
    saved.close()
    assert saved.rows == 3
    assert [r["p_fake"] for r in csv.DictReader(open(path))] == ["0.25", "", "1.0"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_csv_rows_full_disk_one_error_naming_the_file(tmp_path):
    path = tmp_path / "predictions.csv"
    path.symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(OSError) as e:
        files.CSVRows(path, ["file"])
    assert str(e.value) == (f"cannot write {path}: No space left on device; "
                            "free some disk space and re-run")
    assert e.value.errno == errno.ENOSPC


def test_person_crops_replace_a_past_runs_and_keep_the_users(tmp_path):
    folder = tmp_path / "clip"
    (folder / "person1").mkdir(parents=True)
    (folder / "person1" / "99.png").write_bytes(b"stale")
    (folder / "person3").mkdir()
    (folder / "person3" / "7.png").write_bytes(b"stale")
    (folder / "person1" / "cover.png").write_bytes(b"the user's")
    (folder / "notes.txt").write_text("the user's")
    files.write_person_crops(folder, [{0: b"a0", 5: b"a5"}, {5: b"b5"}])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == \
        ["person1/0.png", "person1/5.png", "person1/cover.png", "person2/5.png"]
    assert (folder / "person2" / "5.png").read_bytes() == b"b5"
    assert (folder / "person1" / "cover.png").read_bytes() == b"the user's"
    assert (folder / "notes.txt").read_text() == "the user's"
