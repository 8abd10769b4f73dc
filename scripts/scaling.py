"""
scaling.py: scaling laws on a laptop. For each compute budget, which model size learns best?

    python scripts/scaling.py                                   # the defaults: minutes on 2 CPU cores
    python scripts/scaling.py --data my.txt --out_dir scaling_my --budgets 1e13,3e13 --sizes 1x64,2x128,4x256

The IsoFLOP method of the Chinchilla paper (Hoffmann et al. 2022), as nanochat's runs/scaling_laws.sh
runs it on 8 GPUs. A budget is a number of training FLOPs. A small model trains on many tokens for it,
a big one on few; somewhere between lies the size that reaches the lowest loss. Each size
(--sizes, n_layer x n_embd) trains through gpt.py for exactly the steps the budget buys:
- FLOPs per token = 6 x N + 12 x n_layer x n_embd x block_size (nanochat's estimate_flops, PaLM's
  appendix B). N counts the weights that multiply: 12 x n_embd^2 per block (attention's c_attn and
  c_proj, the MLP's c_fc and c_proj) and the output head, vocab_size x n_embd, which is also the token
  embedding (tied). The position embedding is a lookup and biases and norms are additions: they do
  not count, so N is below gpt.py's parameter count. Each weight costs 2 FLOPs per token forward
  (a multiply and an add) and 4 backward; the second term is attention's scores and weighted sum.
  Only training counts, not evals.
- steps = floor(budget / (FLOPs per token x batch_size x block_size)): a run spends at most its
  budget, and less than one step below it.
- heads: each is --head_dim wide (32), so n_head = n_embd / head_dim.
- the recipe: gpt.py's tiny preset (batch 16, block 256, learning rate 5e-3 decaying to 5e-4 by the
  run's last step), warmup over the first 5% of the steps, val loss measured on 10 batches. Any other
  gpt.py training flag (--block_size, --learning_rate, --config small, --device, ...) applies to
  every run.
Into --out_dir (default scaling): results.csv, one row per run as it ends (budget, n_layer, n_embd,
params = N, steps, tokens, flops, val_loss = the last eval, at the run's final step, seconds = the
run's wall time, evals included); settings.json, the recipe those rows come from; each run's folder
(best.pt to sample from, log.csv, train.log). Then fit.json and a table: per budget the optimal N
and loss, at the bottom of a parabola in log10(N) through the budget's runs; across budgets the power
laws N_opt ~ C^a and L_opt ~ C^b. scaling.png draws them (pip install -e ".[plot]").
Ctrl-C keeps the finished runs; the same command again trains only the runs results.csv lacks.
On a GPU, bigger budgets and sizes, nothing else: --budgets 1e15,3e15,1e16 --sizes 4x256,6x384,8x512,12x768.
"""
import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import sys
import time

import numpy as np  # the fits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt  # noqa: E402  trains every run, and reads the data once to check it

COLUMNS = ["budget", "n_layer", "n_embd", "params", "steps", "tokens", "flops", "val_loss", "seconds"]
RECIPE = ("config", "block_size", "batch_size", "learning_rate", "min_lr", "warmup_iters", "weight_decay",
          "grad_clip", "dropout", "seed", "eval_iters", "gelu")  # what changes a run's loss
PER_RUN = ("n_layer", "n_embd", "n_head", "max_iters", "lr_decay_iters", "eval_interval", "resume",
           "init_from", "overwrite", "sample")  # gpt.py flags scaling.py sets itself, or refuses
BUDGETS, SIZES = "1e12,3e12,1e13", "1x32,2x64,3x96,4x128"
RECIPE_DEFAULTS = dict(config="tiny", block_size="64", eval_iters="10")  # before the flags given


class ScalingError(Exception):  # one line for the user, no traceback
    pass


# ------------------------------------------------------------ counting FLOPs
def matmul_params(n_layer, n_embd, vocab_size):
    """N: the weights that multiply each token's numbers. The head is tied to the token embedding."""
    return 12 * n_layer * n_embd**2 + vocab_size * n_embd


def flops_per_token(n_layer, n_embd, vocab_size, block_size):
    """Forward and backward: 6 per weight, and attention's query-key scores and weighted sum of the
    values, 2 x 2 x block_size x n_embd per layer forward, twice that backward (full, not causal half)."""
    return 6 * matmul_params(n_layer, n_embd, vocab_size) + 12 * n_layer * n_embd * block_size


# ------------------------------------------------------------ the command line
def usage_error(message):  # one line, exit 2, as gpt.py's
    print(f"scaling.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_budgets(text):
    try:
        budgets = {int(float(b)) for b in text.split(",")}  # integers: the CSV keeps them exactly
    except (ValueError, OverflowError):
        usage_error(f"--budgets {text}: not a comma-separated list of FLOPs, like 2e12,6e12")
    if min(budgets) < 1:
        usage_error(f"--budgets {text}: each budget must be at least 1 FLOP")
    return sorted(budgets)


def parse_sizes(text, head_dim):
    sizes = set()
    for size in text.split(","):
        n_layer, _, n_embd = size.strip().partition("x")
        if not (n_layer.isdigit() and n_embd.isdigit() and int(n_layer) > 0 and int(n_embd) > 0):
            usage_error(f"--sizes {text}: {size!r} is not n_layerxn_embd, like 2x64")
        if int(n_embd) % head_dim:
            usage_error(f"--sizes: {size} is {n_embd} wide, not a multiple of --head_dim {head_dim}: "
                        "the heads cannot share it equally")
        sizes.add((int(n_layer), int(n_embd)))
    return sorted(sizes, key=lambda s: matmul_params(*s, 1))


def parse(argv):
    """scaling.py's own flags, and gpt.py's settings for every run (gpt.py checks those)."""
    p = argparse.ArgumentParser(prog="scaling.py", allow_abbrev=False, description="IsoFLOP scaling "
                                "laws: the best model size for each compute budget. Any other gpt.py "
                                "training flag applies to every run.")
    p.error = usage_error  # one line, not argparse's usage
    p.add_argument("--budgets", default=BUDGETS, help=f"training FLOPs, comma-separated ({BUDGETS})")
    p.add_argument("--sizes", default=SIZES, help=f"n_layerxn_embd, comma-separated ({SIZES})")
    p.add_argument("--head_dim", type=int, default=32, help="each head's width (32): n_head = n_embd / it")
    p.add_argument("--out_dir", default="scaling", help="results.csv, fit.json, scaling.png, the runs")
    args, gpt_flags = p.parse_known_args(argv)
    if args.head_dim < 1:
        usage_error(f"argument --head_dim: must be at least 1, got {args.head_dim}")
    given = {f.split("=")[0].removeprefix("--") for f in gpt_flags if f.startswith("--")}
    for name in given & set(PER_RUN):
        usage_error(f"--{name} is set for each run by scaling.py (from --sizes, --budgets, --head_dim); "
                    "drop it")
    # scaling.py's recipe first: a flag given overrides it, as it overrides a preset in gpt.py
    gpt_flags = [*(f for k, v in RECIPE_DEFAULTS.items() if k not in given for f in (f"--{k}", v)),
                 *gpt_flags]
    cfg, _, _ = gpt.settings(gpt.parse_args(gpt_flags))  # a bad gpt.py flag: one line, exit 2
    args.warmup = "warmup_iters" not in given  # 5% of each run's steps, unless --warmup_iters
    return args, gpt_flags, cfg, parse_budgets(args.budgets), parse_sizes(args.sizes, args.head_dim)


def plan_runs(budgets, sizes, vocab_size, block_size, batch_size):
    """Every (budget, size) with the steps its budget buys; a budget that buys none is refused."""
    tokens_per_step, plan = batch_size * block_size, []
    for budget in budgets:
        for n_layer, n_embd in sizes:
            per_token = flops_per_token(n_layer, n_embd, vocab_size, block_size)
            steps = budget // (per_token * tokens_per_step)
            if steps < 1:
                raise ScalingError(f"budget {budget:.3g} buys no step of size {n_layer}x{n_embd}: one step costs "
                                   f"{per_token * tokens_per_step:.3g} FLOPs ({tokens_per_step:,} tokens x "
                                   f"{per_token:,} FLOPs per token); raise the budget or drop the size")
            plan.append(dict(budget=budget, n_layer=n_layer, n_embd=n_embd,
                             params=matmul_params(n_layer, n_embd, vocab_size), steps=steps,
                             tokens=steps * tokens_per_step, flops=steps * tokens_per_step * per_token))
    return plan


# ------------------------------------------------------------ results.csv and the settings behind it
def fingerprint(path):  # the text, or a prepared folder's meta.json (its tokenizer and counts)
    if os.path.isdir(path):
        path = os.path.join(path, "meta.json")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def check_settings(out_dir, settings):
    """Rows of one results.csv compare only if they share the data and the recipe: settings.json."""
    path = os.path.join(out_dir, "settings.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        for key, value in settings.items():
            if key == "data" and saved.get(key) != value:  # the same text elsewhere is the same
                raise ScalingError(f"{out_dir}/results.csv holds runs on other data ({saved.get('data_path')}), "
                                   f"not {settings['data_path']}: use another --out_dir")
            if key != "data_path" and saved.get(key) != value:
                raise ScalingError(f"{out_dir}/results.csv holds runs with {key} {saved.get(key)}, not {value}: "
                                   "give the same settings, or use another --out_dir")
    elif os.path.exists(os.path.join(out_dir, "results.csv")):
        raise ScalingError(f"{out_dir}/results.csv has no settings.json beside it, so its runs' settings are "
                           "unknown: use another --out_dir")
    write_atomic(path, json.dumps(settings, indent=1) + "\n")


def write_atomic(path, text):  # killed mid-write, the previous file is still whole
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def read_results(out_dir):
    path = os.path.join(out_dir, "results.csv")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and list(rows[0].keys()) != COLUMNS:
        raise ScalingError(f"{path} does not have scaling.py's columns; use another --out_dir")
    return [{k: float(v) if k in ("val_loss", "seconds") else int(v) for k, v in r.items()} for r in rows]


def save_results(out_dir, rows):
    lines = [",".join(COLUMNS)] + [",".join(str(r[k]) for k in COLUMNS) for r in rows]
    write_atomic(os.path.join(out_dir, "results.csv"), "\n".join(lines) + "\n")


# ------------------------------------------------------------ one run: gpt.py trains it
def train_one(gpt_flags, run, args, data_path):
    """Train one size for its budget's steps, in a folder of its own; its final val loss."""
    folder = os.path.join(args.out_dir, f"{run['budget']:.3g}_{run['n_layer']}x{run['n_embd']}")
    os.makedirs(folder, exist_ok=True)
    argv = [*gpt_flags, "--data", data_path, "--out_dir", folder, "--overwrite",  # a run cut short: anew
            "--n_layer", str(run["n_layer"]), "--n_embd", str(run["n_embd"]),
            "--n_head", str(run["n_embd"] // args.head_dim), "--max_iters", str(run["steps"]),
            "--eval_interval", str(run["steps"])]  # one eval, at the end (and gpt.py's at step 0)
    if args.warmup:
        argv += ["--warmup_iters", str(run["steps"] // 20)]
    with open(os.path.join(folder, "train.log"), "w", encoding="utf-8") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # gpt.py's lines
            code = gpt.main(argv)
    if code in (130, 143):  # Ctrl-C or SIGTERM: gpt.py finished its step, saved, and stopped
        raise KeyboardInterrupt
    if code:
        with open(os.path.join(folder, "train.log"), encoding="utf-8") as f:
            errors = [line.strip() for line in f if line.startswith("error")] or ["see its train.log"]
        raise ScalingError(f"the run in {folder} failed: {errors[-1]}")
    with open(os.path.join(folder, "log.csv"), encoding="utf-8") as f:
        last = list(csv.DictReader(f))[-1]  # the eval at the last step
    os.remove(os.path.join(folder, "ckpt.pt"))  # all --resume needs: this run is finished
    return float(last["val_loss"])


# ------------------------------------------------------------ the fit
def power_law(c, y):
    """y = k c^e, fitted as a line in log-log: (e, k)."""
    e, log_k = np.polyfit(np.log10(c), np.log10(y), 1)
    return float(e), float(10**log_k)


def optimum(runs):
    """One budget's optimal N and loss: the bottom of the parabola in log10(N) through its best run and
    the run on either side of it (a parabola through every run would be pulled by the ladder's far ends,
    whose losses do not lie on it). Where it cannot be read, the best run and a note saying why."""
    runs = sorted(runs, key=lambda r: r["params"])
    i = min(range(len(runs)), key=lambda i: runs[i]["val_loss"])
    best = runs[i]
    found = dict(budget=best["budget"], runs=len(runs), params=best["params"], val_loss=best["val_loss"],
                 how=f"best run, {best['n_layer']}x{best['n_embd']}")
    if len(runs) < 3:
        return {**found, "note": f"only {len(runs)} size(s): a parabola needs 3"}
    if i in (0, len(runs) - 1):
        end = "smallest" if i == 0 else "largest"
        return {**found, "note": f"the {end} size is best: the optimum lies beyond the ladder, add sizes there"}
    x = np.log10([r["params"] for r in runs[i - 1:i + 2]])
    a, b, c = np.polyfit(x, [r["val_loss"] for r in runs[i - 1:i + 2]], 2)  # through the 3 points
    if a <= 0:  # the best run ties a neighbour: flat, no bottom
        return {**found, "note": "the best run ties a neighbour: no bottom to read"}
    x0 = -b / (2 * a)  # between the neighbours, as the middle run is the lowest
    return {**found, "params": round(10**x0), "val_loss": round(c - b * b / (4 * a), 4), "how": "parabola",
            "parabola": [a, b, c], "through": [f"{r['n_layer']}x{r['n_embd']}" for r in runs[i - 1:i + 2]]}


def fit(rows):
    """Per budget the optimal N and loss (IsoFLOP), then power laws across the budgets."""
    per_budget = [optimum([r for r in rows if r["budget"] == budget]) for budget in sorted({r["budget"] for r in rows})]
    inside = [e for e in per_budget if e["how"] == "parabola"]
    laws = {}
    if len(inside) >= 2:
        c = [e["budget"] for e in inside]
        for name, key in (("params", "params"), ("loss", "val_loss")):
            exponent, coefficient = power_law(c, [e[key] for e in inside])
            laws[name] = dict(exponent=round(exponent, 4), coefficient=coefficient,
                              budgets=c, formula=f"{key} = {coefficient:.4g} * C^{exponent:.4f}")
    else:
        laws["note"] = (f"{len(inside)} budget(s) with an optimum inside the ladder: a power law needs 2; "
                        "see each budget's note")
    return dict(budgets=per_budget, laws=laws)


def print_table(result):
    print(f"\n{'budget':>8}  {'runs':>4}  {'optimal N':>10}  {'val loss':>8}  found by")
    for e in result["budgets"]:
        how = f"{e['how']}: {e['note']}" if "note" in e else e["how"]
        print(f"{e['budget']:>8.3g}  {e['runs']:>4}  {e['params']:>10,}  {e['val_loss']:>8.4f}  {how}")
    laws = result["laws"]
    if "params" in laws:
        a, b = laws["params"]["exponent"], laws["loss"]["exponent"]
        print(f"optimal N ~ C^{a:.2f} (Chinchilla: 0.50), x{10**a:.2f} per 10x compute; optimal loss ~ "
              f"C^{b:.3f}; fitted through {len(laws['params']['budgets'])} budgets")
    else:
        print(laws["note"])


def draw(rows, result, path):
    try:
        import matplotlib
    except ImportError:
        print('no scaling.png: drawing needs matplotlib (pip install -e ".[plot]")')
        return
    matplotlib.use("Agg")  # files only: no window, works on a server
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=90)
    for i, e in enumerate(result["budgets"]):
        runs = sorted((r for r in rows if r["budget"] == e["budget"]), key=lambda r: r["params"])
        n = [r["params"] for r in runs]
        left.plot(n, [r["val_loss"] for r in runs], "o", color=f"C{i}", label=f"{e['budget']:.3g} FLOPs")
        if "parabola" in e:  # drawn across its three runs
            near = [r["params"] for r in runs if f"{r['n_layer']}x{r['n_embd']}" in e["through"]]
            x = np.linspace(math.log10(min(near)), math.log10(max(near)), 50)
            left.plot(10**x, np.polyval(e["parabola"], x), color=f"C{i}")
        left.plot(e["params"], e["val_loss"], "*" if "parabola" in e else "x", color=f"C{i}", markersize=14)
    left.set(xscale="log", xlabel="N, weights that multiply", ylabel="val loss (nats per token)",
             title="IsoFLOP curves: one budget each")
    left.legend()
    budgets = [e["budget"] for e in result["budgets"]]
    right.plot(budgets, [e["params"] for e in result["budgets"]], "*", markersize=14, color="k")
    if "params" in result["laws"]:
        law = result["laws"]["params"]
        c = np.geomspace(min(budgets), max(budgets), 50)
        right.plot(c, law["coefficient"] * c ** law["exponent"], "k--", label=f"N_opt ~ C^{law['exponent']:.2f}")
        right.legend()
    right.set(xscale="log", yscale="log", xlabel="compute C (training FLOPs)", ylabel="optimal N",
              title="the optimal size grows with compute")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


# ------------------------------------------------------------ the sweep
def eta(todo, spent):
    """Seconds the runs left should take: each size at the speed it trained so far in this sweep
    (small models do fewer FLOPs a second), a size not yet seen at the average speed."""
    average = sum(s for s, _ in spent.values()) / sum(f for _, f in spent.values())
    total = 0.0
    for run in todo:
        seconds, flops = spent.get((run["n_layer"], run["n_embd"]), (average, 1))
        total += run["flops"] * seconds / flops
    return total


def minutes(seconds):
    return f"{int(seconds // 60)}m{round(seconds % 60):02d}s"


def sweep(args, gpt_flags, cfg, budgets, sizes):
    data = gpt.load_data(cfg.data, cfg.block_size)  # a bad text or folder: named now, not mid-sweep
    data_path = cfg.data  # the default text, if not here, is the one beside gpt.py (read_text's rule)
    if not os.path.exists(data_path):
        data_path = os.path.join(os.path.dirname(os.path.abspath(gpt.__file__)), cfg.data)
    train_tokens = len(data.splits["train"])
    plan = plan_runs(budgets, sizes, data.tokenizer.vocab_size, cfg.block_size, cfg.batch_size)
    gpt.claim_out_dir(args.out_dir, fresh=False)  # a folder that can be written, or one line
    settings = {k: getattr(cfg, k) for k in RECIPE}
    if args.warmup:
        settings["warmup_iters"] = "5% of the steps"
    settings.update(head_dim=args.head_dim, data=fingerprint(data_path), data_path=data_path)
    check_settings(args.out_dir, settings)
    rows = read_results(args.out_dir)
    done = {(r["budget"], r["n_layer"], r["n_embd"]) for r in rows}
    todo = [run for run in plan if (run["budget"], run["n_layer"], run["n_embd"]) not in done]
    print(f"{len(plan)} runs, {len(plan) - len(todo)} of them already in {args.out_dir}/results.csv; "
          f"{sum(r['flops'] for r in todo):.3g} FLOPs to train, {cfg.batch_size * cfg.block_size:,} tokens "
          f"a step; {data_path}: {train_tokens:,} tokens to train on")
    spent = {}  # (n_layer, n_embd) -> (seconds, FLOPs) trained in this sweep
    for i, run in enumerate(todo, start=1):
        print(f"[{i}/{len(todo)}] budget {run['budget']:.3g}, {run['n_layer']}x{run['n_embd']} "
              f"(N {run['params']:,}): {run['steps']:,} steps, {run['tokens'] / train_tokens:.2g} epochs ...",
              end="", flush=True)
        started = time.perf_counter()
        try:
            run["val_loss"] = train_one(gpt_flags, run, args, data_path)
        except BaseException:  # an error or Ctrl-C: end the run's line, the message gets its own
            print()
            raise
        run["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(run)
        save_results(args.out_dir, rows)  # as each run ends: Ctrl-C keeps it
        seconds, flops = spent.get((run["n_layer"], run["n_embd"]), (0.0, 0))
        spent[run["n_layer"], run["n_embd"]] = (seconds + run["seconds"], flops + run["flops"])
        print(f" val loss {run['val_loss']:.4f} in {run['seconds']:.1f}s | sweep eta {minutes(eta(todo[i:], spent))}")
    result = fit(rows)
    write_atomic(os.path.join(args.out_dir, "fit.json"), json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(f"wrote {args.out_dir}/results.csv and fit.json")
    draw(rows, result, os.path.join(args.out_dir, "scaling.png"))
    return 0


def main(argv=None):
    args, gpt_flags, cfg, budgets, sizes = parse(sys.argv[1:] if argv is None else argv)
    try:
        return sweep(args, gpt_flags, cfg, budgets, sizes)
    except (ScalingError, gpt.GPTError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the runs finished are in results.csv already
        print(f"interrupted: the same command goes on, from the first run {args.out_dir}/results.csv lacks",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
