"""UserKNN.score_history: a history scored as a training user is (the fresh answers of serving)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import block_interactions
from towers.recommenders.user_knn import UserKNN


@pytest.mark.parametrize("mode", ["explicit", "implicit"])
@pytest.mark.parametrize("min_nbrs", [1, 2])
def test_a_training_row_scores_as_its_user(mode, min_nbrs):
    train = block_interactions()
    knn = UserKNN(n_neighbors=5, mode=mode, min_nbrs=min_nbrs, search="exact").fit(train)
    ratings = train.to_csr()
    for user in (0, 13, 39):
        row = ratings[user]
        scores = knn.score_history(row.indices, row.data, exclude_user=user)
        expected = knn.score(np.array([user]))[0]
        np.testing.assert_array_equal(np.isinf(scores), np.isinf(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(scores[finite], expected[finite], atol=1e-5)


def test_a_new_users_history_finds_their_block():
    train = block_interactions()  # 4 groups of 10 users, each on its own block of 12 items
    knn = UserKNN(n_neighbors=5, mode="implicit").fit(train)
    scores = knn.score_history(np.array([24, 25, 26]), np.ones(3))  # items of block 2
    assert np.isfinite(scores).sum() > 0
    assert set(np.flatnonzero(np.isfinite(scores)) // 12) == {2}
    assert np.isinf(knn.score_history(np.array([], np.int64), np.array([]))).all()
    with pytest.raises(KeyError):
        knn.score_history(np.array([48]), np.ones(1))
