"""
scaling.py: scaling laws on a laptop. For each compute budget, which model size learns best?

    python scripts/scaling.py                  # 15 runs on shakespeare.txt: minutes on 2 CPU cores
    python scripts/scaling.py --data my.txt --out_dir mine --budgets 2e12,8e12 --sizes 1x64,2x96

The IsoFLOP method of the Chinchilla paper (Hoffmann et al. 2022; nanochat's runs/scaling_laws.sh).
A budget is a number of training FLOPs: a small model spends it on many tokens, a big one on few,
and between them lies the size that reaches the lowest loss. Each size (--sizes, n_layer x n_embd)
trains through gpt.py for the steps each budget (--budgets) buys:
- FLOPs per token = 6 N + 12 n_layer n_embd block_size (nanochat's estimate_flops; PaLM, appendix
  B). N counts the weights that multiply, 2 FLOPs per token forward and 4 backward each: 12 n_embd^2
  per block (c_attn, c_proj, c_fc, c_proj) and the head, vocab_size x n_embd, which is the token
  embedding too (tied). The position embedding (a lookup), biases and norms do not count, so N is
  below gpt.py's parameter count. The second term is attention's scores and weighted sum, masked
  half included. Evals do not count.
- steps = floor(budget / (FLOPs per token x batch_size x block_size)): within one step of the
  budget, never over it. A budget too small for one step of a size is refused.
- heads: each --head_dim (32) wide, so n_head = n_embd / head_dim.
- the recipe: gpt.py's tiny preset (batch 16, learning rate 5e-3 falling to 5e-4 at the last step,
  no dropout), block_size 64 (attention then costs 5-22% of the FLOPs, as in big models, not half),
  warmup over 5% of the steps, the val loss on 20 batches. Any other gpt.py training flag applies
  to every run. The default sizes have one layer: at budgets this small, one wide layer learns
  more than two narrow ones (RESULTS.md).
In --out_dir: results.csv, a row per run as it ends (params: N, the weights that multiply, not
gpt.py's count; val_loss: the last eval, at the final step; seconds: the run's wall time, evals
included); settings.json, the data and recipe of those rows; a folder per run (best.pt, log.csv,
train.log, which ends with 300 characters the model wrote: gpt.py writes them after every run, and
has no switch to skip them). Then fit.json and a table: per budget, the optimal N and loss at the
bottom of a parabola in log10(N) through all its runs; across budgets, the power laws N_opt ~ C^a
and L_opt ~ C^b; how rough each is (the fit again with each size left out); scaling.png (pip
install -e ".[plot]"). Ctrl-C keeps the finished runs, and the one it stopped (ckpt.pt): the same
command again goes on. One sweep at a time in an --out_dir. The runs train on --threads (1) CPU
threads: a model this small gains little from a second thread, and loses 5-30x when another
program shares the cores. On a GPU: bigger budgets, sizes, batches and contexts, and a text that is
not read many times over (scripts/prepare.py), say --data DIR --budgets 1e15,3e15,1e16 --sizes
4x256,6x384,8x512,12x768 --head_dim 64 --block_size 256 --batch_size 64 --learning_rate 1e-3 (not
measured: no GPU here).
"""
import argparse
import contextlib
import csv
import difflib
import hashlib
import json
import math
import os
import signal
import sys
import time
import traceback

import numpy as np  # the fits
import torch  # its threads

try:
    import fcntl  # one sweep at a time in an --out_dir (Windows has no fcntl: no lock there)
except ImportError:
    fcntl = None

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt  # noqa: E402  trains every run

BUDGETS, SIZES = "1e12,2e12,4e12", "1x32,1x64,1x96,1x128,1x192"
RECIPE = dict(config="tiny", block_size="64", eval_iters="20")  # flags given override these
SETTINGS = ("config", "block_size", "batch_size", "learning_rate", "min_lr", "warmup_iters",
            "weight_decay", "grad_clip", "dropout", "seed", "eval_iters", "gelu")  # change a loss
PER_RUN = ("n_layer", "n_embd", "n_head", "max_iters", "lr_decay_iters", "eval_interval", "resume",
           "init_from", "overwrite", "sample")  # gpt.py flags that scaling.py sets, or refuses
GUESS = 10**11  # FLOPs a second, the ETA before a run ends: the default sweep, one Zen 5 core
COLUMNS = ["budget", "n_layer", "n_embd", "params", "steps", "tokens", "flops", "val_loss",
           "seconds"]


class ScalingError(Exception):  # a problem the user can fix: one line, no traceback
    pass


# ------------------------------------------------------------ counting FLOPs
def matmul_params(n_layer, n_embd, vocab_size):
    """N: the weights that multiply a token's numbers; the head is the token embedding (tied)."""
    return 12 * n_layer * n_embd**2 + vocab_size * n_embd


def flops_per_token(n_layer, n_embd, vocab_size, block_size):
    """6 per weight, forward and backward; then attention, per layer: q.k for block_size keys and
    the weighted sum of as many values, 2 x 2 x block_size x n_embd forward, twice that backward."""
    return 6 * matmul_params(n_layer, n_embd, vocab_size) + 12 * n_layer * n_embd * block_size


# ------------------------------------------------------------ the command line
def usage_error(message):  # one line and exit 2, as gpt.py's
    print(f"scaling.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_budgets(text):
    try:
        budgets = {int(float(b)) for b in text.split(",")}  # whole FLOPs, as the CSV keeps them
    except (ValueError, OverflowError):  # also nan and inf
        usage_error(f"--budgets {text!r}: not a comma-separated list of FLOPs, like 2e12,6e12")
    if min(budgets) < 1:
        usage_error(f"--budgets {text!r}: a budget must be at least 1 FLOP")
    return sorted(budgets)


def parse_sizes(text, head_dim):
    sizes = set()
    for size in text.split(","):
        n_layer, _, n_embd = size.strip().partition("x")
        if not (n_layer.isdigit() and n_embd.isdigit() and int(n_layer) > 0 and int(n_embd) > 0):
            usage_error(f"--sizes {text!r}: {size!r} is not n_layerxn_embd, like 2x64")
        if int(n_embd) % head_dim:
            usage_error(f"--sizes: {size} is {n_embd} wide, not a multiple of --head_dim "
                        f"{head_dim}, so its heads cannot share it equally")
        sizes.add((int(n_layer), int(n_embd)))
    return sorted(sizes, key=lambda size: matmul_params(*size, 1))


def parse(argv):
    """scaling.py's own flags; the others are gpt.py's, for every run (gpt.py checks them)."""
    p = argparse.ArgumentParser(prog="scaling.py", allow_abbrev=False,
                                description="IsoFLOP scaling laws: the best model size for each "
                                "compute budget. Any other gpt.py training flag applies to every "
                                "run.")
    p.error = usage_error  # one line, not argparse's usage
    p.add_argument("--budgets", default=BUDGETS, help=f"training FLOPs, with commas ({BUDGETS})")
    p.add_argument("--sizes", default=SIZES, help=f"n_layerxn_embd, with commas ({SIZES})")
    p.add_argument("--head_dim", type=int, default=32, help="n_head = n_embd / head_dim (32)")
    p.add_argument("--out_dir", default="scaling", help="results, fit, picture, runs (scaling)")
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads for the runs (1)")
    args, gpt_flags = p.parse_known_args(argv)
    ours = [flag for action in p._actions for flag in action.option_strings if flag[1] == "-"]
    theirs = [f"--{k}" for k in (*gpt.DEFAULTS, *gpt.PRESETS["medium"], *PER_RUN)]
    for flag in gpt_flags:  # a typo: the closest of both files' flags, not gpt.py's alone
        name = flag.split("=")[0]
        if name.startswith("--") and name not in theirs:
            closest = difflib.get_close_matches(name, ours + theirs, n=1) or ["--help"]
            usage_error(f"unrecognized argument {flag}; did you mean {closest[0]}?")
    for name in ("head_dim", "threads"):
        if getattr(args, name) < 1:
            usage_error(f"argument --{name}: must be at least 1, got {getattr(args, name)}")
    given = {f.split("=")[0].removeprefix("--") for f in gpt_flags if f.startswith("--")}
    for name in sorted(given & set(PER_RUN)):
        usage_error(f"--{name}: scaling.py decides it for each run (from --budgets, --sizes and "
                    "--head_dim); drop it")
    recipe = [flag for k, v in RECIPE.items() if k not in given for flag in (f"--{k}", v)]
    cfg, _, _ = gpt.settings(gpt.parse_args(recipe + gpt_flags))  # a bad flag: gpt.py's one line
    args.warmup = "warmup_iters" not in given  # then 5% of each run's steps
    budgets, sizes = parse_budgets(args.budgets), parse_sizes(args.sizes, args.head_dim)
    return args, recipe + gpt_flags, cfg, budgets, sizes


def plan_runs(budgets, sizes, vocab_size, block_size, batch_size):
    """Every (budget, size), smallest budget first, with the steps the budget buys."""
    tokens_per_step, plan = batch_size * block_size, []
    for budget in budgets:
        for n_layer, n_embd in sizes:
            per_token = flops_per_token(n_layer, n_embd, vocab_size, block_size)
            steps = budget // (per_token * tokens_per_step)
            if steps < 1:
                raise ScalingError(f"budget {budget:.3g} buys no step of size {n_layer}x{n_embd}: "
                                   f"a step costs {per_token * tokens_per_step:.3g} FLOPs "
                                   f"({tokens_per_step:,} tokens x {per_token:,}); raise the "
                                   "budget or drop the size")
            plan.append(dict(budget=budget, n_layer=n_layer, n_embd=n_embd,
                             params=matmul_params(n_layer, n_embd, vocab_size), steps=steps,
                             tokens=steps * tokens_per_step,
                             flops=steps * tokens_per_step * per_token))
    return plan


# ------------------------------------------------------------ results.csv and its settings
def exactly(budget):  # 2000000000000 -> "2e12", 1500000000000 -> "1.5e12": short, never rounded
    digits = str(budget).rstrip("0")
    return f"{digits[0]}{'.' if digits[1:] else ''}{digits[1:]}e{len(str(budget)) - 1}"


def size_of(run):  # "1x64"
    return f"{run['n_layer']}x{run['n_embd']}"


def write_atomic(path, text):  # killed mid-write, the previous file is still whole
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def fingerprint(data, path):
    """Of the tokens and their tokenizer, wherever gpt.load_data found the text; of a prepared
    folder, its meta.json (the tokenizer and counts), not gigabytes of ids."""
    if os.path.isdir(path):
        with open(os.path.join(path, "meta.json"), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    h = hashlib.sha256(json.dumps(data.tokenizer.spec).encode())
    for split in ("train", "val"):
        h.update(data.splits[split].tobytes())
    return h.hexdigest()[:16]


def check_settings(out_dir, settings):
    """The runs of one results.csv compare only if they share the data and the recipe. Returns
    whether the folder's settings.json holds these settings (then a stopped run may go on)."""
    path = os.path.join(out_dir, "settings.json")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = None
    if os.path.exists(os.path.join(out_dir, "results.csv")):
        if saved is None:
            raise ScalingError(f"{out_dir}/results.csv has no readable settings.json beside it: "
                               "its runs' settings are unknown; use another --out_dir")
        if saved.get("data") != settings["data"]:  # the same text in another place is the same
            raise ScalingError(f"{out_dir}/results.csv holds runs on other data "
                               f"({saved.get('data_path')}, not {settings['data_path']}): use "
                               "another --out_dir")
        for key, value in settings.items():
            if key != "data_path" and saved.get(key) != value:
                raise ScalingError(f"{out_dir}/results.csv holds runs with {key} {saved.get(key)}, "
                                   f"not {value}: give the same settings, or use another --out_dir")
    write_atomic(path, json.dumps(settings, indent=1) + "\n")
    return saved is not None and all(saved.get(k) == v for k, v in settings.items()
                                     if k != "data_path")


@contextlib.contextmanager
def only_sweep(out_dir):
    """Holds out_dir for this sweep: a second one at once would train the same runs into the same
    folders, and rewrite results.csv without the other's. The OS's lock (flock) ends with the
    process, however that ends: a dead sweep's never stays."""
    with open(os.path.join(out_dir, "sweep.lock"), "a+", encoding="utf-8") as f:
        try:
            if fcntl:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live process
            f.seek(0)
            raise ScalingError(f"another sweep (process {f.read().strip() or '?'}) is writing in "
                               f"{out_dir}: let it finish, or use another --out_dir") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")  # for that message
        f.flush()
        yield


def read_results(out_dir, shape):
    """results.csv's rows, each as scaling.py wrote it: a number edited, missing or not finite, or
    a run twice, is named by its line (the fit would crash, or be wrong). shape: as plan_runs's."""
    path, rows, seen = os.path.join(out_dir, "results.csv"), [], set()
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ScalingError(f"{path} does not have scaling.py's columns; use another --out_dir")
        for r in reader:
            where = f"{path}, line {reader.line_num}"
            try:  # a number missing, garbled, nan or inf, or a tenth value (under the key None)
                row = {k: (float if k in ("val_loss", "seconds") else int)(r[k]) for k in COLUMNS}
                if None in r or not all(math.isfinite(v) for v in row.values()):
                    raise ValueError
                [planned] = plan_runs([row["budget"]], [(row["n_layer"], row["n_embd"])], *shape)
            except (ValueError, TypeError, ScalingError):
                why = f"{where}: not a row scaling.py wrote; mend or delete it"
                raise ScalingError(why) from None
            for k in ("params", "steps", "tokens", "flops"):
                if row[k] != planned[k]:
                    raise ScalingError(f"{where}: {k} {row[k]}, but budget {row['budget']} buys "
                                       f"{planned[k]} for that size; mend or delete the row")
            key = (row["budget"], row["n_layer"], row["n_embd"])
            if key in seen:
                raise ScalingError(f"{where}: budget {row['budget']}, size {size_of(row)} again; "
                                   "delete one of its rows")
            seen.add(key)
            rows.append(row)
    return rows


def save_results(out_dir, rows):
    lines = [",".join(COLUMNS)] + [",".join(str(r[k]) for k in COLUMNS) for r in rows]
    write_atomic(os.path.join(out_dir, "results.csv"), "\n".join(lines) + "\n")


# ------------------------------------------------------------ one run: gpt.py trains it
def cut_short(folder, cfg):
    """Whether folder holds a ckpt.pt of this very run, saved when Ctrl-C stopped it."""
    try:
        saved = gpt.load_checkpoint(os.path.join(folder, "ckpt.pt"), "")["config"]
    except gpt.GPTError:  # none, or unreadable: train anew
        return False
    return all(saved.get(k) == getattr(cfg, k) for k in (*SETTINGS, *PER_RUN[:6]))


def train_one(gpt_flags, run, args, resumable):
    """Train one size for its budget's steps, in a folder of its own; returns the final val loss and
    the seconds it took. A run that Ctrl-C stopped goes on from its ckpt.pt (resumable: the folder's
    settings.json is this sweep's), its seconds those before the stop plus those after."""
    folder = os.path.join(args.out_dir, f"{exactly(run['budget'])}_{size_of(run)}")  # 1e12_1x64
    os.makedirs(folder, exist_ok=True)
    argv = [*gpt_flags, "--out_dir", folder, "--overwrite",
            "--n_layer", str(run["n_layer"]), "--n_embd", str(run["n_embd"]),
            "--n_head", str(run["n_embd"] // args.head_dim), "--max_iters", str(run["steps"]),
            "--eval_interval", str(run["steps"])]  # one eval at the end, after gpt.py's at step 0
    if args.warmup:
        argv += ["--warmup_iters", str(run["steps"] // 20)]
    cfg, resume, _ = gpt.settings(gpt.parse_args(argv))  # a usage error: gpt.py's line, exit 2
    stopped, before = os.path.join(folder, "stopped.json"), 0.0  # seconds before a stop
    if resumable and cut_short(folder, cfg):
        cfg, resume, _ = gpt.settings(gpt.parse_args([*argv, "--resume"]))
        before = resume["log"][-1][-1]  # gpt.py's count, to its last eval (killed, not stopped)
        if os.path.exists(stopped):
            with open(stopped, encoding="utf-8") as f:
                before = json.load(f)["seconds"]
    elif os.path.exists(stopped):  # an older start's
        os.remove(stopped)
    started = time.perf_counter()
    with open(os.path.join(folder, "train.log"), "a" if resume else "w", encoding="utf-8") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # gpt.py's lines
            try:
                code = gpt.train(cfg, resume)  # then 300 characters of its writing (no switch)
            except (gpt.GPTError, OSError, RuntimeError) as e:  # a NaN, a full disk, no memory
                traceback.print_exc()  # into train.log
                raise ScalingError(f"the run in {folder} failed: {str(e).splitlines()[0]} "
                                   "(more in its train.log)") from None
    seconds = before + time.perf_counter() - started
    if code:  # 130 or 143: Ctrl-C or SIGTERM; gpt.py finished the step, saved ckpt.pt, stopped
        write_atomic(stopped, json.dumps(dict(seconds=seconds)))
        raise KeyboardInterrupt
    with open(os.path.join(folder, "log.csv"), encoding="utf-8") as f:
        last = list(csv.DictReader(f))[-1]  # the eval at the last step
    for name in ("ckpt.pt", "stopped.json"):  # what --resume needs: the run is finished
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
    return float(last["val_loss"]), seconds


# ------------------------------------------------------------ the fit
def optimum(runs):
    """One budget's optimal N and loss: the bottom of the parabola in log10(N) through all its runs.
    Through the best run and its two neighbours alone, a parabola has no residual and follows the
    noise: with losses 0.01 off, log10(N_opt) is 0.05 off, against 0.016 through five. Where there
    is no bottom inside the ladder, the best run and why: never a guess beyond the sizes run."""
    runs = sorted(runs, key=lambda r: r["params"])
    losses = [r["val_loss"] for r in runs]
    best = runs[losses.index(min(losses))]
    found = dict(budget=best["budget"], runs=len(runs), params=best["params"],
                 val_loss=best["val_loss"], how=f"best run, {size_of(best)}")
    if len(runs) < 3:
        return {**found, "note": f"only {len(runs)} size(s): a parabola needs 3"}
    if min(losses) == max(losses):
        return {**found, "note": "all sizes tie: no bottom to read"}
    if best is runs[0] or best is runs[-1]:
        end = "smallest" if best is runs[0] else "largest"
        return {**found, "note": f"the {end} size is best: the optimum is beyond, add sizes there"}
    x = np.log10([r["params"] for r in runs])
    a, b, c = np.polyfit(x, losses, 2)
    bottom = -b / (2 * a) if a > 0 else None  # where the slope 2 a x + b is 0, if it opens upward
    if bottom is None or not x[0] < bottom < x[-1]:
        return {**found, "note": "the parabola through the runs has no bottom inside the ladder"}
    rms = np.sqrt(np.mean((np.polyval([a, b, c], x) - losses) ** 2))  # how far the runs lie off it
    return {**found, "params": round(10**bottom), "how": "parabola", "parabola": [a, b, c],
            "val_loss": round(np.polyval([a, b, c], bottom), 4), "rms": round(rms, 4)}


def optima(rows):  # each budget's, smallest budget first
    budgets = sorted({r["budget"] for r in rows})
    return [optimum([r for r in rows if r["budget"] == budget]) for budget in budgets]


def power_laws(found):
    """A line in log-log through the optima inside their ladders: log10 y = e log10 C + log10 k."""
    inside = [o for o in found if o["how"] == "parabola"]
    if len(inside) < 2:
        return dict(note=f"{len(inside)} budget(s) with an optimum inside the ladder: a power law "
                         "needs 2")
    c, laws = [o["budget"] for o in inside], {}
    for name in ("params", "val_loss"):
        e, log_k = np.polyfit(np.log10(c), np.log10([o[name] for o in inside]), 1)
        laws[name] = dict(exponent=round(e, 4), coefficient=10**log_k, budgets=c,
                          formula=f"{name} = {10**log_k:.4g} x C^{e:.4f}")
    return laws


def fit(rows):
    """Each budget's optimum and the power laws through them, then how rough they are: the same fit
    with each size left out in turn. spread: the lowest and highest optimal N (and exponent) of the
    fit and those refits, where a refit has one."""
    result = dict(budgets=optima(rows))
    result["laws"] = power_laws(result["budgets"])
    sizes = {size_of(r) for r in rows}
    refits = [optima([r for r in rows if size_of(r) != size]) for size in sizes]
    for o in result["budgets"]:
        n = [e["params"] for refit in refits for e in refit
             if e["budget"] == o["budget"] and e["how"] == o["how"] == "parabola"]
        if n:
            o["spread"] = [min(n + [o["params"]]), max(n + [o["params"]])]
    for name in ("params", "val_loss"):
        law = result["laws"].get(name)
        found = [laws[name]["exponent"] for laws in map(power_laws, refits) if name in laws]
        if law and found:
            law["spread"] = [min(found + [law["exponent"]]), max(found + [law["exponent"]])]
    return result


def short(n):  # 14304 -> "14.3k", 1234567 -> "1.23M", 120 -> "120": labels
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def print_table(result):
    print(f"\n{'budget':>8}  {'runs':>4}  {'optimal N':>10}  {'one size out':>14}  {'val loss':>8}"
          "  found by")
    for e in result["budgets"]:
        how = f"{e['how']}: {e['note']}" if "note" in e else f"parabola, rms {e['rms']:.4f}"
        spread = "-" if "spread" not in e else " to ".join(map(short, e["spread"]))
        print(f"{exactly(e['budget']):>8}  {e['runs']:>4}  {e['params']:>10,}  {spread:>14}  "
              f"{e['val_loss']:>8.4f}  {how}")
    laws = result["laws"]
    if "note" in laws:
        print(laws["note"])
        return
    a, b = laws["params"]["exponent"], laws["val_loss"]["exponent"]
    spread = ("; {:.2f} to {:.2f} with one size out".format(*laws["params"]["spread"])
              if "spread" in laws["params"] else "")
    print(f"optimal N ~ C^{a:.2f}{spread} (Chinchilla: 0.50): x{10**a:.2f} per 10x compute; "
          f"optimal loss ~ C^{b:.3f}; through {len(laws['params']['budgets'])} budgets")


def draw(rows, result, path):
    try:
        import matplotlib
    except ImportError:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # an older sweep's picture must not sit beside this fit.json
        print('no scaling.png: drawing needs matplotlib (pip install -e ".[plot]")')
        return
    matplotlib.use("Agg")  # files only: no window, works on a server
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=80)
    for i, e in enumerate(result["budgets"]):  # left: a curve per budget, its optimum a star
        runs = sorted((r for r in rows if r["budget"] == e["budget"]), key=lambda r: r["params"])
        n = [r["params"] for r in runs]
        left.plot(n, [r["val_loss"] for r in runs], "o-", color=f"C{i}", alpha=0.5,
                  label=f"{exactly(e['budget'])} FLOPs")
        if "parabola" in e:  # across the runs it goes through
            x = np.linspace(math.log10(n[0]), math.log10(n[-1]), 50)
            left.plot(10**x, np.polyval(e["parabola"], x), color=f"C{i}")
            left.plot(e["params"], e["val_loss"], "*", color=f"C{i}", markersize=14)
    left.set(xscale="log", xlabel="N (weights that multiply)", ylabel="val loss (nats per token)",
             title="IsoFLOP curves: one compute budget each")
    left.legend()
    for e in result["budgets"]:  # right: the optima against compute; x: the best run, no optimum
        low, high = e.get("spread", [e["params"]] * 2)  # the bar: with one size left out
        right.errorbar(e["budget"], e["params"], [[e["params"] - low], [high - e["params"]]],
                       fmt="k*" if "parabola" in e else "kx", markersize=12, capsize=4)
    if "params" in result["laws"]:
        law = result["laws"]["params"]
        c = np.geomspace(min(law["budgets"]), max(law["budgets"]), 50)
        right.plot(c, law["coefficient"] * c ** law["exponent"], "k--",
                   label=f"N_opt ~ C^{law['exponent']:.2f}")
        right.legend()
    right.set(xscale="log", yscale="log", xlabel="compute C (training FLOPs)", ylabel="optimal N",
              title="the optimal size against compute")
    sizes = sorted({r["params"] for r in rows})  # ticks where the runs are, not at powers of 10
    left.set_xticks(sizes, [short(n) for n in sizes], minor=False)
    right.set_xticks([e["budget"] for e in result["budgets"]],
                     [exactly(e["budget"]) for e in result["budgets"]], minor=False)
    optima_n = [e["params"] for e in result["budgets"]]
    right.set_yticks(optima_n, [short(n) for n in optima_n], minor=False)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.minorticks_off()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


# ------------------------------------------------------------ the sweep
def eta(todo, rows):
    """Seconds the runs left should take, from their FLOPs: each size at its seconds per FLOP in
    rows (a small model does fewer FLOPs a second), one not run yet at the nearest size's; with no
    rows yet, at GUESS."""
    per_flop = {}  # N -> seconds per FLOP
    for n in {r["params"] for r in rows}:
        done = [r for r in rows if r["params"] == n]
        per_flop[n] = sum(r["seconds"] for r in done) / sum(r["flops"] for r in done)
    total = 0.0
    for run in todo:
        if per_flop:
            nearest = min(per_flop, key=lambda n: abs(math.log(n / run["params"])))
            total += run["flops"] * per_flop[nearest]
        else:
            total += run["flops"] / GUESS
    minutes, seconds = divmod(round(total), 60)
    return f"{minutes}m{seconds:02d}s"


def sweep(args, gpt_flags, cfg, budgets, sizes):
    data = gpt.load_data(cfg.data, cfg.block_size)  # a bad text or folder: named now, not mid-sweep
    shape = (data.tokenizer.vocab_size, cfg.block_size, cfg.batch_size)  # what a step costs
    plan = plan_runs(budgets, sizes, *shape)
    shortest = min(plan, key=lambda run: run["steps"])
    if not args.warmup and cfg.warmup_iters >= shortest["steps"]:
        raise ScalingError(f"--warmup_iters {cfg.warmup_iters}: {size_of(shortest)} at "
                           f"{exactly(shortest['budget'])} trains {shortest['steps']} step(s), so "
                           "its learning rate would never peak; lower it, or drop it (then 5%)")
    gpt.claim_out_dir(args.out_dir, fresh=False)  # a folder that can be written, or one line
    with only_sweep(args.out_dir):  # from here on, this sweep alone writes in it
        settings = {k: getattr(cfg, k) for k in SETTINGS}
        if args.warmup:
            settings["warmup_iters"] = "5% of the steps"
        device, dtype = gpt.pick_device(cfg.device, cfg.dtype)  # bfloat16, float32: apart a little
        settings["dtype"] = str(dtype).removeprefix("torch.")
        settings.update(head_dim=args.head_dim, data=fingerprint(data, cfg.data),
                        data_path=cfg.data)
        resumable = check_settings(args.out_dir, settings)
        rows = read_results(args.out_dir, shape)
        done = {(r["budget"], r["n_layer"], r["n_embd"]) for r in rows}
        todo = [run for run in plan if (run["budget"], run["n_layer"], run["n_embd"]) not in done]
        train_tokens = len(data.splits["train"])
        print(f"{len(plan)} runs, {len(plan) - len(todo)} of them in {args.out_dir}/results.csv "
              f"already; {sum(r['flops'] for r in todo):.3g} FLOPs to train, "
              f"{cfg.batch_size * cfg.block_size:,} tokens a step, {train_tokens:,} in {cfg.data}")
        if todo and (rows or device.type == "cpu"):  # a GPU's speed is anyone's guess
            guess = "" if rows else f" (a guess: {exactly(GUESS)} FLOPs a second, one CPU core's)"
            print(f"sweep eta {eta(todo, rows)}{guess}")
        for i, run in enumerate(todo, start=1):
            print(f"[{i}/{len(todo)}] budget {exactly(run['budget'])}, {size_of(run)} "
                  f"(N {run['params']:,}): {run['steps']:,} steps, "
                  f"{run['tokens'] / train_tokens:.3g} epochs ...", end="", flush=True)
            try:
                val_loss, seconds = train_one(gpt_flags, run, args, resumable)
            except BaseException:  # an error or Ctrl-C: its message goes on a line of its own
                print()
                raise
            run.update(val_loss=val_loss, seconds=round(seconds, 1))
            rows.append(run)
            save_results(args.out_dir, rows)  # as each run ends: Ctrl-C keeps it
            print(f" val loss {run['val_loss']:.4f} in {run['seconds']:.1f}s | "
                  f"sweep eta {eta(todo[i:], rows)}")
        result = fit(rows)
        text = json.dumps(result, indent=1, allow_nan=False)  # JSON has no NaN: never write one
        write_atomic(os.path.join(args.out_dir, "fit.json"), text + "\n")
        print_table(result)
        print(f"wrote {args.out_dir}/results.csv and fit.json")
        draw(rows, result, os.path.join(args.out_dir, "scaling.png"))
    return 0


def main(argv=None):
    args, gpt_flags, cfg, budgets, sizes = parse(sys.argv[1:] if argv is None else argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # models this small: more threads wait for each other
    try:
        return sweep(args, gpt_flags, cfg, budgets, sizes)
    except (ScalingError, gpt.GPTError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file where a run's folder should be, a full disk: no traceback
        print(f"error: {e.filename or args.out_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the finished runs are in results.csv already
        print("interrupted: the same command goes on where this one stopped", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):  # `| head`: end quietly, as gpt.py does
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
