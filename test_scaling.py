"""test_scaling.py: scripts/scaling.py, one behaviour per test, on a 20,000-character text and models
of a few thousand weights, so that a whole sweep trains in seconds.

    python -m pytest test_scaling.py
"""
import contextlib
import csv
import errno
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

import gpt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
import scaling  # noqa: E402  scripts/scaling.py

BUDGETS, SIZES = [20_000_000, 60_000_000], ["1x16", "1x32", "2x32"]  # 6 runs of 3 to 114 steps
TINY = ["--block_size", "16", "--batch_size", "4", "--eval_iters", "2", "--head_dim", "16",
        "--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # models this small: two threads only wait for each other (10x slower, busy CPU)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text(tmp_path_factory):  # the first 20,000 characters of shakespeare.txt
    with open(os.path.join(HERE, "shakespeare.txt"), encoding="utf-8") as f:
        start = f.read(20_000)
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(start, encoding="utf-8")
    return str(path)


def sweep_argv(text, out_dir, budgets=BUDGETS, sizes=SIZES, *extra):
    return ["--data", text, "--out_dir", str(out_dir), "--budgets", ",".join(map(str, budgets)),
            "--sizes", ",".join(sizes), *TINY, *extra]


def read_rows(out_dir):
    with open(os.path.join(out_dir, "results.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(text, tmp_path_factory):
    """A whole sweep, run once: its folder."""
    out_dir = tmp_path_factory.mktemp("sweep")
    assert scaling.main(sweep_argv(text, out_dir)) == 0
    return out_dir


# ------------------------------------------------------------ counting FLOPs
@pytest.mark.parametrize("n_layer,n_embd,n_head,vocab_size,block_size",
                         [(1, 32, 1, 63, 64), (2, 64, 2, 11, 16), (3, 48, 3, 20, 8)])
def test_flops_per_token_is_what_torch_counts_in_a_training_step(n_layer, n_embd, n_head, vocab_size,
                                                                 block_size):
    model = gpt.GPT(gpt.GPTConfig(vocab_size, block_size, n_layer, n_head, n_embd, dropout=0.0))
    for block in model.transformer.h:  # the formula's matmuls: torch's counter does not see SDPA's on a CPU
        block.attn.by_hand = True
    x, y = torch.randint(vocab_size, (2, 2, block_size))
    with FlopCounterMode(display=False) as counter:
        gpt.next_token_loss(model(x), y).backward()
    per_token = counter.get_total_flops() / (2 * block_size)  # a batch of 2 sequences
    assert per_token == scaling.flops_per_token(n_layer, n_embd, vocab_size, block_size)


def test_params_are_the_models_weights_that_multiply():
    model = gpt.GPT(gpt.GPTConfig(vocab_size=50, block_size=32, n_layer=3, n_head=2, n_embd=64))
    linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert scaling.matmul_params(3, 64, 50) == sum(linear.values())  # the head: the embedding matrix


@settings(max_examples=200, deadline=None)
@given(budget=st.integers(1, 10**19), n_layer=st.integers(1, 48), heads=st.integers(1, 32),
       vocab_size=st.integers(2, 100_000), block_size=st.integers(1, 4096), batch_size=st.integers(1, 512))
def test_a_run_spends_its_budget_to_within_one_step_and_never_more(budget, n_layer, heads, vocab_size,
                                                                    block_size, batch_size):
    n_embd = 32 * heads
    step = scaling.flops_per_token(n_layer, n_embd, vocab_size, block_size) * batch_size * block_size
    if budget < step:
        with pytest.raises(scaling.ScalingError, match="buys no step"):
            scaling.plan_runs([budget], [(n_layer, n_embd)], vocab_size, block_size, batch_size)
        return
    [run] = scaling.plan_runs([budget], [(n_layer, n_embd)], vocab_size, block_size, batch_size)
    assert run["flops"] == run["steps"] * step and run["tokens"] == run["steps"] * batch_size * block_size
    assert run["flops"] <= budget < run["flops"] + step


# ------------------------------------------------------------ a sweep
def test_a_sweep_trains_every_run_for_the_steps_its_budget_buys(finished):
    rows = read_rows(finished)
    assert list(rows[0].keys()) == scaling.COLUMNS
    assert {(int(r["budget"]), f"{r['n_layer']}x{r['n_embd']}") for r in rows} == \
        {(b, s) for b in BUDGETS for s in SIZES}
    for r in rows:
        budget, steps, flops = int(r["budget"]), int(r["steps"]), int(r["flops"])
        assert flops <= budget < flops + flops // steps
        folder = os.path.join(finished, f"{scaling.exactly(budget)}_{r['n_layer']}x{r['n_embd']}")
        with open(os.path.join(folder, "log.csv"), encoding="utf-8") as f:
            last = list(csv.DictReader(f))[-1]
        assert int(last["iter"]) == steps and float(last["val_loss"]) == float(r["val_loss"])
        assert math.isfinite(float(r["val_loss"])) and float(r["seconds"]) > 0
        assert not os.path.exists(os.path.join(folder, "ckpt.pt"))  # finished: no --resume state kept
    with open(os.path.join(finished, "fit.json"), encoding="utf-8") as f:
        assert [e["budget"] for e in json.load(f)["budgets"]] == BUDGETS


def test_a_rerun_trains_nothing(text, finished, monkeypatch, capsys):
    before = read_rows(finished)
    def no_training(cfg, resume=None, init=None):
        raise AssertionError(f"trained again: {cfg}")
    monkeypatch.setattr(gpt, "train", no_training)
    assert scaling.main(sweep_argv(text, finished)) == 0
    assert read_rows(finished) == before
    assert "6 runs, 6 of them in" in capsys.readouterr().out


def test_ctrl_c_keeps_the_finished_runs_and_the_same_command_goes_on(text, tmp_path, monkeypatch):
    """Ctrl-C at the 5th of the 4th run's 34 steps; the same command again trains the rest of that
    run from its ckpt.pt, its seconds both parts', then the runs after it."""
    runs, steps, real_train, real_step = [], [], gpt.train, gpt.train_step
    def counted(cfg, resume=None, init=None):
        runs.append(resume["iter"] if resume else 0)  # the step it starts from
        return real_train(cfg, resume)
    def ctrl_c_in_the_fourth_run(*args):
        steps.append(len(runs))
        if len(runs) == 4:
            time.sleep(0.1)  # 0.5 s trained before the stop
            if steps.count(4) == 5:  # the user presses Ctrl-C: gpt.py ends the step and saves
                os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args)
    monkeypatch.setattr(gpt, "train", counted)
    monkeypatch.setattr(gpt, "train_step", ctrl_c_in_the_fourth_run)
    assert scaling.main(sweep_argv(text, tmp_path)) == 130
    kept = read_rows(tmp_path)
    assert len(kept) == 3 and runs == [0, 0, 0, 0]
    runs.clear(), steps.clear()
    monkeypatch.setattr(gpt, "train_step", lambda *args: steps.append(1) or real_step(*args))
    assert scaling.main(sweep_argv(text, tmp_path)) == 0
    assert runs == [5, 0, 0] and len(steps) == (34 - 5) + 10 + 5
    rows = read_rows(tmp_path)
    assert rows[:3] == kept and len(rows) == 6
    assert rows[3]["steps"] == "34" and float(rows[3]["seconds"]) >= 0.5
    folder = os.path.join(tmp_path, "6e7_1x16")
    assert not {"ckpt.pt", "stopped.json"} & set(os.listdir(folder))


def test_a_second_sweep_into_the_same_out_dir_is_refused_while_the_first_runs(text, tmp_path,
                                                                              monkeypatch):
    """Both at once: each rewrote results.csv from what it had read plus its own runs, losing the
    other's; and both trained the same runs into the same folders."""
    real_train, second = gpt.train, []
    def second_sweep_meanwhile(*args):
        if not second:  # during the first sweep's first run, the same command in another terminal
            second.append("started")
            with contextlib.redirect_stderr(io.StringIO()) as err:
                second[:] = [scaling.main(sweep_argv(text, tmp_path)), err.getvalue()]
        return real_train(*args)
    monkeypatch.setattr(gpt, "train", second_sweep_meanwhile)
    assert scaling.main(sweep_argv(text, tmp_path)) == 0
    code, err = second
    assert code == 1 and f"another sweep (process {os.getpid()}) is writing in {tmp_path}" in err
    assert len(read_rows(tmp_path)) == 6


def test_the_lock_of_a_sweep_that_died_is_taken_over(text, finished, tmp_path):
    out_dir = tmp_path / "copy"
    shutil.copytree(finished, out_dir)
    (out_dir / "sweep.lock").write_text("999999999\n", encoding="utf-8")  # killed: its lock ended
    assert scaling.main(sweep_argv(text, out_dir)) == 0
    assert (out_dir / "sweep.lock").read_text(encoding="utf-8") == f"{os.getpid()}\n"


def test_without_matplotlib_the_table_and_fit_are_still_written(text, finished, monkeypatch, capsys):
    assert os.path.exists(os.path.join(finished, "scaling.png"))  # an older sweep's picture
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    os.remove(os.path.join(finished, "fit.json"))
    assert scaling.main(sweep_argv(text, finished)) == 0
    out = capsys.readouterr().out
    assert "no scaling.png: drawing needs matplotlib" in out and "optimal N" in out
    assert os.path.exists(os.path.join(finished, "fit.json"))
    assert not os.path.exists(os.path.join(finished, "scaling.png"))  # not beside the new fit


def test_the_picture_claims_no_trend_and_labels_small_numbers_plainly(tmp_path, monkeypatch):
    import matplotlib.figure
    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path: drawn.append(fig))
    rows = isoflop_rows([120, 1200], 0.5, offsets=(0.2, 0.5, 0.8))  # every size too big: no optimum
    for r in rows:
        r["params"] = round(r["params"] / 1000)  # 300 to 2,700 weights
    scaling.draw(rows, scaling.fit(rows), str(tmp_path / "scaling.png"))
    [fig] = drawn
    left, right = fig.axes
    assert "grows" not in right.get_title()
    labels = [t.get_text() for ax in (left, right) for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert "1.2e2" in labels and "1.2e3" in labels
    assert not any(label in ("0k", "1k", "2k", "3k") or "e+" in label for label in labels), labels


# ------------------------------------------------------------ the fit
def isoflop_rows(budgets, exponent, offsets=(-0.6, -0.3, 0.1, 0.4)):
    """Losses on exact parabolas in log10(N), bottoming out at N_opt = 50 C^exponent, L = 10 C^-0.05."""
    rows = []
    for c in budgets:
        best_n, best_loss = 50 * c**exponent, 10 * c**-0.05
        for d in offsets:
            rows.append(dict(budget=c, params=best_n * 10**d, val_loss=best_loss + 0.25 * d * d,
                             n_layer=1, n_embd=32))
    return rows


@pytest.mark.parametrize("exponent", [0.3, 0.5, 0.7])
def test_the_fit_recovers_a_known_parabola_and_power_law(exponent):
    budgets = [1e10, 1e11, 1e12]
    result = scaling.fit(isoflop_rows(budgets, exponent))
    for e, c in zip(result["budgets"], budgets):
        assert e["how"] == "parabola"
        assert e["params"] == pytest.approx(50 * c**exponent, rel=1e-4)
        assert e["val_loss"] == pytest.approx(10 * c**-0.05, abs=1e-4)
    assert result["laws"]["params"]["exponent"] == pytest.approx(exponent, abs=1e-3)
    assert result["laws"]["val_loss"]["exponent"] == pytest.approx(-0.05, abs=1e-3)


def noisy_rows(budget, noise, offsets=(-0.8, -0.4, 0.0, 0.4, 0.8)):
    rows = isoflop_rows([budget], 0.5, offsets)
    for r, n in zip(rows, noise):
        r["val_loss"] += n
    for i, r in enumerate(rows):  # a size each
        r["n_embd"] = 32 * (i + 1)
    return rows


def test_the_parabola_goes_through_every_run_of_a_budget():
    rows = noisy_rows(1e10, [0.01, -0.02, 0.015, 0.0, -0.01])
    [e] = scaling.fit(rows)["budgets"]
    x, y = np.log10([r["params"] for r in rows]), [r["val_loss"] for r in rows]
    a, b, c = np.polyfit(x, y, 2)
    assert e["how"] == "parabola" and e["params"] == round(10 ** (-b / (2 * a)))
    assert e["rms"] == pytest.approx(np.sqrt(np.mean((np.polyval([a, b, c], x) - y) ** 2)), abs=1e-4)


def test_noise_moves_the_optimum_less_than_through_three_runs():
    """Losses 0.01 off: through the best run and its neighbours, log10(N_opt) was 0.048 off (RMS)."""
    rng, errors = np.random.default_rng(0), []
    for _ in range(200):
        [e] = scaling.fit(noisy_rows(1e10, rng.normal(0, 0.01, 5)))["budgets"]
        if e["how"] == "parabola":
            errors.append(math.log10(e["params"] / (50 * 1e10**0.5)))
    assert len(errors) > 190 and np.sqrt(np.mean(np.square(errors))) < 0.025


def test_the_spread_is_the_fit_again_with_each_size_left_out():
    rows = noisy_rows(1e10, [0.01, -0.02, 0.015, 0.0, -0.01]) + noisy_rows(1e11, [0, 0.02, 0, 0, 0])
    result = scaling.fit(rows)
    for e in result["budgets"]:
        runs = [r for r in rows if r["budget"] == e["budget"]]
        refits = [scaling.optimum([r for r in runs if r is not left_out]) for left_out in runs]
        found = [e["params"]] + [o["params"] for o in refits if o["how"] == "parabola"]
        assert e["spread"] == [min(found), max(found)] and e["spread"][0] < e["spread"][1]
    low, high = result["laws"]["params"]["spread"]
    assert low < result["laws"]["params"]["exponent"] < high


def test_identical_losses_are_a_tie_not_the_smallest_size_best():
    rows = isoflop_rows([1e10], 0.5)
    for r in rows:
        r["val_loss"] = 2.0
    [e] = scaling.fit(rows)["budgets"]
    assert e["note"] == "all sizes tie: no bottom to read"


def test_the_fit_says_when_the_best_size_is_at_an_end_of_the_ladder():
    rows = isoflop_rows([1e10, 1e11], 0.5, offsets=(0.2, 0.5, 0.8))  # every size too big
    result = scaling.fit(rows)
    for e in result["budgets"]:
        assert e["how"].startswith("best run") and "smallest size is best" in e["note"]
        assert e["params"] == min(r["params"] for r in rows if r["budget"] == e["budget"])
    assert "params" not in result["laws"] and "a power law needs 2" in result["laws"]["note"]


def test_the_fit_needs_three_sizes_for_a_parabola_and_two_budgets_for_a_law(capsys):
    two_sizes = scaling.fit(isoflop_rows([1e10, 1e11], 0.5, offsets=(-0.3, 0.3)))
    assert all("only 2 size(s)" in e["note"] for e in two_sizes["budgets"])
    one_budget = scaling.fit(isoflop_rows([1e10], 0.5))
    assert one_budget["budgets"][0]["how"] == "parabola" and "params" not in one_budget["laws"]
    scaling.print_table(one_budget)
    assert "1 budget(s) with an optimum inside the ladder" in capsys.readouterr().out


# ------------------------------------------------------------ bad input: one line, a non-zero exit
def refused(capsys, argv):
    try:
        code = scaling.main(argv)
    except SystemExit as e:  # usage errors, as argparse's
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("budgets", ["2e12,abc", "", "-5", "0", "nan", "inf", "1e12;2e12"])
def test_a_malformed_budget_list_is_refused(text, tmp_path, capsys, budgets):
    argv = sweep_argv(text, tmp_path)
    argv[argv.index("--budgets") + 1] = budgets
    assert "--budgets" in refused(capsys, argv)


@pytest.mark.parametrize("sizes", ["2x", "x64", "2*64", "0x32", "2x64x3", "", "2x-32"])
def test_a_malformed_size_list_is_refused(text, tmp_path, capsys, sizes):
    argv = sweep_argv(text, tmp_path)
    argv[argv.index("--sizes") + 1] = sizes
    assert "--sizes" in refused(capsys, argv)


def test_a_width_the_heads_cannot_share_is_refused(text, tmp_path, capsys):
    err = refused(capsys, sweep_argv(text, tmp_path, BUDGETS, ["1x16", "1x24"]))
    assert "24" in err and "--head_dim 16" in err


def test_a_budget_too_small_for_one_step_is_refused_before_any_training(text, tmp_path, capsys):
    err = refused(capsys, sweep_argv(text, tmp_path, [10**6, *BUDGETS]))
    assert "budget 1e+06 buys no step of size 1x16" in err
    assert not os.path.exists(os.path.join(tmp_path, "results.csv"))


def test_an_unwritable_out_dir_is_refused(text, tmp_path, capsys):
    (tmp_path / "a_file").write_text("", encoding="utf-8")
    assert "--out_dir" in refused(capsys, sweep_argv(text, tmp_path / "a_file" / "scaling"))


@pytest.mark.parametrize("flag", [["--max_iters", "5"], ["--n_head", "2"], ["--resume"],
                                  ["--eval_interval=3"]])
def test_a_flag_scaling_sets_for_each_run_is_refused(text, tmp_path, capsys, flag):
    assert flag[0].split("=")[0] in refused(capsys, sweep_argv(text, tmp_path, BUDGETS, SIZES, *flag))


def test_rows_from_another_learning_rate_are_refused(text, finished, capsys):
    before = read_rows(finished)
    err = refused(capsys, sweep_argv(text, finished, BUDGETS, SIZES, "--learning_rate", "1e-3"))
    assert "learning_rate" in err and "another --out_dir" in err
    assert read_rows(finished) == before


def test_rows_from_another_text_are_refused(text, finished, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text(open(text, encoding="utf-8").read()[::-1], encoding="utf-8")
    err = refused(capsys, sweep_argv(str(other), finished))
    assert "data" in err and "other.txt" in err


def test_a_file_where_a_runs_folder_should_be_is_one_line(text, tmp_path, capsys):
    (tmp_path / "2e7_1x16").write_text("not a folder", encoding="utf-8")
    assert "2e7_1x16" in refused(capsys, sweep_argv(text, tmp_path))


def test_a_full_disk_while_saving_results_is_one_line(text, tmp_path, capsys, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "results.csv.tmp"))
    monkeypatch.setattr(scaling, "save_results", full)
    assert "No space left on device" in refused(capsys, sweep_argv(text, tmp_path, BUDGETS[:1], SIZES[:1]))


def test_a_reader_that_stops_early_ends_it_quietly(text, finished):
    """`scaling.py ... | head -2`: the pipe closes; the default SIGPIPE ends the process, no traceback."""
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "scripts", "scaling.py"),
                          *sweep_argv(text, finished)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before it writes a line
    err = p.stderr.read().decode()
    assert p.wait() == -signal.SIGPIPE and "Error" not in err, err


@pytest.mark.parametrize("typo,meant", [("--budget", "--budgets"), ("--size=1x32", "--sizes"),
                                        ("--head-dim", "--head_dim"), ("--learning_rat", "--learning_rate"),
                                        ("--max_iter", "--max_iters")])  # then: scaling.py sets it
def test_a_mistyped_flag_gets_the_closest_of_scalings_and_gpts_flags(text, tmp_path, capsys, typo, meant):
    err = refused(capsys, sweep_argv(text, tmp_path, BUDGETS, SIZES, typo, "1"))
    assert err == f"scaling.py: error: unrecognized argument {typo}; did you mean {meant}?"


@pytest.mark.parametrize("edit,says", [
    (lambda r: r.__setitem__(7, "nan"), "line 3: not a row"),  # a val_loss
    (lambda r: r.__setitem__(7, "inf"), "line 3: not a row"),
    (lambda r: r.__setitem__(8, "-inf"), "line 3: not a row"),  # seconds
    (lambda r: r.append("99"), "line 3: not a row"),  # a tenth value
    (lambda r: r.__setitem__(6, str(int(r[6]) + 1)), "line 3: flops"),  # more FLOPs than the steps
    (lambda r: r.__setitem__(4, str(int(r[4]) * 2)), "line 3: steps"),
])
def test_a_results_row_scaling_did_not_write_is_refused_by_its_line(text, finished, tmp_path, capsys,
                                                                    edit, says):
    out_dir = tmp_path / "copy"
    shutil.copytree(finished, out_dir)
    with open(out_dir / "results.csv", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    edit(lines[2])
    with open(out_dir / "results.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(lines)
    before = (out_dir / "results.csv").read_text(encoding="utf-8")
    assert says in refused(capsys, sweep_argv(text, out_dir))
    assert (out_dir / "results.csv").read_text(encoding="utf-8") == before


def test_a_run_twice_in_results_is_refused(text, finished, tmp_path, capsys):
    out_dir = tmp_path / "copy"
    shutil.copytree(finished, out_dir)
    with open(out_dir / "results.csv", "a", encoding="utf-8") as f:  # the second size again, worse
        row = read_rows(finished)[1]
        f.write(",".join(row.values()).replace(row["val_loss"], "9.9") + "\n")
    err = refused(capsys, sweep_argv(text, out_dir))
    assert "line 8: budget 20000000, size 1x32 again" in err



@pytest.mark.parametrize("flag,threads", [([], 1), (["--threads", "2"], 2)])
def test_the_runs_train_on_one_thread_unless_threads_says_more(text, tmp_path, monkeypatch, flag, threads):
    seen, real_train = [], gpt.train
    def train(*args):
        seen.append(torch.get_num_threads())
        return real_train(*args)
    monkeypatch.setattr(gpt, "train", train)
    torch.set_num_threads(2)  # torch's own choice on 2 cores
    try:
        assert scaling.main(sweep_argv(text, tmp_path, BUDGETS[:1], SIZES[:1], *flag)) == 0
        assert seen == [threads] and torch.get_num_threads() == 2  # and back to torch's after
    finally:
        torch.set_num_threads(1)


def test_a_run_that_fails_is_one_line_from_its_exception_the_traceback_in_train_log(text, tmp_path,
                                                                                   capsys, monkeypatch):
    def disk_full(*args):  # what torch.save raised when the disk filled up
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 38272 vs 38164")
    monkeypatch.setattr(gpt, "save_checkpoint", disk_full)
    err = refused(capsys, sweep_argv(text, tmp_path))
    assert err == (f"error: the run in {tmp_path}/2e7_1x16 failed: [enforce fail at inline_container"
                   ".cc:672] . unexpected pos 38272 vs 38164 (more in its train.log)")
    with open(tmp_path / "2e7_1x16" / "train.log", encoding="utf-8") as f:
        assert "Traceback" in f.read()


def test_a_warmup_as_long_as_a_run_is_refused(text, tmp_path, capsys):
    err = refused(capsys, sweep_argv(text, tmp_path, BUDGETS, SIZES, "--warmup_iters", "3"))
    assert "--warmup_iters 3: 2x32 at 2e7 trains 1 step(s), so its learning rate would never" in err


def test_the_sweep_has_an_eta_before_its_first_run_ends(text, tmp_path, capsys):
    assert scaling.main(sweep_argv(text, tmp_path, BUDGETS[:1])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("sweep eta ") and "(a guess: 1e11 FLOPs a second" in lines[1]
    assert lines[2].startswith("[1/3]")
    assert scaling.main(sweep_argv(text, tmp_path)) == 0  # 3 runs more: at the speeds measured
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("sweep eta ") and "guess" not in lines[1]


def test_the_default_text_is_found_beside_gpt_py_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no shakespeare.txt here
    argv = ["--out_dir", "out", "--budgets", "2e7", "--sizes", "1x16", *TINY]
    assert scaling.main(argv) == 0
    with open(os.path.join(HERE, "shakespeare.txt"), encoding="utf-8") as f:
        (tmp_path / "shakespeare.txt").write_text(f.read(), encoding="utf-8")
    monkeypatch.setattr(gpt, "train", None)  # the same text, now here: the run is done already
    assert scaling.main(argv) == 0


def test_a_run_that_reads_the_text_a_hundred_times_says_so_plainly(text, tmp_path, capsys):
    short_text = tmp_path / "short.txt"
    short_text.write_text(open(text, encoding="utf-8").read(200), encoding="utf-8")
    assert scaling.main(sweep_argv(str(short_text), tmp_path / "out", [5 * 10**8], ["1x16"])) == 0
    [line] = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[1/1]")]
    epochs = line.split(" epochs")[0].split()[-1]
    assert float(epochs) > 100 and "e" not in epochs, line
