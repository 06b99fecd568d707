"""util/files.py: files written whole or not at all, the row-by-row CSV, the person crops folder."""
import csv
import errno
import os

import pytest

from util import files


def test_csv_rows_on_disk_row_by_row(tmp_path):
    path = tmp_path / "out" / "predictions.csv"  # its folder is made
    saved = files.CSVRows(path, ["file", "p_fake"])
    saved.write_rows([{"file": "a.mp4", "p_fake": 0.25}])
    assert list(csv.DictReader(open(path))) == [{"file": "a.mp4", "p_fake": "0.25"}]  # not yet closed
    saved.write_rows([{"file": "b.mp4", "p_fake": None}, {"file": "c.mp4", "p_fake": 1.0}])
    saved.close()
    assert saved.rows == 3
    assert [r["p_fake"] for r in csv.DictReader(open(path))] == ["0.25", "", "1.0"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "predictions.csv"
    path.symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(OSError) as e:
        files.CSVRows(path, ["file"])
    assert e.value.errno == errno.ENOSPC and str(path) in str(e.value) and "\n" not in str(e.value)


def test_atomic_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """A full disk midway leaves the old file and no temporary file; the error names the file."""
    target, real_open = tmp_path / "index.csv", open
    files.atomic_write(target, "old\n")

    def full_disk(path, mode="r", *args, **kw):
        fh = real_open(path, mode, *args, **kw)
        if "x" in mode:  # the temporary file, created
            fh.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return fh
    with monkeypatch.context() as patch, pytest.raises(OSError) as e:
        patch.setattr("builtins.open", full_disk)
        files.atomic_write(target, "new\n")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["index.csv"]


def test_person_crops_replace_a_past_runs_and_keep_the_users(tmp_path):
    folder = tmp_path / "clip"
    for name in ("person1/99.png", "person3/7.png", "person1/cover.png", "notes.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"old")
    files.write_person_crops(folder, [{0: b"a0", 5: b"a5"}, {5: b"b5"}])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        ["notes.txt", "person1/0.png", "person1/5.png", "person1/cover.png", "person2/5.png"]
    assert (folder / "person2" / "5.png").read_bytes() == b"b5"
    assert (folder / "person1" / "cover.png").read_bytes() == b"old"
