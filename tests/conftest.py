import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """One torch thread, for files of small networks (``pytestmark = pytest.mark.usefixtures("one_thread")``): two
    OpenMP threads on a busy two-core machine make their steps many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def exact():
    """Brute-force counts of the toy problem (1-D, 2-D) and its exact Eq. (1) curve, computed once."""
    from toy import brute_force

    counts1, counts2, mean_test = brute_force()
    return {"1d": counts1, "2d": counts2, "mean_test": mean_test}
