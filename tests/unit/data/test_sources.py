"""Where data comes from: --data-dir, the cache, and the RecBole wheel fallback."""

from __future__ import annotations

import sys

import pytest

from towers.data import sources
from towers.data.movielens import read_folder
from towers.data.raw import DataError


def test_data_dir_wins_and_must_hold_files(tmp_path, ml100k_dir):
    assert sources.locate("ml-100k", ml100k_dir) == ml100k_dir
    with pytest.raises(DataError, match="no ml-1m files there"):
        sources.locate("ml-1m", tmp_path)


def test_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TWO_TOWER_CACHE", str(tmp_path))
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ratings.dat").write_text("1::1::5::1\n")
    assert sources.locate("ml-1m") == tmp_path / "ml-1m"


def test_offline_without_cache_names_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TWO_TOWER_CACHE", str(tmp_path))
    monkeypatch.setenv("RAY_TWO_TOWER_OFFLINE", "1")
    with pytest.raises(DataError, match="pass --data-dir"):
        sources.locate("ml-25m")


def test_installed_recbole_is_found_and_copied_to_cache(tmp_path, monkeypatch, ml100k_dir):
    monkeypatch.setenv("RAY_TWO_TOWER_CACHE", str(tmp_path))
    monkeypatch.setenv("RAY_TWO_TOWER_OFFLINE", "1")
    found = sources.locate("ml-100k")
    assert found == tmp_path / "ml-100k"
    assert "recbole" not in sys.modules  # located, never imported
    assert len(read_folder(found, "ml-100k").interactions) == 100_000


@pytest.mark.network
@pytest.mark.slow
def test_recbole_wheel_fetched_with_pip(tmp_path):
    target = sources.fetch_recbole_ml100k(tmp_path / "ml-100k")
    raw = read_folder(target, "ml-100k")
    assert len(raw.interactions) == 100_000 and len(raw.items) == 1_682
