"""
plot_log.py: the train (dashed) and val (solid) loss of gpt.py runs against the tokens they have seen.

    python scripts/plot_log.py out                          # writes loss.png
    python scripts/plot_log.py out_tiny out_small -o tiny_vs_small.png

Each OUT_DIR is the --out_dir of a run: its log.csv gives the losses, its best.pt the batch and block size
(tokens seen = steps x batch_size x block_size) and the preset for the label. The best val loss is marked.
Needs matplotlib: pip install -e ".[plot]" (or pip install matplotlib).
"""
import argparse
import csv
import os
import sys


def load_run(out_dir):
    """(label, tokens seen, train losses, val losses) of one run, or SystemExit with a one-line error."""
    log_path, ckpt_path = os.path.join(out_dir, "log.csv"), os.path.join(out_dir, "best.pt")
    if not os.path.isfile(log_path):
        raise SystemExit(f"error: no log.csv in {out_dir}; pass the --out_dir of a gpt.py training run")
    with open(log_path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"iter", "train_loss", "val_loss"} <= rows[0].keys():
        raise SystemExit(f"error: {log_path} has no rows of iter,train_loss,val_loss; was it written by gpt.py?")
    import torch  # only the checkpoint's config is read: weights_only, so no code in it runs
    try:
        config = torch.load(ckpt_path, map_location="cpu", weights_only=True)["config"]
    except Exception as e:  # missing, truncated or foreign: say which file, in one line
        raise SystemExit(f"error: cannot read the run's config from {ckpt_path} ({type(e).__name__})") from None
    tokens_per_step = config["batch_size"] * config["block_size"]
    label = f"{out_dir} ({config.get('config', 'custom')}, {config['n_layer']} layers x {config['n_embd']})"
    steps = [int(r["iter"]) for r in rows]
    return (label, [s * tokens_per_step for s in steps], [float(r["train_loss"]) for r in rows],
            [float(r["val_loss"]) for r in rows])


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot train and val loss of gpt.py runs against tokens seen.")
    p.add_argument("out_dirs", nargs="+", metavar="OUT_DIR", help="a run's --out_dir (with log.csv and best.pt)")
    p.add_argument("-o", "--output", default="loss.png", help="the picture to write (default loss.png)")
    args = p.parse_args(argv)
    runs = [load_run(d) for d in args.out_dirs]  # every folder checked before anything is drawn
    try:
        import matplotlib
    except ImportError:
        raise SystemExit('error: plot_log.py needs matplotlib: pip install -e ".[plot]" (or pip install matplotlib)')
    matplotlib.use("Agg")  # files only: no window, works on a server or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for i, (label, tokens, train, val) in enumerate(runs):
        color = f"C{i}"
        ax.plot(tokens, val, color=color, label=f"{label}: val")
        ax.plot(tokens, train, color=color, linestyle="--", alpha=0.7, label=f"{label}: train")
        best = min(range(len(val)), key=val.__getitem__)
        ax.plot(tokens[best], val[best], "o", color=color)
        ax.annotate(f"best val {val[best]:.3f}", (tokens[best], val[best]), textcoords="offset points",
                    xytext=(-10, 10), ha="right", color=color)
    ax.set_xlabel("tokens seen (steps x batch_size x block_size)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_ylim(top=min(4.5, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
