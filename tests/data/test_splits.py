"""sftlib.data.splits: DeepSpeed-Chat's seeded split and index files, the rank that writes them, bad --data_split."""

import numpy as np
import pytest

from sftlib import data
from sftlib.errors import SFTError
from tests.data.helpers import numpy_recipe


def want_part(seed, data_split, n, i):
    return numpy_recipe(seed, data_split, n)[i].tolist()


@pytest.mark.parametrize("seed", [1234, 0, 42])
@pytest.mark.parametrize("data_split", ["2,4,4", "10,0,0", "1,1,1"])
def test_split_indices_equal_the_numpy_recipe(tmp_path, seed, data_split):
    for n in (1001, 7):
        ours = data.split_indices(seed, data_split, n)
        want = numpy_recipe(seed, data_split, n)
        assert [p.tolist() for p in ours] == [w.tolist() for w in want]
    got = data.get_raw_dataset_split_index(0, str(tmp_path), "Dahoas_rm_static", seed, "train", data_split, 1, 1001)
    assert got == want_part(seed, data_split, 1001, 1)
    for i in range(3):  # the original's index file names and contents
        f = tmp_path / f"Dahoas_rm_static_seed{seed}_train_{data_split}_{i}.npy"
        assert np.load(f).tolist() == want_part(seed, data_split, 1001, i)


def test_only_local_rank_0_or_below_writes_the_index_files(tmp_path):
    args = ("Dahoas_rm_static", 1, "train", "2,4,4", 0, 50)
    assert data.get_raw_dataset_split_index(1, str(tmp_path), *args) == want_part(1, "2,4,4", 50, 0)
    assert not list(tmp_path.glob("*.npy")), "local rank 1 computes the indices but writes nothing"
    data.get_raw_dataset_split_index(-1, str(tmp_path), *args)  # -1: launched without a launcher
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == [f"Dahoas_rm_static_seed1_train_2,4,4_{i}.npy"
                                                              for i in range(3)]


@pytest.mark.parametrize("split, message", [
    ("2,4", "has 2 parts; it needs 3"), ("1,-1,2", "must not be negative"), ("0,0,0", "all zero"),
    ("a,b,c", "comma-separated numbers"),
])
def test_bad_data_split_names_the_argument(world, tok, tmp_path, split, message):
    with pytest.raises(SFTError, match=f"--data_split.*{message}"):
        data.create_prompt_dataset(0, [str(world["data"])], split, str(tmp_path), 1, 1, tok, 16)
