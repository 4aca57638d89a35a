"""The S3-Rec converter (bench.amazon_beauty): any NAME.txt beside NAME_item2attributes.json."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.amazon_beauty import convert


def test_a_yelp_shaped_folder_converts_with_positions_as_time(tmp_path):
    source = tmp_path / "yelp"
    source.mkdir()
    (source / "Yelp.txt").write_text("1 5 3 9\n2 3 5\n")
    (source / "Yelp_item2attributes.json").write_text(json.dumps({"3": [7], "5": [7, 8]}))
    counts = convert(source, tmp_path / "out")
    assert counts == {"interactions": 5, "users": 2, "items": 3}
    frame = pd.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert frame[frame.user_id == 1].sort_values("position").item_id.tolist() == [5, 3, 9]
    items = pd.read_parquet(tmp_path / "out" / "items.parquet").set_index("item_id")
    assert list(items.loc[5, "attributes"]) == ["7", "8"] and len(items.loc[9, "attributes"]) == 0


def test_a_folder_without_the_pair_is_named(tmp_path):
    (tmp_path / "Yelp.txt").write_text("1 2 3\n")
    with pytest.raises(SystemExit, match="expected one \\*_item2attributes.json"):
        convert(tmp_path, tmp_path / "out")
