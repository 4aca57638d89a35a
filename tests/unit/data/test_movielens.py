"""Every MovieLens layout parses to the same canonical tables; bad files get clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from towers.data.movielens import ML100K_GENRES, read_folder
from towers.data.raw import DataError
from towers.data.validation import validate_raw


def write_grouplens_100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(
        "1\t10\t5\t881250949\n2\t10\t3\t881250950\n2\t20\t4\t881250951\n"
    )
    flags_10 = ["0"] * 19
    flags_10[ML100K_GENRES.index("Animation")] = "1"
    flags_10[ML100K_GENRES.index("Comedy")] = "1"
    flags_20 = ["0"] * 19
    flags_20[ML100K_GENRES.index("Sci-Fi")] = "1"
    lines = [
        "10|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags_10),
        "20|Stalker (1979)|01-Jan-1979||http://y|" + "|".join(flags_20),
    ]
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


def write_recbole_100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t5\t881250949\n2\t10\t3\t881250950\n2\t20\t4\t881250951\n"
    )
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Comedy\n20\tStalker\t1979\tSci-Fi\n"
    )
    (folder / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n"
    )
    return folder


def write_ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("1::10::5::978300760\n2::20::3::978302109\n")
    movies = "10::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n"
    movies += "20::Heat (1995)::Action|Crime|Thriller\n"
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return folder


def write_ml_csv(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,4.5,964982703\n1,20,0.5,964981247\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '10,"American President, The (1995)",Comedy|Drama|Romance\n'
        "20,Some Short (no year),(no genres listed)\n"
    )
    return folder


def test_grouplens_and_recbole_100k_parse_to_same_tables(tmp_path):
    g = read_folder(write_grouplens_100k(tmp_path / "g"), "ml-100k")
    r = read_folder(write_recbole_100k(tmp_path / "r"), "ml-100k")
    assert g.interactions.equals(r.interactions)
    assert g.users.equals(r.users)
    assert g.items["title"].tolist() == r.items["title"].tolist() == ["Toy Story", "Stalker"]
    assert g.items["year"].tolist() == r.items["year"].tolist() == [1995, 1979]
    assert g.items["genres"].tolist() == r.items["genres"].tolist()
    assert g.items["genres"][0] == ["Animation", "Comedy"]
    assert str(g.interactions["rating"].dtype) == "float32"
    assert g.rating_scale == (1.0, 5.0)


def test_ml1m_latin1_titles_and_occupation_codes(tmp_path):
    raw = read_folder(write_ml1m(tmp_path), "ml-1m")
    assert raw.items["title"][0] == "Amélie (Fabuleux destin d'Amélie Poulain, Le)"
    assert raw.items["year"][0] == 2001
    assert raw.items["genres"][1] == ["Action", "Crime", "Thriller"]
    assert raw.users["occupation"].tolist() == ["K-12 student", "self-employed"]
    assert raw.users["age"].tolist() == [1, 56]


def test_csv_quoted_titles_and_no_genres(tmp_path):
    raw = read_folder(write_ml_csv(tmp_path), "ml-latest-small")
    assert raw.items["title"][0] == "American President, The"
    assert raw.items["year"][0] == 1995
    assert raw.items["year"].isna()[1]
    assert raw.items["genres"][1] == []  # the adapter reads "(no genres listed)" as none
    assert raw.interactions["rating"].tolist() == [4.5, 0.5]
    assert raw.users["user_id"].tolist() == [1]
    assert raw.rating_scale == (0.5, 5.0)
    cleaned, drops = validate_raw(raw)
    assert drops == {"duplicate_pairs": 0}


def test_real_ml100k_counts(ml100k_dir):
    raw, drops = validate_raw(read_folder(ml100k_dir, "ml-100k"))
    assert len(raw.interactions) == 100_000
    assert raw.interactions["user_id"].nunique() == 943
    assert len(raw.items) == 1_682
    assert len({g for gs in raw.items["genres"] for g in gs}) == 19
    assert drops["duplicate_pairs"] == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n", "empty"),
        ("user_id:token\titem_id:token\tts:float\n1\t10\t5\n", "missing columns ['rating'"),
        (
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\tfive\t1\n",
            "'rating' has 1 non-numeric",
        ),
    ],
)
def test_bad_interaction_files(tmp_path, content, message):
    folder = write_recbole_100k(tmp_path)
    (folder / "ml-100k.inter").write_text(content)
    with pytest.raises(DataError, match="ml-100k.inter") as err:
        read_folder(folder, "ml-100k")
    assert message in str(err.value)


def test_rating_out_of_range(tmp_path):
    folder = write_grouplens_100k(tmp_path)
    (folder / "u.data").write_text("1\t10\t7\t881250949\n")
    with pytest.raises(DataError, match=r"1 ratings outside \[1.0, 5.0\]"):
        validate_raw(read_folder(folder, "ml-100k"))


def test_unknown_item_in_interactions(tmp_path):
    folder = write_grouplens_100k(tmp_path)
    (folder / "u.data").write_text("1\t10\t5\t881250949\n1\t99\t4\t881250949\n")
    with pytest.raises(DataError, match=r"absent from the items table \(e.g. \[99\]\)"):
        validate_raw(read_folder(folder, "ml-100k"))


def test_unknown_user_in_interactions(tmp_path):
    folder = write_grouplens_100k(tmp_path)
    (folder / "u.data").write_text("7\t10\t5\t881250949\n")
    with pytest.raises(DataError, match=r"absent from the users table \(e.g. \[7\]\)"):
        validate_raw(read_folder(folder, "ml-100k"))


def test_duplicate_pairs_keep_latest_and_are_counted(tmp_path, caplog):
    folder = write_grouplens_100k(tmp_path)
    (folder / "u.data").write_text("1\t10\t5\t300\n1\t10\t2\t100\n2\t20\t4\t5\n1\t10\t3\t200\n")
    cleaned, drops = validate_raw(read_folder(folder, "ml-100k"))
    assert drops == {"duplicate_pairs": 2}
    kept = cleaned.interactions
    assert len(kept) == 2
    assert kept.loc[kept["user_id"] == 1, "rating"].tolist() == [5.0]  # timestamp 300 is latest
    assert "dropped 2 duplicate" in caplog.text


def test_duplicate_item_ids_in_item_table(tmp_path):
    folder = write_ml_csv(tmp_path)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n10,A (1990),Drama\n10,B (1991),Drama\n20,C,X\n"
    )
    with pytest.raises(DataError, match=r"items table repeats item_id \[10\]"):
        validate_raw(read_folder(folder, "ml-latest-small"))


def test_unknown_dataset_and_wrong_folder(tmp_path):
    with pytest.raises(DataError, match="unknown data set"):
        read_folder(tmp_path, "ml-5k")
    with pytest.raises(DataError, match="neither GroupLens"):
        read_folder(tmp_path, "ml-100k")
    with pytest.raises(DataError, match="ratings.dat: file not found"):
        read_folder(tmp_path, "ml-1m")


def test_integer_columns_reject_fractions(tmp_path):
    folder = write_grouplens_100k(tmp_path)
    (folder / "u.data").write_text("1.5\t10\t5\t881250949\n")
    with pytest.raises(DataError, match="'user' must hold integers"):
        read_folder(folder, "ml-100k")
