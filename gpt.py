"""
gpt.py: a GPT to read top to bottom, then train from scratch on your own machine.

    python gpt.py --config tiny     # 0.44M parameters, a few minutes on a laptop CPU
    python gpt.py --sample          # Shakespeare-shaped text from out/best.pt
    python gpt.py --config medium   # 10.8M parameters: nanoGPT's shakespeare_char (a GPU helps)
    torchrun --standalone --nproc_per_node 4 gpt.py --config medium   # the same run on 4 GPUs

It is GPT-2 (pre-LayerNorm blocks, learned positions, biases, output head tied to the token
embedding, N(0, 0.02) init with residual projections scaled by 1/sqrt(2·n_layer)), small, and
differs only in:
- tokens are the text's own characters (about 65 for Shakespeare), not GPT-2's 50257 BPE tokens;
- the GELU is the exact erf form, not GPT-2's tanh approximation;
- AdamW's beta2 is 0.99, not 0.999: with small batches the second moment should forget faster.
microgpt.py computes the same function with plain Python floats; test_gpt.py proves they agree.
"""
import argparse, math, os, sys, time
import signal, threading  # Ctrl-C and SIGTERM save the run before it stops
import urllib.request  # fetches tiny-shakespeare when gpt.py runs alone, pasted into a notebook
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist  # used only under torchrun
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

# ------------------------------------------------------------ config
# The architecture of each preset is fixed (SPEC §2). tiny's and small's batch, steps and learning
# rate are tuned for the best text in about 4 and 20 minutes on a 2-core CPU; medium is nanoGPT's
# shakespeare_char recipe, for a GPU.
PRESETS = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=128, dropout=0.0, batch_size=16, max_iters=1500,
                 eval_interval=250, eval_iters=40, learning_rate=5e-3, min_lr=5e-4,
                 warmup_iters=50),
    "small": dict(n_layer=4, n_head=4, n_embd=256, dropout=0.1, batch_size=16, max_iters=1200,
                  eval_interval=200, eval_iters=20, learning_rate=3e-3, min_lr=3e-4,
                  warmup_iters=50),
    "medium": dict(n_layer=6, n_head=6, n_embd=384, dropout=0.2, batch_size=64, max_iters=5000,
                   eval_interval=250, eval_iters=20, learning_rate=1e-3, min_lr=1e-4,
                   warmup_iters=100)}
DEFAULTS = dict(
    config="medium", data="shakespeare.txt", out_dir="out", device="auto", dtype="auto",
    compile=None,  # None: on for CUDA on Linux, where it pays off; off elsewhere
    block_size=256, grad_accum=1, lr_decay_iters=None,  # None: decay until max_iters
    weight_decay=0.1, grad_clip=1.0, log_interval=10, seed=1337,
    prompt="", max_new_tokens=500, temperature=0.8, top_k=None, num_samples=1, verbose=False)
LOG_COLUMNS = ("iter", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s")  # log.csv
SHAPE = ("n_layer", "n_head", "n_embd", "block_size")  # what the flags may not change on --resume
MODEL_KEYS = (*SHAPE, "vocab_size")  # the GPTConfig fields a checkpoint's config holds
TINY_SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                        "tinyshakespeare/input.txt")

class GPTError(Exception):
    """A problem the user can fix: main prints it as one line, never a traceback."""

def say(*args, **kwargs):  # under torchrun, process 0 speaks for all of them
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)

def pick_device(name="auto", dtype="auto"):
    """Device and precision are decided here, once; the model reads its device from its inputs.
    bf16 has float32's range, so it trains without loss scaling; fp16 needs a GradScaler. MPS and
    CPU stay float32: their half-precision math is no faster for models this small, and less exact."""
    available = dict(cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available(), cpu=True)
    name = next(d for d in available if available[d]) if name == "auto" else name
    if not available[name]:
        raise GPTError(f"--device {name}: this PyTorch cannot use it here; try --device auto or cpu")
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if name == "cuda" else name)
    if dtype == "auto" and device.type == "cuda":  # bf16 where the GPU computes it natively: A100, H100
        # (compute capability 8.0+). Not torch.cuda.is_bf16_supported(): it says yes on a T4 or V100
        # too, which only emulate bf16. They get float16 and a GradScaler.
        dtype = "bfloat16" if torch.cuda.get_device_capability(device) >= (8, 0) else "float16"
    dtype = "float32" if dtype == "auto" else dtype
    old_torch = torch.torch_version.TorchVersion(torch.__version__) < (2, 8)  # no GradScaler for MPS
    if device.type == "mps" and dtype == "float16" and old_torch:
        raise GPTError(f"--dtype float16 on MPS needs PyTorch 2.8 or newer (this is {torch.__version__});"
                       " use --dtype bfloat16 or float32")
    return device, getattr(torch, dtype)

# ------------------------------------------------------------ data and tokenizer
class CharTokenizer:
    """Each distinct character is one token, numbered in sorted order: one text, one vocabulary."""
    def __init__(self, vocab):  # the characters in id order, one string (as checkpoints store it)
        self.vocab, self.vocab_size = vocab, len(vocab)
        self.stoi = {ch: i for i, ch in enumerate(vocab)}
    def encode(self, s):
        unknown = sorted(set(s) - self.stoi.keys())
        if unknown:
            raise GPTError(f"characters not in the model's vocabulary: {''.join(unknown)!r} "
                           f"(it knows {self.vocab!r})")
        return [self.stoi[ch] for ch in s]
    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)

def find_text(path):
    """The default text is also looked for next to this script, and downloaded when gpt.py runs
    alone (a notebook with only gpt.py pasted in)."""
    here = os.path.dirname(os.path.abspath(globals().get("__file__", "gpt.py")))
    beside = os.path.join(here, path)
    if os.path.exists(path) or path != DEFAULTS["data"]:
        return path
    if os.path.exists(beside):
        return beside
    say(f"{path} not found: downloading tiny-shakespeare (1.1 MB) into {os.path.abspath(path)}")
    try:
        with urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=30) as response:
            text = response.read()
        with open(path + ".tmp", "wb") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    except OSError as e:
        raise GPTError(f"{path} not found and downloading it failed ({e}); put a UTF-8 text file "
                       f"at {os.path.abspath(path)} or pass --data PATH") from None
    return path

def load_data(path, block_size):
    """The text as token ids, split 90/10, and its tokenizer."""
    path = find_text(path)
    if not os.path.isfile(path):
        raise GPTError(f"data file {path} not found; pass --data PATH to a UTF-8 text file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GPTError(f"data file {path} is not UTF-8 text "
                       f"(byte {raw[e.start]:#04x} at offset {e.start})") from None
    tokenizer = CharTokenizer("".join(sorted(set(text))))
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n = int(0.9 * len(data))  # the first 90% to learn from, the last 10% to measure on
    splits = {"train": data[:n], "val": data[n:]}
    for name, split in splits.items():
        if len(split) < block_size + 1:
            raise GPTError(f"data file {path} is {'empty' if not text else 'too short'}: its "
                           f"{name} split has {len(split)} tokens, fewer than block_size + 1 = "
                           f"{block_size + 1}")
    return tokenizer, splits

def get_batch(data, batch_size, block_size, generator):
    """batch_size random windows of the tokens, block_size + 1 each: (B, T+1)."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # window starts
    return data[ix[:, None] + torch.arange(block_size + 1)]

def micro_batches(windows, grad_accum, device):
    """This process's share of a batch all processes drew alike, as grad_accum micro-batches."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = windows.chunk(world_size * grad_accum)[rank * grad_accum:(rank + 1) * grad_accum]
    pinned = device.type == "cuda"  # from pinned memory, the copy to the GPU overlaps its work
    mine = [(w.pin_memory() if pinned else w).to(device, non_blocking=pinned) for w in mine]
    return [(w[:, :-1], w[:, 1:]) for w in mine]  # inputs, and the token that follows each

# ------------------------------------------------------------ model
@dataclass
class GPTConfig:
    vocab_size: int = 65  # distinct characters in the text; set from the data
    block_size: int = 256  # the longest context the model sees, in tokens (T at most)
    n_layer: int = 6
    n_head: int = 6  # nh; each head works in head_dim = n_embd // n_head channels (hs)
    n_embd: int = 384  # C, the width of the residual stream
    dropout: float = 0.2  # only while training; 0 for models too small to overfit in their time

class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v of all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
    def forward(self, x, cache=None):
        B, T, C = x.size()  # batch, time (positions), channels
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # (B, nh, T, hs) each. Sampling keeps earlier positions' keys and values, not recomputed:
        if cache is not None:
            if cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v  # (B, nh, Tk, hs)
        # Causal: query i may attend to key j only if j <= i. With a cache, the Tk - T cached keys
        # come first, so the mask is the lower triangle shifted right by Tk - T. By hand:
        #   att = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, hs) x (B, nh, hs, Tk)
        #   att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # -> (B, nh, T, Tk)
        #   y = att @ v  # (B, nh, T, Tk) x (B, nh, Tk, hs) -> (B, nh, T, hs)
        # scaled_dot_product_attention runs it as one fused (flash) kernel that never stores att.
        # No dropout on att (SPEC §4 has none): on a CPU it would push SDPA onto a 1.6x slower path.
        Tk = k.size(2)
        causal = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(Tk - T)
        mask = None if T in (1, Tk) else causal  # one new token may see every key
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=T == Tk)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        # Exact: 0.5·x·(1 + erf(x/√2)). approximate="tanh" is GPT-2's; the twins would differ.
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
    def forward(self, x):  # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)  # eps 1e-5, biased variance (÷ n): as in GPT-2
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)  # tokens look at earlier tokens
        x = x + self.mlp(self.ln_2(x))  # each token thinks on its own
        return x

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd)))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one vector per token, in and out
        self.init_weights()
    def init_weights(self):
        for module in self.modules():  # LayerNorm keeps PyTorch's weight 1, bias 0
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # Each block adds two branches to the residual stream; scaling their output projections
        # keeps its variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
    def forward(self, idx, targets=None, cache=None):
        B, T = idx.size()
        start = cache[0]["k"].size(2) if cache and cache[0] else 0  # positions already cached
        assert start + T <= self.config.block_size, f"{start + T} positions > block_size"
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache[i] if cache is not None else None)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss

# ------------------------------------------------------------ optimizer and schedule
def make_optimizer(model, cfg, device):
    # Decay only matrices and embeddings (2+ dims). Biases and LayerNorm gains have no capacity to
    # overfit, and pulling a gain towards 0 would only fight the normalization.
    params = list(model.parameters())  # unique: the tied matrix appears once
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg.weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    # fused on CUDA: one kernel for the whole update, not one per tensor
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99), eps=1e-8,
                             fused=device.type == "cuda")

def get_lr(it, cfg):
    """Linear warmup (random init gives wild first gradients), then cosine decay to min_lr."""
    decay_iters = cfg.max_iters if cfg.lr_decay_iters is None else cfg.lr_decay_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / (decay_iters - cfg.warmup_iters)  # 0 -> 1
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)

# ------------------------------------------------------------ checkpoints
def save_atomic(obj, path):
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: killed mid-write, the previous file is still whole

def load_checkpoint(path, what_to_do):
    """weights_only: tensors and plain data only, so a stranger's checkpoint runs no code."""
    if not os.path.exists(path):
        raise GPTError(f"no checkpoint at {path}; {what_to_do}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the first line of torch's message says what is wrong
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise GPTError(f"{path} is not a loadable checkpoint ({reason}); delete it or retrain") \
            from None
    if not isinstance(ckpt, dict) or not {"model", "config", "vocab"} <= ckpt.keys():
        raise GPTError(f"{path} is not a gpt.py checkpoint (no model, config and vocab in it)")
    return ckpt

def save_run(model, optimizer, batch_generator, tokenizer, cfg, run, best):
    """Process 0 writes best.pt (when best), ckpt.pt (all that --resume needs) and log.csv, each
    atomically. model is the plain module, so no DDP or compile prefix gets into the names."""
    if dist.is_initialized() and dist.get_rank() > 0:
        return
    path = lambda name: os.path.join(cfg.out_dir, name)
    state = dict(model=model.state_dict(), config=vars(cfg).copy(), vocab=tokenizer.vocab,
                 iter=run.iter, best_val_loss=run.best_val_loss)
    if best:
        save_atomic(state, path("best.pt"))
    rng = dict(torch=torch.get_rng_state(), batch=batch_generator.get_state())
    state.update(optimizer=optimizer.state_dict(), rng=rng, log=run.log)
    save_atomic(state, path("ckpt.pt"))
    with open(path("log.csv.tmp"), "w", encoding="utf-8") as f:
        f.writelines(",".join(map(str, row)) + "\n" for row in [LOG_COLUMNS, *run.log])
    os.replace(path("log.csv.tmp"), path("log.csv"))

# ------------------------------------------------------------ training loop
@contextmanager
def stop_signals(group):
    """Ctrl-C and SIGTERM (torchrun stopping, a cluster preempting) raise a flag; after each step
    the processes vote with agreed_stop(), so all save at the same step. Alone, a second Ctrl-C
    stops at once. Under torchrun a second one is ignored: torchrun forwards the terminal's Ctrl-C,
    so workers get it twice."""
    received = []
    def handler(signum, frame):
        if "RANK" not in os.environ:
            if received:
                raise KeyboardInterrupt
            say(f"\n{signal.Signals(signum).name}: finishing this step, then saving ckpt.pt")
        received.append(signum)
    def agreed_stop():  # the signal to stop on, or 0: a max over the processes, on the CPU
        vote = torch.tensor(received[:1] or [0])
        if group is not None:
            dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=group)
        return vote.item()
    main_thread = threading.current_thread() is threading.main_thread()  # only it handles signals
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM) if main_thread}
    try:
        yield agreed_stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)

@torch.no_grad()
def estimate_loss(model, splits, cfg, autocast, device):
    """Mean loss over the same eval_iters batches of each split at every eval (per process: a share)."""
    model.eval()
    totals = []
    for data in splits.values():
        generator, total = torch.Generator().manual_seed(cfg.seed + 1), 0.0
        for _ in range(cfg.eval_iters):
            windows = get_batch(data, cfg.batch_size, cfg.block_size, generator)
            for x, y in micro_batches(windows, cfg.grad_accum, device):
                with autocast:
                    total += model(x, y)[1].float()
        totals.append(total)
    totals, world_size = torch.stack(totals), dist.get_world_size() if dist.is_initialized() else 1
    if world_size > 1:
        dist.all_reduce(totals)
    model.train()
    count = cfg.eval_iters * cfg.grad_accum * world_size  # micro-batch means, over all processes
    return {name: total / count for name, total in zip(splits, totals.tolist())}

def train_step(step_model, optimizer, scaler, autocast, batches, lr, grad_clip):
    """One step on this process's micro-batches [(x, y), ...]; returns the mean loss (on device)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = 0.0
    for i, (x, y) in enumerate(batches):  # DDP averages the processes' gradients after the last
        last = i == len(batches) - 1 or not isinstance(step_model, DDP)
        with nullcontext() if last else step_model.no_sync():
            with autocast:
                _, loss = step_model(x, y)
            scaler.scale(loss / len(batches)).backward()  # they add up to the batch's mean
        total += loss.detach()
    scaler.unscale_(optimizer)
    if grad_clip > 0:  # one freak batch must not undo hours of training
        torch.nn.utils.clip_grad_norm_(step_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total / len(batches)

def fast_paths(model, device, dtype, cfg, data):
    """The speed switches for train() and bench.py: TF32, autocast (+ a GradScaler for float16),
    torch.compile, tried on a real batch (failing: eager). On a CPU also a step's time, for estimates."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    def trial(step_model):  # forward and backward, undone: the RNG and gradients stay as they were
        t0 = time.time()
        try:  # get_batch(..., None) draws from torch's generator, restored by fork_rng
            with torch.random.fork_rng(devices=[]), autocast:
                windows = get_batch(data, cfg.batch_size, cfg.block_size, None)
                step_model(*micro_batches(windows, cfg.grad_accum, device)[0])[1].backward()
        finally:
            model.zero_grad(set_to_none=True)
        return time.time() - t0
    step_model = model
    if cfg.compile or cfg.compile is None and device.type == "cuda" and sys.platform == "linux":
        try:
            trial(step_model := torch.compile(model))
        except Exception as e:
            say(f"warning: torch.compile failed, training without it ({type(e).__name__}: "
                f"{(str(e).splitlines() or [''])[0][:200]})")
            step_model = model
    # The first trial warms up; on a CPU the faster of two times a step, for the cost estimate.
    step_s = min(trial(step_model), trial(step_model)) if device.type == "cpu" else None
    return step_model, autocast, scaler, step_s

def join_processes(device):
    """Under torchrun (it sets RANK, LOCAL_RANK, WORLD_SIZE) join the other processes: NCCL between
    GPUs, gloo between CPUs. Returns a gloo group for the stop vote: it must not wait for a GPU."""
    if "RANK" not in os.environ:
        return None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.new_group(backend="gloo")

def check_writable(out_dir):
    try:  # fail now, not after an hour of training
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test{os.environ.get('RANK', '')}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise GPTError(f"output folder {out_dir} is not writable ({e.strerror}); "
                       "pass --out_dir DIR") from None

def say_cost(step_s, cfg, start_iter):
    """On a CPU, what the whole run will cost, from one timed step: before the first (slow) eval."""
    evals = (cfg.max_iters - start_iter) // cfg.eval_interval + 1  # each: 2 x eval_iters forwards
    steps = cfg.max_iters - start_iter + evals * cfg.eval_iters * 2 / 3
    total_s = step_s * cfg.grad_accum * steps
    whole = f"{total_s / 3600:.1f} hours" if total_s > 5400 else f"{total_s / 60:.0f} minutes"
    say(f"one step takes {step_s * cfg.grad_accum:.2f} s on this CPU: the whole run about {whole}"
        + ("; --config tiny trains in minutes" if total_s > 1800 else ""))

def evaluate(model, splits, cfg, autocast, device, run):
    """Both splits' loss, printed and added to the log. Returns True for the best val loss yet."""
    seconds = time.time() - run.since_time  # the stretch since the last eval: its tokens per second
    tokens_per_s = (run.iter - run.since_iter) * cfg.batch_size * cfg.block_size / seconds
    losses = estimate_loss(model, splits, cfg, autocast, device)
    say(f"eval at step {run.iter}: train loss {losses['train']:.4f} | val loss {losses['val']:.4f}")
    lr, elapsed = get_lr(max(run.iter - 1, 0), cfg), run.elapsed + time.time() - run.start_time
    run.log.append([run.iter, round(losses["train"], 4), round(losses["val"], 4), lr,
                    round(tokens_per_s), round(elapsed, 1)])
    best = losses["val"] < run.best_val_loss
    run.best_val_loss = min(losses["val"], run.best_val_loss)
    return best

def train(cfg, resume=None):
    """Train per cfg (a SimpleNamespace of the flags); resume: a loaded ckpt.pt. Returns an exit code."""
    device, dtype = pick_device(cfg.device, cfg.dtype)
    vote_group = join_processes(device)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if vote_group else (0, 1)
    tokenizer, splits = load_data(cfg.data, cfg.block_size)
    cfg.vocab_size = tokenizer.vocab_size
    if resume is not None and resume["vocab"] != tokenizer.vocab:
        raise GPTError(f"--resume: the vocabulary of {cfg.data} ({tokenizer.vocab_size} characters) "
                       f"differs from the checkpoint's ({len(resume['vocab'])}); resume with the text "
                       "it was trained on")
    check_writable(cfg.out_dir)
    torch.manual_seed(cfg.seed + rank)  # init and dropout (DDP copies rank 0's weights to all)
    batch_generator = torch.Generator().manual_seed(cfg.seed)  # the batches: the same on every rank
    config = GPTConfig(**{k: getattr(cfg, k) for k in MODEL_KEYS}, dropout=cfg.dropout)
    model = GPT(config).to(device)
    optimizer = make_optimizer(model, cfg, device)
    run = SimpleNamespace(iter=0, best_val_loss=float("inf"), log=[], elapsed=0.0)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if rank == 0:  # the others' dropout keeps its own seed
            torch.set_rng_state(resume["rng"]["torch"])
        batch_generator.set_state(resume["rng"]["batch"])
        run.iter, run.best_val_loss, run.log = (resume[k] for k in ("iter", "best_val_loss", "log"))
        run.elapsed = run.log[-1][-1] if run.log else 0.0  # seconds trained before
    step_model, autocast, scaler, trial_s = fast_paths(model, device, dtype, cfg, splits["train"])
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    say(f"device {device.type}{gpu}{f' x {world_size} processes' if world_size > 1 else ''}"
        f" | dtype {str(dtype)[6:]} | compile {'on' if step_model is not model else 'off'}"
        f" | {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
        f" | vocab {cfg.vocab_size}"
        f" | train {len(splits['train']):,} tokens | val {len(splits['val']):,} tokens")
    if trial_s is not None:
        say_cost(trial_s, cfg, run.iter)
    if world_size > 1:  # each process its share; DDP averages the gradients during backward
        step_model = DDP(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    run.start_time = run.since_time = time.time()
    run.since_iter = run.iter
    save = lambda best: save_run(model, optimizer, batch_generator, tokenizer, cfg, run, best)
    with stop_signals(vote_group) as agreed_stop:
        if run.iter == 0:  # a fresh model scores about ln(vocab_size): 4.14 for 63 characters
            save(evaluate(step_model, splits, cfg, autocast, device, run))
        run.since_iter, run.since_time = run.iter, time.time()
        for it in range(run.iter, cfg.max_iters):
            lr = get_lr(it, cfg)
            windows = get_batch(splits["train"], cfg.batch_size, cfg.block_size, batch_generator)
            batches = micro_batches(windows, cfg.grad_accum, device)
            loss = train_step(step_model, optimizer, scaler, autocast, batches, lr, cfg.grad_clip)
            run.iter = it + 1
            evaluating = run.iter % cfg.eval_interval == 0 or run.iter == cfg.max_iters
            if run.iter % cfg.log_interval == 0 or evaluating:  # not every step: .item() waits
                report(loss, lr, cfg, run, world_size)
            stop = agreed_stop()
            if evaluating or stop:
                save(evaluating and evaluate(step_model, splits, cfg, autocast, device, run))
                run.since_iter, run.since_time = run.iter, time.time()
            if stop:
                how = "torchrun --standalone --nproc_per_node N" if world_size > 1 else "python"
                say(f"saved {cfg.out_dir}/ckpt.pt at iter {run.iter}; continue with: "
                    f"{how} gpt.py --resume --out_dir {cfg.out_dir}")
                return 128 + stop  # the shell's way: 130 after Ctrl-C (SIGINT), 143 after SIGTERM
    say(f"best val loss {run.best_val_loss:.4f}, in {cfg.out_dir}/best.pt. A taste of it:")
    taste = dict(max_new_tokens=300, num_samples=1, prompt="", verbose=False)
    return sample(SimpleNamespace(**{**vars(cfg), **taste})) if rank == 0 else 0

def report(loss, lr, cfg, run, world_size):
    """The progress line. The loss is the whole batch's: a NaN on any process stops them all."""
    if world_size > 1:
        dist.all_reduce(loss)
    if not math.isfinite(loss := loss.item() / world_size):  # before any eval: no NaN is saved
        raise GPTError(f"loss became {loss} at step {run.iter}; {cfg.out_dir}/ckpt.pt and best.pt "
                       f"keep the last good state. Try a lower --learning_rate (now "
                       f"{cfg.learning_rate})")
    step_s = (time.time() - run.since_time) / (run.iter - run.since_iter)
    eta = divmod(round((cfg.max_iters - run.iter) * step_s), 60)  # (minutes, seconds)
    say(f"step {run.iter} / {cfg.max_iters} | loss {loss:.4f} | {step_s * 1000:.0f} ms/step | "
        f"{cfg.batch_size * cfg.block_size / step_s:,.0f} tok/s | lr {lr:.2e} | "
        f"eta {eta[0]}m{eta[1]:02d}s")

# ------------------------------------------------------------ sampling
@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None,
             use_cache=True):
    """Yield max_new_tokens new token ids, (B, 1) each, continuing idx (B, T), with the
    probabilities they were drawn from (B, vocab_size). temperature 0 is greedy; top_k keeps the
    k likeliest."""
    # The model knows only positions 0..block_size-1. When the context outgrows that, the window
    # slides a quarter block at once: positions restart from 0, so the cache is rebuilt once per
    # block_size/4 tokens instead of at every token, and the model always sees 3/4 of a block.
    block_size, start, cache = model.config.block_size, 0, None  # the window is idx[:, start:]
    for _ in range(max_new_tokens):
        if idx.size(1) - start > block_size:
            start, cache = idx.size(1) - (block_size - block_size // 4), None
        if cache:  # only the newest token goes through the model: O(context) work, not O(context²)
            logits, _ = model(idx[:, -1:], cache=cache)
        else:  # the whole window: to fill a fresh cache, or every time without one
            cache = [{} for _ in model.transformer.h] if use_cache else None
            logits, _ = model(idx[:, start:], cache=cache)
        logits = logits[:, -1, :].float() / (temperature or 1.0)  # (B, vocab_size)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = probs.cpu()  # drawn on the CPU: one seed gives one text on any device
            next_id = torch.multinomial(probs, num_samples=1, generator=generator).to(idx.device)
        idx = torch.cat([idx, next_id], dim=1)
        yield next_id, probs

def sample(cfg):
    """Stream text from best.pt to stdout and all else to stderr (so `> poem.txt` keeps the poem).
    --verbose: first a line per new token with the five likeliest, then the whole text."""
    path = os.path.join(cfg.out_dir, "best.pt")
    elsewhere = f" --out_dir {cfg.out_dir}" if cfg.out_dir != DEFAULTS["out_dir"] else ""
    ckpt = load_checkpoint(path, f"train one first: python gpt.py --config tiny{elsewhere}")
    device, _ = pick_device(cfg.device)
    model = GPT(GPTConfig(**{k: ckpt["config"][k] for k in MODEL_KEYS})).to(device).eval()
    model.load_state_dict(ckpt["model"])  # copies the weights onto the model's device
    tokenizer, prompt = CharTokenizer(ckpt["vocab"]), cfg.prompt or "\n"  # where speeches start
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)  # (1, T)
    print(f"sampling {path} (step {ckpt['iter']}, val loss {ckpt['best_val_loss']:.4f}) "
          f"on {device}", file=sys.stderr)
    generator, t0 = torch.Generator().manual_seed(cfg.seed), time.time()
    show = lambda i: repr(tokenizer.decode([i]))  # a token as a literal: a newline shows as '\n'
    for i in range(cfg.num_samples):
        header = "step | chosen | the five likeliest and their probabilities\n"
        header = header if cfg.verbose else prompt
        print(("\n---\n" if i else "") + header, end="", flush=True)
        ids = []
        tokens = generate(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator)
        for step, (next_id, probs) in enumerate(tokens, start=1):
            ids.append(next_id.item())
            if cfg.verbose:
                p, top = probs[0].topk(min(5, probs.size(-1)))
                likeliest = [f"{show(t)} {q:.3g}" for q, t in zip(p.tolist(), top.tolist()) if q]
                print(f"{step:4d} | {show(ids[-1]):>6} | " + "  ".join(likeliest))
            else:
                print(tokenizer.decode(ids[-1:]), end="", flush=True)
        if cfg.verbose:
            print(prompt + tokenizer.decode(ids), end="")
    print(flush=True)
    n, seconds = cfg.max_new_tokens * cfg.num_samples, time.time() - t0
    print(f"{n} tokens in {seconds:.2f}s ({n / seconds:,.0f} tokens/s)", file=sys.stderr)
    return 0

# ------------------------------------------------------------ command line
class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # under torchrun all processes find the same usage error: one says it
        if int(os.environ.get("RANK", "0")) == 0:
            super().error(message)
        sys.exit(2)

def boolean(text):  # nanoGPT's habits: --compile, --compile=True, --compile False
    return ("true", "false").index(text.lower()) == 0  # else argparse reports the ValueError

POSITIVE = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "eval_interval",
            "eval_iters", "log_interval", "max_new_tokens", "num_samples", "top_k", "grad_accum",
            "learning_rate")

def parse_args(argv):
    p = ArgumentParser(prog="gpt.py", description="Train a GPT on a text, or --sample from one.",
                       argument_default=argparse.SUPPRESS, allow_abbrev=False)  # only flags given
    p.add_argument("--sample", action="store_true", default=False, help="write from out_dir/best.pt")
    p.add_argument("--resume", action="store_true", default=False, help="continue out_dir/ckpt.pt")
    p.add_argument("--verbose", action="store_true", help="--sample: each step's likeliest tokens")
    p.add_argument("--config", choices=PRESETS, help="preset (default medium); flags override it")
    for name in ("data", "out_dir", "prompt"):
        p.add_argument(f"--{name}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--compile", type=boolean, nargs="?", const=True, metavar="BOOL")
    for name in (*POSITIVE[:-1], "max_iters", "warmup_iters", "lr_decay_iters", "seed"):
        p.add_argument(f"--{name}", type=int)
    for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "temperature", "dropout"):
        p.add_argument(f"--{name}", type=float)
    # A prompt may look like a flag ("-x", "--"), so it goes around argparse.
    at = argv.index("--prompt") + 1 if "--prompt" in argv[:-1] else 0
    given = argparse.Namespace(**({"prompt": argv[at]} if at else {}))
    args, unknown = p.parse_known_args([*argv[:at - 1], *argv[at + 1:]] if at else argv, given)
    # A notebook kernel runs with `-f kernel-….json` in its argv.
    unknown = [a for i, a in enumerate(unknown)
               if a != "-f" and not (i and unknown[i - 1] == "-f" and a.endswith(".json"))]
    if unknown and "ipykernel" not in sys.modules:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    for name, value in vars(args).items():  # sizes must be > 0; counts, rates and the seed >= 0
        number = type(value) in (int, float)
        allowed = not number or value > 0 or value == 0 and name not in POSITIVE
        if not allowed or number and not math.isfinite(value):
            p.error(f"argument --{name}: must be {'>' if name in POSITIVE else '>='} 0, got {value}")
    if getattr(args, "dropout", 0) >= 1:
        p.error(f"argument --dropout: must be < 1, got {args.dropout}")
    return p, args

def main(argv=None):
    parser, args = parse_args(sys.argv[1:] if argv is None else argv)
    given = {k: v for k, v in vars(args).items() if k not in ("sample", "resume")}
    try:
        resume = None
        if args.resume and not args.sample:
            resume = load_checkpoint(os.path.join(given.get("out_dir", "out"), "ckpt.pt"),
                                     "--resume continues a run: start one without --resume first")
        # Defaults, then the checkpoint's config when resuming, then the preset, then the flags.
        preset = given.get("config", None if resume else DEFAULTS["config"])
        saved = resume["config"] if resume else {}
        cfg = SimpleNamespace(**{**DEFAULTS, **saved, **PRESETS.get(preset, {}), **given})
        if args.sample:
            return sample(cfg)
        if cfg.n_embd % cfg.n_head:
            parser.error(f"--n_embd {cfg.n_embd} is not divisible by --n_head {cfg.n_head}: "
                         "heads need equal shares")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
        if cfg.batch_size % (world_size * cfg.grad_accum):
            parser.error(f"--batch_size {cfg.batch_size} is not divisible by {world_size} processes "
                         f"x --grad_accum {cfg.grad_accum}: every micro-batch must have one size")
        differ = [f"{k} {saved[k]} -> {getattr(cfg, k)}" for k in SHAPE
                  if resume and saved[k] != getattr(cfg, k)]
        if differ:
            raise GPTError(f"--resume: the flags change the checkpoint's model "
                           f"({', '.join(differ)}); drop those flags, or train anew in another --out_dir")
        return train(cfg, resume)
    except GPTError as e:
        say(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

if __name__ == "__main__":
    code = main()
    if code and "ipykernel" not in sys.modules:  # in a notebook, SystemExit only prints a warning
        sys.exit(code)
