"""bench/page_shot.py without a browser: its arguments and the errors it stops with."""

from __future__ import annotations

import pytest

from bench import page_shot


def test_the_defaults_are_the_readme_screenshot():
    args = page_shot.parse_args(["--storage", "runs/demo", "--out", "docs/page.png"])
    assert (args.user, args.k, args.width, args.height) == ("196", 6, 1400, 1000)
    assert (args.liked, args.age, args.occupation) == ("50, 181", "30", "engineer")


def test_a_k_the_page_cannot_show_is_refused(capsys):
    with pytest.raises(SystemExit):
        page_shot.parse_args(["--storage", "s", "--out", "o.png", "--k", "0"])
    assert "--k must be between 1 and 50" in capsys.readouterr().err


def test_a_missing_storage_or_model_stops_with_a_message(tmp_path):
    out = str(tmp_path / "page.png")
    with pytest.raises(SystemExit, match="does not exist"):
        page_shot.main(["--storage", str(tmp_path / "nowhere"), "--out", out])
    assert not (tmp_path / "nowhere").exists()  # only looked at, not created
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"no published model/, index/, knn/"):
        page_shot.main(["--storage", str(tmp_path), "--out", out])


def test_a_missing_browser_stops_with_a_message(tmp_path, monkeypatch):
    for artifact in page_shot.ARTIFACTS:
        (tmp_path / artifact).mkdir()
        (tmp_path / artifact / "manifest.json").write_text("{}")
    monkeypatch.setattr(page_shot.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="chromium and chromedriver not found"):
        page_shot.main(["--storage", str(tmp_path), "--out", str(tmp_path / "page.png")])
    assert not (tmp_path / "page.png").exists()
