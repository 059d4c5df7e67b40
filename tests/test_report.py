"""A Hydra multirun from the command line (a real subprocess) and the report that aggregates it."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_entropy.cli import report

TINY = [
    "trainer.max_steps=4", "trainer.progress_bar=false", "trainer.threads=1",
    "sampler.walkers=8", "sampler.steps_per_lightning_step=5", "sampler.start_steps=10",
    "baseline.epochs=30", "baseline.seeds=[0,1]", "baseline.parallel=false",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``lightning-entropy -m model.width=3,5 ...`` in a subprocess, as a user types it."""
    root = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lightning_entropy.cli", "-m", "model.width=3,5", *TINY,
           f"hydra.sweep.dir={root}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_multirun_writes_one_run_per_width(sweep):
    runs = report.find_runs(sweep)
    assert [r.name for r in runs] == ["0", "1"]
    widths = [json.loads((r / "summary.json").read_text())["model_config"]["width"] for r in runs]
    assert widths == [3, 5]
    params = [json.loads((r / "summary.json").read_text())["parameters"] for r in runs]
    assert params[0] < params[1]
    for r in runs:
        assert (r / "landscape.npz").is_file() and (r / "landscape.png").is_file()


def test_report_aggregates_the_sweep_into_figures_and_a_table(sweep, tmp_path):
    lines = []
    result = report.report(sweep, tmp_path, echo=lines.append)
    for name in ("report.png", "report.csv", "report.md"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["overrides"] for r in rows] == ["model.width=3", "model.width=5"]
    assert [int(r["parameters"]) for r in rows] == sorted(int(r["parameters"]) for r in rows)
    for row, summary in zip(rows, (json.loads((p / "summary.json").read_text()) for p in report.find_runs(sweep))):
        expected = summary["mean_advantage"]
        assert (row["mean_advantage"] == "") == (expected is None)
        if expected is not None:
            assert float(row["mean_advantage"]) == pytest.approx(expected, rel=1e-3)
    if any(r["mean_advantage"] for r in rows):
        assert (tmp_path / "width_study.png").is_file()
    assert "model.width=5" in (tmp_path / "report.md").read_text()
    assert "2 runs" in lines[-1] and len(result["rows"]) == 2


def test_report_command_names_a_directory_without_runs(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "No summary.json" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not any(Path(tmp_path).iterdir())  # nothing written


def test_joblib_sweep_logs_every_run_into_one_wandb_group(tmp_path):
    """``-m hydra/launcher=local logger=wandb``: runs in parallel worker processes, one W&B group for the sweep."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lightning_entropy.cli", "-m", "model.width=3,5", "hydra/launcher=local",
           "logger=wandb", *TINY, f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(tmp_path.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert [f.relative_to(tmp_path).parts[0] for f in files] == ["0", "1"]  # one offline W&B run per job
    groups = {json.loads((tmp_path / job / "summary.json").read_text())["wandb_group"] for job in ("0", "1")}
    assert len(groups) == 1 and str(tmp_path) in groups.pop()  # both jobs, one group named after the sweep


def _reproduce():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "reproduce.py"
    spec = importlib.util.spec_from_file_location("reproduce", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _training_modes():
    """benchmarks/training_modes.py as a module (registered: its dataclasses look their module up)."""
    import importlib.util

    if "training_modes" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "training_modes", Path(__file__).resolve().parents[1] / "benchmarks" / "training_modes.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["training_modes"] = module
        spec.loader.exec_module(module)
    return sys.modules["training_modes"]


def test_training_halves_merge_into_one_table_keeping_the_tasks_not_rerun(tmp_path):
    """The report's training modes run as two processes; their tables (written by benchmarks/training_modes.py)
    replace those tasks' sections of docs/training_modes.md and keep the others, numbers included."""
    modes = _training_modes()
    head = ["task", "method", "held-out metric", "ln L_train", "gain over the endpoint"]

    def part(path, task, value):
        modes.write_markdown(path, [[task, "adam", value, "-3.0", "-"]], [f"{task}: verdict {value}"], head, {task: 5})
        modes.write_results(path.with_suffix(".json"), {task: [{"adam": [-3.0, float(value)]}]})

    target = tmp_path / "training_modes.md"
    part(target, "spiral", "0.5")
    modes.write_markdown(target, [["char_lm", "adam", "0.1", "-1.0", "-"]], ["char_lm: old"], head, {"char_lm": 5})
    modes.write_results(target.with_suffix(".json"), {"char_lm": [{"adam": [-1.0, 0.1]}]})
    part(tmp_path / "half0.md", "spiral", "0.9")
    part(tmp_path / "half1.md", "house_prices", "0.7")
    _reproduce().merge_training([tmp_path / "half0.md", tmp_path / "half1.md"], target)
    text = target.read_text()
    assert [line for line in text.splitlines() if line.startswith("### ")] == [
        "### spiral", "### char_lm", "### house_prices"]
    assert "spiral: verdict 0.9" in text and "spiral: verdict 0.5" not in text and "char_lm: old" in text
    assert text.startswith("Held-out metric:")
    numbers = json.loads(target.with_suffix(".json").read_text())
    assert numbers["spiral"][0]["adam"] == [-3.0, 0.9] and set(numbers) == {"spiral", "char_lm", "house_prices"}


def test_training_seeds_stop_when_the_time_box_cannot_hold_one_more():
    """A task's seeds run while the box holds one more seed of the mean length so far; two always run."""
    modes = _training_modes()
    now = [0.0]

    def run(seed, cost=(100.0, 140.0, 120.0, 130.0, 90.0)):
        now[0] += cost[seed]
        return {"seed": seed}

    def seeds_within(minutes):
        now[0] = 0.0
        return [r["seed"] for r in modes.run_seeds(run, [0, 1, 2, 3, 4], minutes, clock=lambda: now[0])]

    assert seeds_within(1.0) == [0, 1]  # past the box after one seed: the second still runs
    assert seeds_within(5.99) == [0, 1]  # 240 s spent, mean 120: a third would end at 360 s = 6 min
    assert seeds_within(6.0) == [0, 1, 2]
    assert seeds_within(10.0) == [0, 1, 2, 3]  # 490 s after four, mean 122.5: a fifth would end past 600 s
    assert seeds_within(10.25) == [0, 1, 2, 3, 4]
    assert seeds_within(float("inf")) == [0, 1, 2, 3, 4]


def test_training_verdict_says_an_alternative_gains_beyond_its_errors_only_where_it_does():
    """The per-task sentence of the training modes: an alternative that gains more on average than entropy_md but
    within 2 of its own standard errors is not said to gain beyond them (the modular-arithmetic case)."""
    verdict = _training_modes().verdict
    gains = {"entropy_md": (0.006, 0.0015), "entropy_md ensemble": (0.0, 0.0), "adam+T": (0.0008, 0.0044),
             "swa": (0.0053, 0.0028), "sam+T": (0.0083, 0.0044), "sam@L": (-0.04, 0.04)}
    text = verdict("modular_arithmetic", gains, 40.0)
    assert "entropy_md gains beyond 2 standard errors; sam+T gains more on average but not beyond" in text
    assert "both gain" not in text
    gains["sam+T"] = (0.0083, 0.0030)  # now beyond its 2 standard errors
    assert "entropy_md and sam+T both gain beyond 2 standard errors" in verdict("modular_arithmetic", gains, 40.0)


def test_training_summary_names_which_way_entropy_md_left_the_train_loss():
    """Off the endpoint's train loss, the sentence says why that matters for the direction it went."""
    modes = _training_modes()

    def seed(md, ensemble):
        out = {m: (-5.0, 0.5) for m in modes.METHODS}
        out["entropy_md"], out["entropy_md ensemble"], out["_budget"] = (md, 0.5), (ensemble, 0.6), (10.0, 10.0)
        return out

    _, above = modes.summarize("char_lm", [seed(-4.9, -4.9), seed(-4.9, -4.9)], higher_better=True)
    assert "a higher train loss (less fitted) may account for part of a gain" in above and "averaged" not in above
    _, below = modes.summarize("house_prices", [seed(-5.0, -6.5), seed(-5.0, -6.5)], higher_better=False)
    assert "averaged prediction fits the train set better" in below and "higher train loss" not in below
    _, level = modes.summarize("spiral", [seed(-5.0, -5.01), seed(-5.0, -5.01)], higher_better=True)
    assert "not at equal train loss" not in level


def _run(overrides, parameters, advantage, error, converged=True, tags=()):
    return {"overrides": overrides, "parameters": parameters, "mean_advantage": advantage,
            "mean_advantage_error": error, "converged": converged, "tags": list(tags)}


def test_reproduction_verdict_judges_a_claim_only_where_every_run_converged():
    verdict = _reproduce().verdict
    unsettled = verdict("spiral_width", [_run("model.width=4", 62, 0.05, 0.002),
                                         _run("model.width=8", 170, 0.02, 0.002, False, ["readout not mixed"]),
                                         _run("model.width=16", 466, None, None, False, ["replicas disagree"])])
    assert unsettled.startswith("not settled at this budget: 1 of 3 runs converged")
    assert "readout not mixed" in unsettled and "replicas disagree" in unsettled
    assert "no train-loss bin covered" in unsettled
    # a size grid says what it measured so far, smallest network first, without judging it
    assert unsettled.endswith("Measured so far (errors are lower bounds until the runs converge): +0.050 (62"
                              " parameters), +0.020 (170 parameters): falls with size at every step")
    mixed = verdict("spiral_depth", [_run("model.depth=3", 116, -0.004, 0.002, False, ["readout not mixed"]),
                                     _run("model.depth=2", 74, 0.03, 0.001, False), _run("model.depth=5", 200, 0.05,
                                                                                         0.003, False)])
    assert mixed.endswith("+0.030 (74 parameters), -0.004 (116 parameters), +0.050 (200 parameters): no steady"
                          " trend (falls at 1 of 2 steps)")
    assert "Measured so far" not in verdict("spiral", [_run("", 116, 0.02, 0.001, False)])
    # a grid over size and data size: the trend is read per number of points
    grid = verdict("spiral_regression", [_run("model.width=30 task.n_points=100", 1051, 0.07, 0.02, False),
                                         _run("model.width=30 task.n_points=200", 1051, 0.01, 0.02, False),
                                         _run("model.width=100 task.n_points=100", 10501, 0.03, 0.05, False),
                                         _run("model.width=100 task.n_points=200", 10501, 0.05, 0.05, False)])
    assert grid.endswith("task.n_points=100: +0.070 (1051 parameters), +0.030 (10501 parameters): falls with size at"
                         " every step; task.n_points=200: +0.010 (1051 parameters), +0.050 (10501 parameters): rises"
                         " with size at every step")
    converged = verdict("spiral_regression", [_run("model.width=30 task.n_points=100", 1051, 0.5, 0.02),
                                              _run("model.width=30 task.n_points=200", 1051, 0.3, 0.02),
                                              _run("model.width=100 task.n_points=100", 10501, 0.1, 0.02),
                                              _run("model.width=100 task.n_points=200", 10501, 0.29, 0.02)])
    assert converged.startswith("not reproduced: the advantage does not shrink with size at task.n_points=200")
    assert "task.n_points=100" not in converged
    # all converged: positive beyond 2 errors and shrinking with size
    assert verdict("spiral_width", [_run("model.width=4", 62, 0.05, 0.002),
                                    _run("model.width=16", 466, 0.01, 0.002)]) == "reproduced"
    flat = verdict("spiral_width", [_run("model.width=4", 62, 0.02, 0.002), _run("model.width=16", 466, 0.019, 0.002)])
    assert flat.startswith("not reproduced") and "does not shrink" in flat
    weak = verdict("spiral", [_run("", 116, 0.003, 0.002)])
    assert weak.startswith("not reproduced") and "+0.003 ± 0.002 is not above 2 errors" in weak
    # MNIST: an advantage at 2 channels, none at 3 and 4
    assert verdict("mnist", [_run("model.width=2", 300, 0.06, 0.01), _run("model.width=3", 450, 0.01, 0.01)]) \
        == "reproduced"
    wrong = verdict("mnist", [_run("model.width=2", 300, 0.06, 0.01), _run("model.width=3", 450, 0.05, 0.01)])
    assert wrong.startswith("not reproduced") and "model.width=3" in wrong and "where the paper sees none" in wrong
    assert verdict("char_lm", [_run("", 5000, 0.01, 0.001)]).startswith("measured only")
    assert verdict("spiral", []) == "not settled at this budget: no run finished"


def test_reproduction_section_states_r_hat_and_a_verdict_per_preset(sweep, tmp_path):
    reproduce = _reproduce()
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    runs.mkdir()
    shutil.copytree(sweep, runs / "spiral_width", symlinks=True)
    if not (runs / "spiral_width" / "width_study.png").exists():  # the tiny runs' grids may miss the baseline's bins
        (runs / "spiral_width" / "width_study.png").write_bytes(b"\x89PNG")
    text = "\n".join(reproduce.section("spiral_width", runs, tmp_path, docs, {}))
    assert "| its R-hat |" in text and "model.width=3" in text and "model.width=5" in text
    assert "**Verdict: not settled at this budget: 0 of 2 runs converged (" in text  # 4 Lightning steps: not converged
    assert (docs / "reproduction" / "spiral_width.png").is_file()
    # a size preset also shows the advantage against parameter count
    assert (docs / "reproduction" / "spiral_width_size.png").is_file() and "spiral_width_size.png" in text
    assert "experiment=spiral_width_paper" in text


def test_report_panels_state_each_runs_verdict_and_its_baseline_by_name(sweep):
    summaries = report.load_summaries(report.find_runs(sweep))
    fig = report.landscapes_figure(summaries)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 2 and all("NOT CONVERGED: " in t for t in titles)  # 4 Lightning steps: not converged
    tags = summaries[0]["convergence"]["tags"]
    assert tags and all(tag.split()[0] in titles[0] for tag in tags)  # the run's own verdict, readouts included
    labels = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert any(label.startswith("Adam") for label in labels)  # the baseline named by its optimiser


def test_estimates_show_the_errors_first_digit():
    from lightning_entropy.cli.summary import estimate

    assert estimate(0.01963, 0.00046) == "+0.0196 ± 0.0005"
    assert estimate(0.0196, 0.0018) == "+0.020 ± 0.002"
    assert estimate(-0.5, 0.012) == "-0.500 ± 0.012"
    assert estimate(0.1, None) == "+0.100"
