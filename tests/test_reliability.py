"""Bad input caught before any work, with a message naming the value and the fix; safe data files; a cheap startup."""

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from lightning_entropy import Landscape, WangLandauStrategy
from lightning_entropy.strategies import arguments
from lightning_entropy.tasks import SpiralClassifier, SpiralDataModule
from lightning_entropy.tasks.common import NetModule, Regressor, TensorDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(strategy, model=None, dm=None, max_steps=1):
    trainer = Trainer(strategy=strategy, max_steps=max_steps, accelerator="cpu", enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, logger=False, enable_checkpointing=False)
    trainer.fit(model or SpiralClassifier(width=3, depth=1), datamodule=dm or SpiralDataModule(n_train=20, n_test=20))
    return trainer


def _wl(**kw):
    kw.setdefault("walkers", 4)
    kw.setdefault("steps_per_lightning_step", 5)
    return WangLandauStrategy(**kw)


# --- arguments (constructor: nothing built yet) ------------------------------------------------------------------

@pytest.mark.parametrize("ranges, words", [
    ([(2.0, -3.0), (0.0, 1.0)], ["lo=2.0 >= hi=-3.0", "swap"]),
    ([(float("nan"), 1.0), (0.0, 1.0)], ["nan", "finite"]),
    ([(None, float("inf"))], ["inf", "finite numbers, or null"]),
    ([("low", None)], ["'low'", "finite numbers, or null"]),
    ([(1.0,)], ["axis 0 is (1.0,)", "one (lo, hi) pair per axis"]),
    (3.0, ["ranges=3.0", "e.g. [[-3.0, null]]"]),
])
def test_bad_ranges_are_refused_at_construction(ranges, words):
    with pytest.raises(ValueError, match="ranges=") as err:
        _wl(ranges=ranges)
    for w in words:
        assert w in str(err.value)


def test_reversed_window_is_refused():
    with pytest.raises(ValueError, match=r"window=.*lo=1.0 >= hi=-1.0"):
        _wl(window=[(1.0, -1.0)])


def test_a_window_axis_given_as_none_has_no_soft_wall():
    """``window=[(lo, hi), None]``: a wall on x alone; the y axis's window is the grid's range, as without a window."""
    from lightning_entropy.core.grid import Grid

    grid = Grid([(-5.0, 0.0), (0.0, 1.0)], [10, 4], ["ln_train_loss", "test_accuracy"], window=[(-4.0, -1.0), None])
    assert grid.window.tolist() == [[-4.0, -1.0], [0.0, 1.0]]
    assert Grid([(-5.0, 0.0)], [10], ["ln_train_loss"], window=[None]).window.tolist() == [[-5.0, 0.0]]
    _wl(window=[(-4.0, -1.0), None])  # accepted by the strategy
    with pytest.raises(ValueError, match=r"window=.*axis 1 is \(0.0,\).*or null for an axis without a soft wall"):
        _wl(window=[(-4.0, -1.0), (0.0,)])


def test_duplicate_variables_are_refused():
    with pytest.raises(ValueError, match="same variable twice"):
        _wl(variables=("train_loss", "train_loss"))


def test_more_groups_than_walkers_is_refused():
    with pytest.raises(ValueError, match=r"groups=9 > walkers=4.*groups <= 4"):
        _wl(groups=9)


def test_too_fine_bin_width_is_capped_before_allocation():
    with pytest.raises(ValueError, match=r"bin_width=.*more than the cap.*coarser bin_width"):
        _fit(_wl(ranges=[(-5.0, 2.0), (0.0, 1.0)], bin_width=[1e-6, 1e-6]))
    arguments.check_grid([(-5.0, 2.0), (0.0, 1.0)], [0.1, 0.025])  # the defaults pass


def test_walker_memory_estimate_is_checked(monkeypatch):
    monkeypatch.setattr(arguments, "available_memory_bytes", lambda: 10 * 2**20)  # 10 MiB free
    with pytest.raises(ValueError, match=r"walkers=100000 x \d+ parameters need about .* GiB.*at most walkers="):
        _fit(_wl(walkers=100_000, groups=1))


def test_available_memory_is_known_here():
    free = arguments.available_memory_bytes()
    assert free is None or free > 0


def test_fp16_module_is_refused_like_16_mixed():
    with pytest.raises(ValueError, match=r"float16.*module.float\(\)"):
        _fit(_wl(), model=SpiralClassifier(width=3, depth=1).half())


def test_callable_variable_with_wrong_shape_is_named():
    def per_sample_error(out, y):
        return (out.argmax(-1) != y).float()  # (N,), not a scalar

    with pytest.raises(ValueError, match=r"per_sample_error returned \(20,\).*one\s+scalar"):
        _fit(_wl(variables=("train_loss", per_sample_error), ranges=[(-5.0, 2.0), (0.0, 1.0)]))


# --- data, per split -------------------------------------------------------------------------------------------

def _spiral_tensors():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 2, generator=g), torch.arange(20) % 2
    return x, y


def test_non_finite_train_inputs_are_refused_naming_the_split():
    x, y = _spiral_tensors()
    x[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"The train inputs hold 1 non-finite value"):
        _fit(_wl(), dm=TensorDataModule((x, y), _spiral_tensors()))


def test_labels_out_of_range_are_refused_naming_the_split():
    x, y = _spiral_tensors()
    bad = y.clone()
    bad[0] = 5
    with pytest.raises(ValueError, match=r"held-out labels range over \[0, 5\].*2 output classes.*\[0, 1\]"):
        _fit(_wl(), dm=TensorDataModule((x, y), (x, bad)))


def test_float_labels_for_cross_entropy_are_refused():
    x, y = _spiral_tensors()
    with pytest.raises(ValueError, match=r"train labels are torch.float32.*labels.long\(\)"):
        _fit(_wl(), dm=TensorDataModule((x, y.float() + 0.4), (x, y)))


def test_target_only_csv_is_refused(tmp_path):
    from lightning_entropy.tasks.tabular import load_table

    p = tmp_path / "t.csv"
    p.write_text("y\n1\n2\n3\n4\n")
    with pytest.raises(ValueError, match=r"0 feature columns.*add feature columns"):
        load_table(p)


def test_header_only_csv_is_refused(tmp_path):
    from lightning_entropy.tasks.tabular import load_table

    p = tmp_path / "h.csv"
    p.write_text("a,b,y\n")
    with pytest.raises(ValueError, match=r"h.csv.*header.*no data rows"):
        load_table(p)


# --- files -----------------------------------------------------------------------------------------------------

def _landscape():
    return Landscape([(-1.0, 1.0)], [4], ["ln_train_loss"])


def test_landscape_save_is_atomic_and_load_round_trips(tmp_path):
    path = _landscape().save(tmp_path / "l.npz")
    assert Landscape.load(path).shape == (4,)
    assert [p.name for p in tmp_path.iterdir()] == ["l.npz"]  # no temporary file left


@pytest.mark.parametrize("damage", ["truncate", "garbage", "nan_bias"])
def test_corrupt_landscape_file_names_the_file(tmp_path, damage):
    path = _landscape().save(tmp_path / "l.npz")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["bias"] = arrays["bias"].copy()
        arrays["bias"][1] = np.nan
        np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"l\.npz is not a readable landscape file"):
        Landscape.load(path)


def test_report_skips_a_corrupt_summary_with_a_warning(tmp_path):
    from lightning_entropy.cli.report import load_summaries

    good, bad = tmp_path / "0", tmp_path / "1"
    good.mkdir()
    bad.mkdir()
    (good / "summary.json").write_text(json.dumps({"task": "spiral"}))
    (bad / "summary.json").write_text('{"task": "spi')
    with pytest.warns(UserWarning, match=r"Skipping .*1.summary\.json"):
        out = load_summaries([good, bad])
    assert [s["run_name"] for s in out] == ["0"]


def test_nonfinite_moves_warn_above_a_few_percent():
    from types import SimpleNamespace

    from lightning_entropy.core import nonfinite

    state = SimpleNamespace(nonfinite=torch.tensor([10, 0, 0, 0]), step=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nonfinite.warn_if_many(state) == (10, 400)  # 2.5%: no warning
    state.nonfinite = torch.tensor([40, 0, 0, 0])
    with pytest.warns(RuntimeWarning, match=r"40 of 400 sampler moves \(10.0%\) were non-finite"):
        nonfinite.warn_if_many(state)


# --- security --------------------------------------------------------------------------------------------------

class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_reads_cifar_batches_and_refuses_code(tmp_path):
    from lightning_entropy.tasks.safe_pickle import load_data_pickle

    ok = tmp_path / "data_batch_1"
    with open(ok, "wb") as fh:
        pickle.dump({b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [3, 5],
                     b"batch_label": b"x", "names": ["cat"], "n": np.int64(2)}, fh)
    batch = load_data_pickle(ok)
    assert batch[b"labels"] == [3, 5] and batch[b"data"].shape == (2, 6)
    crafted = tmp_path / "data_batch_2"
    with open(crafted, "wb") as fh:
        pickle.dump({b"data": _Exploit(), b"labels": []}, fh)
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_2: refused to unpickle global (posix|os|nt)\.system"):
        load_data_pickle(crafted)


def test_pyproject_requires_torch_2_6():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in text


STARTUP = Path(__file__).parents[1] / "startup"


def _import_count(autoregister: str, code: str = "pass") -> int:
    """Modules imported by ``python -X importtime -c code`` (the lines of its report, minus the header)."""
    env = dict(os.environ, LIGHTNING_ENTROPY_AUTOREGISTER=autoregister)
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True,
                         text=True, check=True).stderr
    return sum(1 for line in err.splitlines() if line.startswith("import time:") and "|" in line) - 1


def test_startup_hook_imports_almost_nothing():
    """The hook's cost is measured as modules imported at start-up (robust on a busy machine, unlike timings):
    ``importlib.abc`` alone used to add ~65 modules (~20 ms); the hook may add only its own module. Measured on the
    source (``startup/``) and, where the installed copy is the same file, on the installed ``.pth`` too."""
    import importlib.util

    off = _import_count("0")
    source = _import_count("0", f"import sys; sys.path.insert(0, {str(STARTUP)!r}); import lightning_entropy_startup as h;"
                                " h.install(); assert 'importlib.abc' not in sys.modules")
    assert source - off <= 1, (source, off)
    spec = importlib.util.find_spec("lightning_entropy_startup")
    if spec is None or Path(spec.origin).read_bytes() != (STARTUP / "lightning_entropy_startup.py").read_bytes():
        pytest.skip("the installed startup hook is absent or stale (reinstall the package to measure it)")
    assert _import_count("1") - off <= 1


def test_startup_hook_still_registers_the_names(tmp_path):
    code = ("import sys; sys.path.insert(0, %r); import lightning_entropy_startup as h; h.install();"
            " from lightning.pytorch.strategies import StrategyRegistry; print('wang_landau' in StrategyRegistry)"
            % str(STARTUP))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, LIGHTNING_ENTROPY_AUTOREGISTER="0"))
    assert out.stdout.strip().endswith("True")
