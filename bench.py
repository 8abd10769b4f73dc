"""
bench.py: how fast gpt.py trains and samples on this machine, on every device it has.

    python bench.py                                  # every available device; the tiny and medium presets
    python bench.py --devices cpu --configs tiny --iters 10 --json bench.json
    python bench.py --microgpt                       # also microgpt.py vs gpt.py at microgpt's shape, on the CPU

It imports gpt.py and times gpt.py's own model and train_step, with the precision and compile setting a
training run would pick on that device (on a CPU that computes bfloat16 natively, float32 too, beside it). Each timing is the median of --iters steps after warm-up, with the
device synchronized before every clock read. Speeds on shared machines are noisy: compare numbers taken in
the same run, not across runs.
"""
import argparse
import contextlib
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch

import gpt

# Dense (not 2:4-sparse) peak TFLOP/s from NVIDIA's data sheets, for the MFU column, by the exact name
# torch.cuda.get_device_name() gives: a substring would match "NVIDIA L4" inside "NVIDIA L40S" (3x the MFU) or
# an H100 SXM's peak on the slower PCIe card. float32 runs use TF32 (the T4 has none: its float32 is plain).
# A GPU not listed (H100 NVL, A10G, ...) says "unknown peak" rather than a wrong number; add it here.
HOPPER_SXM = {"bfloat16": 989, "float16": 989, "float32": 495}
A100 = {"bfloat16": 312, "float16": 312, "float32": 156}
PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": HOPPER_SXM,  # the SXM5 module
               "NVIDIA H200": HOPPER_SXM,
               "NVIDIA H100 PCIe": {"bfloat16": 756, "float16": 756, "float32": 378},
               "NVIDIA A100-SXM4-80GB": A100, "NVIDIA A100-SXM4-40GB": A100,
               "NVIDIA A100-PCIE-40GB": A100, "NVIDIA A100 80GB PCIe": A100,
               "NVIDIA L40S": {"bfloat16": 362, "float16": 362, "float32": 183},
               "NVIDIA L4": {"bfloat16": 121, "float16": 121, "float32": 60},
               "Tesla T4": {"float16": 65, "float32": 8.1}}
COLUMNS = ["device", "config", "dtype", "compile", "batch", "train ms/iter", "train tokens/s", "MFU", "peak mem MB",
           "attention", "other attention", "sample tok/s (KV)", "sample tok/s (no KV)", "KV speedup"]


def available_devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + \
        (["mps"] if torch.backends.mps.is_available() else [])


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    if device == "mps":
        return "Apple GPU (MPS)"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_tflops(name, dtype):
    """The data-sheet peak for a GPU of exactly this name (case aside) in this dtype, else None."""
    peaks = {key.casefold(): value for key, value in PEAK_TFLOPS.items()}.get(name.strip().casefold(), {})
    return peaks.get(dtype)


@contextlib.contextmanager
def without_tf32():
    """float32 matmuls in full float32 (what `gpt.py --sample` computes: it never turns TF32 on), restored
    after. With TF32 the KV-cache and full-forward paths round differently at 1e-3, enough to flip a greedy
    near tie, and the check below would warn about nothing."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def kv_cache_disagrees(with_cache, without, tolerance=1e-4):
    """Whether greedy decoding with the KV cache chose another token than the full forward, at a step where
    the full forward's choice was not a near tie (the two paths' float32 sums differ at 1e-6): the first
    step where they differ decides, since after it the texts differ anyway."""
    for (a, _), (b, probs) in zip(with_cache, without):
        if not torch.equal(a, b):
            p = probs[0].double()
            return bool(p[b[0, 0]] - p[a[0, 0]] > tolerance * p[b[0, 0]])
    return False


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20  # what the driver holds now: MPS keeps no peak
    try:
        import resource  # the whole process's peak resident memory; not on Windows
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def timed(fn, device, iters, max_seconds):
    """Median seconds of fn() over iters calls (fewer if they pass max_seconds), after one warm-up call."""
    fn()
    times = []
    while len(times) < iters and (len(times) < 2 or sum(times) < max_seconds):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def in_turns(fn_a, fn_b, device, pairs):
    """The median of time(fn_a) / time(fn_b) over pairs run in turns (A B, then B A, ...): a ratio that holds
    while a shared machine's speed drifts, where two medians taken one after the other would not."""
    ratios = []
    for i in range(pairs):
        seconds = {}
        for name, fn in ((("a", fn_a), ("b", fn_b)) if i % 2 == 0 else (("b", fn_b), ("a", fn_a))):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            seconds[name] = time.perf_counter() - t0
        ratios.append(seconds["a"] / seconds["b"])
    return statistics.median(ratios)


def bench_one(device_type, config, iters, sample_tokens, max_seconds, batch_size=None, dtype="auto"):
    device, dtype = gpt.pick_device(device_type, dtype)
    preset = gpt.PRESETS[config]
    cfg = argparse.Namespace(**{**gpt.DEFAULTS, **preset, "vocab_size": 65})
    cfg.batch_size = batch_size or cfg.batch_size
    compiling = gpt.compiles(cfg, device)
    if compiling:
        # Forget the last row's graphs: dynamo keeps "automatic dynamic shapes" per function across
        # torch.compile calls, so a second preset would compile GPT.forward with a symbolic batch size
        # and time a graph that train() (one shape, one process) never runs.
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(**{k: getattr(cfg, k) for k in gpt.MODEL_KEYS}, dropout=cfg.dropout)).to(device)
    optimizer = gpt.make_optimizer(model, cfg, device)
    tokens = np.random.default_rng(0).integers(cfg.vocab_size, size=200_000)  # values don't change the speed
    data = gpt.Data(None, dict(train=tokens, val=tokens), dict(train=None, val=None))
    autocast, scaler = gpt.mixed_precision(device, dtype)  # exactly what train() runs
    step_model = gpt.fast_model(model, compiling, device, data, cfg, autocast)
    generator = torch.Generator().manual_seed(0)
    # the attention train() runs, by gpt.py's rule: the formula on a bfloat16 CPU at contexts up to 256
    formula = device.type == "cpu" and dtype == torch.bfloat16 and cfg.block_size <= 256

    def step(by_hand=formula):
        for block in model.transformer.h:  # the formula written out, or PyTorch's fused kernel
            block.attn.by_hand = by_hand
        x, y = gpt.get_batch(data, "train", cfg.batch_size, cfg.block_size, generator)
        gpt.train_step(step_model, optimizer, scaler, autocast, gpt.my_share(x, y, 1, device), cfg.learning_rate,
                       cfg.grad_clip, cfg.batch_size * cfg.block_size)

    step_s, n = timed(step, device, iters, max_seconds)
    memory = peak_memory_mb(device)  # before the other attention's steps, which may hold more
    # The other attention's step time over this one's, timed in turns: above 1, gpt.py chose the faster
    step(not formula)  # its warm-up (a compiled model compiles it once)
    other = in_turns(lambda: step(not formula), step, device, max(n, 2))
    tokens_per_s = cfg.batch_size * cfg.block_size / step_s
    # FLOPs per token, forward and backward: 6 per weight (nanoGPT counts no position embeddings) plus attention
    n_weights = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    flops_per_token = 6 * n_weights + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    peak = peak_tflops(torch.cuda.get_device_name(device), str(dtype)[6:]) if device.type == "cuda" else None
    mfu = flops_per_token * tokens_per_s / (peak * 1e12) if peak else None

    model.eval()
    for block in model.transformer.h:  # as gpt.model_from samples: MPS decodes with the attention by hand
        block.attn.by_hand = device.type == "mps"
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    outputs, speeds = {}, {}
    with without_tf32():  # on every device, MPS too: its single-query attention kernel has had wrong outputs
        for use_cache in (True, False):
            t0 = time.perf_counter()
            outputs[use_cache] = list(gpt.generate(model, prompt, sample_tokens, temperature=0, use_cache=use_cache))
            synchronize(device)
            speeds[use_cache] = sample_tokens / (time.perf_counter() - t0)
    if kv_cache_disagrees(outputs[True], outputs[False]):
        print(f"warning: {device_type}/{config}: greedy text differs with and without the KV cache")
    return dict(device=device_type, config=config, dtype=str(dtype)[6:], compile=step_model is not model,
                batch=cfg.batch_size, iters=n, train_ms_per_iter=step_s * 1000, train_tokens_per_s=tokens_per_s,
                mfu=mfu, peak_mem_mb=memory, attention="formula" if formula else "fused kernel",
                other_attention_ratio=other, sample_tokens_per_s_kv=speeds[True],
                sample_tokens_per_s_nokv=speeds[False])


def row(r):
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    return [r["device"], r["config"], r["dtype"], "on" if r["compile"] else "off", str(r["batch"]),
            f"{r['train_ms_per_iter']:,.1f}", f"{r['train_tokens_per_s']:,.0f}", mfu, f"{r['peak_mem_mb']:,.0f}",
            r["attention"], f"{r['other_attention_ratio']:.2f}x the time",
            f"{r['sample_tokens_per_s_kv']:,.0f}", f"{r['sample_tokens_per_s_nokv']:,.0f}",
            f"{r['sample_tokens_per_s_kv'] / r['sample_tokens_per_s_nokv']:.1f}x"]


def markdown(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def bench_microgpt(steps):
    """ms per training step at microgpt's default shape (1 layer, n_embd 16, 4 heads, block 16, one sequence)."""
    try:
        import microgpt
    except ImportError:
        print("microgpt.py not found next to bench.py: skipping the microgpt comparison")
        return None
    import random
    vocab_size, block_size, n_head = 65, 16, 4
    rng = random.Random(0)
    sd = microgpt.init_state_dict(vocab_size, block_size, n_layer=1, n_embd=16, rng=rng)
    params = microgpt.parameters(sd)
    m, v = [0.0] * len(params), [0.0] * len(params)
    cfg = argparse.Namespace(weight_decay=0.1, grad_clip=1.0, learning_rate=1e-2)
    seq = [rng.randrange(vocab_size) for _ in range(block_size + 1)]
    micro_times = []
    for step in range(steps):
        t0 = time.perf_counter()
        _, loss = microgpt.forward(sd, n_head, [seq[:-1]], [seq[1:]])
        loss.backward()
        microgpt.adamw_step(params, m, v, step + 1, 1e-2, cfg)
        micro_times.append(time.perf_counter() - t0)
    device = torch.device("cpu")
    model = gpt.GPT(gpt.GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=n_head,
                                  n_embd=16, dropout=0.0))
    optimizer = gpt.make_optimizer(model, cfg, device)
    autocast, scaler = gpt.mixed_precision(device, torch.float32)
    x, y = torch.tensor([seq[:-1]]), torch.tensor([seq[1:]])
    torch_s, _ = timed(lambda: gpt.train_step(model, optimizer, scaler, autocast, [(x, y)], 1e-2, 1.0, block_size),
                       device, max(steps, 20), 10)
    micro_s = statistics.median(micro_times[1:] or micro_times)
    n_params = len(params)
    print(f"\nmicrogpt.py vs gpt.py, {n_params:,} parameters (1 layer, n_embd 16, 4 heads, block 16), one "
          f"sequence per step, CPU:\n"
          f"| file | ms/step | tokens/s |\n|---|---|---|\n"
          f"| microgpt.py (pure Python) | {micro_s * 1000:.1f} | {block_size / micro_s:,.0f} |\n"
          f"| gpt.py (PyTorch, eager) | {torch_s * 1000:.2f} | {block_size / torch_s:,.0f} |\n"
          f"gpt.py is {micro_s / torch_s:,.1f}x as fast: everything else is just efficiency.")
    return dict(microgpt_ms_per_step=micro_s * 1000, gpt_ms_per_step=torch_s * 1000, ratio=micro_s / torch_s)


def main():
    p = argparse.ArgumentParser(description="Time gpt.py's training step and sampling on each device.")
    p.add_argument("--devices", default=",".join(available_devices()), help="comma-separated: cpu,cuda,mps")
    p.add_argument("--configs", default="tiny,medium", help="comma-separated presets: tiny,small,medium")
    p.add_argument("--iters", type=int, default=5, help="timed training steps per row (median)")
    p.add_argument("--max_seconds", type=float, default=30, help="stop timing a row after this long (>= 2 steps)")
    p.add_argument("--batch_size", type=int, default=None, help="override every preset's batch size")
    p.add_argument("--sample_tokens", type=int, default=500, help="new tokens per sampling run")
    p.add_argument("--json", help="also write the numbers to this file, as a list of records")
    p.add_argument("--microgpt", action="store_true", help="also time microgpt.py against gpt.py on the CPU")
    args = p.parse_args()
    devices, configs = args.devices.split(","), args.configs.split(",")
    for d in devices:
        if d not in available_devices():
            p.error(f"--devices: {d!r} is not available here (available: {', '.join(available_devices())})")
    for c in configs:
        if c not in gpt.PRESETS:
            p.error(f"--configs: {c!r} is not a preset ({', '.join(gpt.PRESETS)})")
    if args.iters < 1 or args.sample_tokens < 1:
        p.error("--iters and --sample_tokens must be at least 1")
    print(f"torch {torch.__version__} | python {platform.python_version()}")
    for d in devices:
        print(f"{d}: {device_name(d)}")
    records = []
    for d in devices:
        # A CPU that computes bfloat16 natively trains in it (gpt.py's choice): float32 beside it, to compare.
        dtypes = ["auto"] + (["float32"] if d == "cpu" and gpt.pick_device("cpu")[1] != torch.float32 else [])
        records += [bench_one(d, c, args.iters, args.sample_tokens, args.max_seconds, args.batch_size, t)
                    for c in configs for t in dtypes]
    print(markdown([row(r) for r in records]))
    print(f"MFU: model FLOPs (6 per non-position weight + 12·n_layer·n_embd·block_size per token) over the "
          f"data-sheet dense peak, for the GPUs bench.py's PEAK_TFLOPS lists. Sampling: {args.sample_tokens} new "
          f"tokens, batch 1, greedy. Attention: the one train() runs (the formula by hand, or PyTorch's fused "
          f"kernel); the other's training step, timed in turns with it, as a multiple of its time.")
    if "cuda" in devices and peak_tflops(torch.cuda.get_device_name(), "float32") is None:
        print(f"MFU: unknown peak for {torch.cuda.get_device_name()!r} (add its data-sheet numbers to PEAK_TFLOPS)")
    if args.microgpt:
        bench_microgpt(steps=10)
    if args.json:
        keys = ["device", "config", "dtype", "train_ms_per_iter", "train_tokens_per_s", "mfu", "peak_mem_mb",
                "attention", "other_attention_ratio", "sample_tokens_per_s_kv", "sample_tokens_per_s_nokv"]
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([{k: r[k] for k in keys} for r in records], f, indent=2)


if __name__ == "__main__":
    main()
