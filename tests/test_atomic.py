"""atomic: a write either lands whole under the final name or leaves nothing behind."""
import pytest

from fer_server.atomic import temporary_path, write_atomic


def test_a_write_lands_under_the_final_name_only(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("old")
    write_atomic(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_the_temporary_is_hidden_beside_the_file_and_keeps_its_suffix(tmp_path, monkeypatch):
    monkeypatch.setattr("os.getpid", lambda: 4242)
    assert temporary_path(tmp_path / "out" / "clip.mp4") == tmp_path / "out" / ".clip.partial4242.mp4"
