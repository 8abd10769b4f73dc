"""
gpt.py: a GPT to read top to bottom, then train from scratch on your own machine.

    python gpt.py --config tiny     # 0.44M parameters, a few minutes on a laptop CPU
    python gpt.py --sample          # Shakespeare-shaped text from out/best.pt
    python gpt.py --config medium   # 10.8M parameters: nanoGPT's shakespeare_char (a GPU helps)
    torchrun --standalone --nproc_per_node 4 gpt.py --config medium   # the same run on 4 GPUs

The file has two parts. The first is the GPT itself, in the order a run happens: the presets, the
characters that are its tokens, the text cut into batches, the model, its loss, the optimizer and
the learning rate, one training step, the training loop, sampling. Below one marked line, the
second part is the machinery that makes it a dependable tool: devices and precision, BPE and
prepared token files, several processes, Ctrl-C, compiling, memory, checkpoint files, --verbose,
--chat and the command line. The first part calls it by names that say what they do.

For readers who know GPT-2 (each detail is shown below): it is GPT-2 (pre-LayerNorm blocks, learned
positions, biases, output head tied to the token embedding, N(0, 0.02) init, residual projections
scaled by 1/sqrt(2·n_layer)), small, but:
- tokens are the text's own characters (63 for shakespeare.txt), not GPT-2's 50257 BPE tokens
  (scripts/prepare.py makes BPE tokens for bigger texts);
- the GELU is exact erf, not GPT-2's tanh approximation (which scripts/from_gpt2.py's GPT-2 uses);
- AdamW's beta2 is 0.99, not 0.999: with small batches the second moment should forget faster.
microgpt.py computes the same function with plain Python floats; test_gpt.py proves they agree.
"""
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

# ------------------------------------------------------------ presets
# n_layer: transformer blocks, one on top of the other. n_head: attention heads in each block.
# n_embd: numbers that describe each token inside the model. dropout: the share of numbers zeroed at
# random while training, so the model cannot lean on any one of them (0: none).
# batch_size: text windows per optimizer step. max_iters: optimizer steps in the whole run.
# eval_interval: steps between measurements of the loss (and checkpoints); eval_iters: batches each.
# learning_rate: the largest step size, reached after warmup_iters steps; then it falls to min_lr.
# grad_accum: each batch in this many pieces, one after another: less memory, the same result.
# tiny and small are tuned for the best text in about 2 and 10 minutes on a 2-core CPU; medium is
# nanoGPT's shakespeare_char recipe, made for a GPU.
PRESETS = dict(
    tiny=dict(n_layer=2, n_head=2, n_embd=128, dropout=0.0, batch_size=16, max_iters=1500,
              eval_interval=250, eval_iters=40, learning_rate=5e-3, min_lr=5e-4, warmup_iters=50),
    small=dict(n_layer=4, n_head=4, n_embd=256, dropout=0.1, batch_size=16, max_iters=1200,
               eval_interval=200, eval_iters=20, learning_rate=3e-3, min_lr=3e-4, warmup_iters=50),
    medium=dict(n_layer=6, n_head=6, n_embd=384, dropout=0.2, batch_size=64, max_iters=5000,
                eval_interval=250, eval_iters=20, learning_rate=1e-3, min_lr=1e-4,
                warmup_iters=100))
DEFAULTS = dict(  # what every preset shares; a flag overrides any of these
    config="medium", data="shakespeare.txt", out_dir="out", device="auto", dtype="auto",
    compile=None,  # None: on for CUDA on Linux only, where it pays off
    block_size=256,  # the longest context the model sees, in tokens
    grad_accum=1, lr_decay_iters=None,  # None: the learning rate decays until max_iters
    weight_decay=0.1, grad_clip=1.0, seed=1337, log_interval=10, gelu="exact",
    prompt="", max_new_tokens=500, temperature=0.8, top_k=None, num_samples=1, verbose=False)

# ------------------------------------------------------------ characters: the tokenizer
class CharTokenizer:
    """Each distinct character is one token, numbered in sorted order: one text, one vocabulary."""
    def __init__(self, vocab):  # the characters in id order, one string (as checkpoints keep it)
        self.vocab, self.vocab_size, self.spec = vocab, len(vocab), {"name": "char", "vocab": vocab}
        self.stoi = {ch: i for i, ch in enumerate(vocab)}
        self.chat = None  # the chat template of a model fine-tuned on conversations (--chat)
    def encode(self, s):
        unknown = sorted(set(s) - self.stoi.keys())
        if unknown:
            raise GPTError(f"characters not in the model's vocabulary: {''.join(unknown)!r} "
                           f"(it knows {self.vocab!r})")
        return [self.stoi[ch] for ch in s]
    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)

# ------------------------------------------------------------ the text, its split and a batch
def split_text(text, tokenizer):
    """The first 90% of the characters to learn from, the last 10% to measure on (never trained)."""
    n = int(0.9 * len(text))
    train, val = tokenizer.encode(text[:n]), tokenizer.encode(text[n:])
    return dict(train=torch.tensor(train), val=torch.tensor(val))

def get_batch(data, batch_size, block_size, generator, mask=None):
    """batch_size windows of block_size tokens from random places: inputs x, targets y, (B, T) each.
    The target at each position is the token that follows it, so y is x shifted by one."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    at = starts[:, None] + torch.arange(block_size + 1)  # (B, T+1): where each window's tokens are
    window = tokens_at(data, at)  # (B, T+1); of a memory-mapped file, only these are read
    x, y = window[:, :-1], window[:, 1:]
    if mask is not None:  # fine-tuning on conversations: learn the answers, not the questions
        y = y.masked_fill(tokens_at(mask, at)[:, 1:] == 0, -1)  # the loss skips targets of -1
    return x, y

# ------------------------------------------------------------ the model
@dataclass
class GPTConfig:
    vocab_size: int = 65  # distinct tokens; always set from the data (63 for shakespeare.txt)
    block_size: int = 256  # the longest context the model sees, in tokens (T at most)
    n_layer: int = 6
    n_head: int = 6  # nh; each head works in head_dim = n_embd // n_head channels (hs)
    n_embd: int = 384  # C, the width of the residual stream
    dropout: float = 0.2  # only while training; 0 for models too small to overfit in their time
    gelu: str = "exact"  # or "tanh", GPT-2's approximation (checkpoints from scripts/from_gpt2.py)

class CausalSelfAttention(nn.Module):
    """Each token gathers information from the tokens before it, weighted by how well they match."""
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v of all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.by_hand = False  # True: the formula step by step, its weights kept in self.att
    def forward(self, x, cache=None):  # cache: only while sampling (see generate); skip it at first
        B, T, C = x.size()  # batch, time (positions), channels
        # Each token asks a query (what am I looking for?), offers a key (what do I hold?) and a
        # value (what I pass on if chosen). Heads move next to the batch: each attends on its own.
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:  # sampling: earlier tokens' keys and values are kept, not recomputed
            if cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v  # (B, nh, Tk, hs): the Tk - T cached ones come first
        Tk = k.size(2)
        causal = None  # training (T == Tk) and a single new token need no mask built: see below
        if self.by_hand or T not in (1, Tk):
            # Causal: query i (position Tk - T + i) may look at key j only if j <= Tk - T + i
            causal = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(Tk - T)
        if self.by_hand:  # for reading, and for looking inside (scripts/serve.py)
            # how well each query matches each key; / sqrt(hs) keeps scores near 1 whatever hs is
            # (B, nh, T, hs) x (B, nh, hs, Tk) -> (B, nh, T, Tk)
            att = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))
            att = att.masked_fill(~causal, float("-inf"))  # no looking ahead
            att = F.softmax(att, dim=-1)  # each row: weights over the keys, summing to 1
            self.att = att
            y = att @ v  # (B, nh, T, Tk) x (B, nh, Tk, hs) -> (B, nh, T, hs)
        else:  # the same in one fused kernel that never stores att; is_causal: the causal mask
            # without building it, which lets a GPU use its fastest (flash) kernel
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, is_causal=T == Tk)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again, in memory too
        return self.resid_dropout(self.c_proj(y))

class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        # Exact erf, as in microgpt.py; GPT-2's weights need its tanh approximation
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
    def forward(self, x):  # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        # LayerNorm rescales each token's numbers to mean 0, variance 1, then a learned gain, bias
        self.ln_1 = nn.LayerNorm(config.n_embd)  # eps 1e-5, biased variance (÷ n): as in GPT-2
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
    def forward(self, x, cache=None):
        # x is the residual stream: each sublayer reads it and adds its result to it
        x = x + self.attn(self.ln_1(x), cache)  # tokens look at earlier tokens
        x = x + self.mlp(self.ln_2(x))  # each position is transformed on its own, no mixing
        return x

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # a learned vector per token id
            wpe=nn.Embedding(config.block_size, config.n_embd),  # and per position, added to it
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
        for name, p in self.named_parameters():  # each block adds two branches to the residual
            # stream: scaled down, they keep its variance from growing with depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
    def forward(self, idx, cache=None):
        B, T = idx.size()
        start = cache[0]["k"].size(2) if cache and cache[0] else 0  # positions a cache holds
        assert start + T <= self.config.block_size, f"{start + T} positions > block_size"
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i])
        # logits: a score for every possible next token; softmax turns them into probabilities
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)

# ------------------------------------------------------------ the loss
def next_token_loss(logits, targets):
    """Cross-entropy: -log(the probability the model gave the true next token), averaged over the
    positions; targets of -1 are skipped. A fresh model bets evenly: ln(vocab_size), 4.14 for 63."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)

# ------------------------------------------------------------ the optimizer and the learning rate
def make_optimizer(model, cfg, device):
    # Decay only matrices and embeddings (2+ dims). Biases and LayerNorm gains have no capacity to
    # overfit, and pulling a gain towards 0 would only fight the normalization.
    params = list(model.parameters())  # unique: the tied matrix appears once
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg.weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    fused = device.type == "cuda"  # on a GPU one kernel updates every tensor at once
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99), eps=1e-8, fused=fused)

def get_lr(it, cfg):
    """Linear warmup (random init gives wild first gradients), then cosine decay to min_lr."""
    decay_iters = cfg.max_iters if cfg.lr_decay_iters is None else cfg.lr_decay_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / (decay_iters - cfg.warmup_iters)  # 0 -> 1
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)

# ------------------------------------------------------------ one training step
def train_step(model, optimizer, scaler, autocast, batches, lr, grad_clip):
    """One optimizer step on this process's micro-batches [(x, y), ...]; returns their mean loss.
    autocast runs the matmuls in bfloat16 or float16 where that is faster (float32: does nothing)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = 0.0
    for i, (x, y) in enumerate(batches):
        with gradients_shared(model, last=i == len(batches) - 1):  # torchrun only; else nothing
            with autocast:
                loss = next_token_loss(model(x), y)
            loss = loss / len(batches)  # the micro-batches' gradients add up to the batch's mean
            if scaler.is_enabled():  # float16: scaled up first, or small gradients would round to 0
                scaler.scale(loss).backward()
            else:
                loss.backward()  # the backward pass: every parameter's .grad, d(loss)/d(parameter)
        total += loss.detach()
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    if grad_clip > 0:  # shrink the whole gradient to length grad_clip at most: one freak batch
        # must not undo hours of training
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler.is_enabled():  # float16: steps, unless a gradient overflowed; then scales down
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()  # AdamW moves every parameter a little against its gradient
    optimizer.zero_grad(set_to_none=True)  # backward adds into .grad: clear it for the next step
    return total

# ------------------------------------------------------------ the training loop
@dataclass
class Run:
    """Where a training run stands; ckpt.pt keeps it, so --resume goes on from there."""
    iter: int = 0  # optimizer steps taken
    best_val_loss: float = math.inf  # the lowest val loss so far, the one best.pt holds
    log: list = field(default_factory=list)  # log.csv's rows, one per eval
    elapsed: float = 0.0  # seconds trained before this process started (by earlier runs)
    per_char: float = 1.0  # val tokens per character: BPE's loss per character is loss x per_char
    start: float = 0.0  # when this process began training (time.perf_counter)
    since_iter: int = 0  # the step and the time of the last eval, for the speed
    since_time: float = 0.0

def train(cfg, resume=None, init=None):
    """Train per cfg (the flags). resume: a loaded ckpt.pt to continue; init: a loaded checkpoint
    whose weights to start from, with a new optimizer. Returns an exit code."""
    # The setup is machinery (below the line). On one machine rank is 0 and world_size 1 (torchrun
    # starts one process per GPU, each a rank); step_model is the model, maybe compiled (faster).
    device, dtype = pick_device(cfg.device, cfg.dtype)
    vote_group, rank, world_size = join_processes(device)
    tokenizer = tokenizer_of(resume or init)  # None: the data's own characters
    tokenizer, splits, masks, per_char = load_data(cfg.data, cfg.block_size, tokenizer)
    cfg.vocab_size = tokenizer.vocab_size
    check_memory(cfg, device, dtype)
    torch.manual_seed(cfg.seed + rank)  # the init and dropout (DDP copies rank 0's weights to all)
    batch_generator = torch.Generator().manual_seed(cfg.seed)  # the batches: the same on every rank
    config = GPTConfig(**{k: getattr(cfg, k) for k in MODEL_KEYS}, dropout=cfg.dropout)
    model = GPT(config).to(device)
    optimizer = make_optimizer(model, cfg, device)
    run = Run(per_char=per_char)
    say_what_runs(cfg, device, dtype, model, splits, world_size)
    step_model, autocast, scaler, trial_s = fast_paths(model, device, dtype, cfg, splits["train"])
    restore(model, optimizer, scaler, batch_generator, run, resume, init, rank)
    if trial_s is not None:
        say_cost(trial_s, cfg, run.iter)
    run.start = run.since_time = time.perf_counter()
    run.since_iter = run.iter
    if run.iter == 0 and not resume:  # a fresh model scores about ln(vocab_size)
        best = evaluate(step_model, splits, cfg, autocast, device, run, masks)
        save_run(model, optimizer, scaler, batch_generator, tokenizer, cfg, run, best, rank)
    with stop_requests(vote_group) as agreed_stop:  # from here on Ctrl-C saves before it stops
        for it in range(run.iter, cfg.max_iters):
            lr = get_lr(it, cfg)
            x, y = get_batch(splits["train"], cfg.batch_size, cfg.block_size, batch_generator, masks["train"])
            batches = micro_batches((x, y), cfg.grad_accum, device)
            loss = train_step(step_model, optimizer, scaler, autocast, batches, lr, cfg.grad_clip)
            run.iter = it + 1
            evaluating = run.iter % cfg.eval_interval == 0 or run.iter == cfg.max_iters
            stop = agreed_stop()
            if run.iter % cfg.log_interval == 0 or evaluating or stop:  # .item() waits: not each step
                report(loss, lr, cfg, run, world_size)
            if evaluating or stop:
                best = False
                if evaluating:
                    best = evaluate(step_model, splits, cfg, autocast, device, run, masks)
                save_run(model, optimizer, scaler, batch_generator, tokenizer, cfg, run, best, rank)
            if stop:
                say_how_to_resume(cfg, run, world_size)
                return 128 + stop  # the shell's way: 130 after Ctrl-C (SIGINT), 143 after SIGTERM
    say(f"best val loss {run.best_val_loss:.4f}, in {cfg.out_dir}/best.pt. A taste of it:")
    return write_a_taste(cfg) if rank == 0 else 0

# ------------------------------------------------------------ sampling
@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None,
             use_cache=True):
    """Yield max_new_tokens ids (B, 1) after idx (B, T), with the probabilities they were drawn from
    (B, vocab_size). temperature 0 is greedy; top_k keeps the k likeliest."""
    block_size, start, cache = model.config.block_size, 0, None  # the model sees idx[:, start:]
    for _ in range(max_new_tokens):
        # It knows positions 0..block_size-1 only. Past that the window slides a quarter block at
        # once (block 256: at 257 tokens it keeps the last 192): the cache is rebuilt every 64 tokens.
        if idx.size(1) - start > block_size:
            start, cache = idx.size(1) - (block_size - block_size // 4), None
        if cache:  # the KV cache: only the newest token goes through the model, O(context) work
            logits = model(idx[:, -1:], cache=cache)
        else:  # the whole window: to fill a fresh cache, or every time without one
            cache = [{} for _ in model.transformer.h] if use_cache else None
            logits = model(idx[:, start:], cache=cache)
        logits = logits[:, -1, :].float()  # the last position's scores: (B, vocab_size)
        # Temperature below 1 sharpens, above 1 flattens (0: greedy, shown at 1). The largest score is
        # taken off first: no probability changes, and even a tiny temperature cannot overflow to inf.
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(temperature or 1.0, 1e-30)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = probs.cpu()  # drawn on the CPU: one seed gives one text on any device
            next_id = torch.multinomial(probs, num_samples=1, generator=generator).to(idx.device)
        idx = torch.cat([idx, next_id], dim=1)  # the drawn token joins the context
        yield next_id, probs

# ============================================================ the GPT is complete above this line.
# Below it, the machinery that makes it a dependable tool: devices and precision, BPE and prepared
# folders, torchrun, stop signals, compile, memory, checkpoint files, --verbose, --chat, the command line.
import argparse, json, os, signal, sys, threading
import urllib.request  # fetches tiny-shakespeare when gpt.py runs alone, pasted into a notebook
from contextlib import contextmanager, nullcontext

import torch.distributed as dist  # used only under torchrun
from torch.nn.parallel import DistributedDataParallel as DDP

LOG_COLUMNS = ("iter", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s")  # log.csv
SHAPE = ("n_layer", "n_head", "n_embd", "block_size")  # what flags may not change in a checkpoint
MODEL_KEYS = (*SHAPE, "vocab_size", "gelu")  # the GPTConfig fields a checkpoint's config holds
# A Mac's half precision: bfloat16 autocast from torch 2.6 (macOS 14), float16's loss scaler from 2.8;
# older ones fail deep inside, or train in float32 under a bfloat16 label
MAC_HALF = dict(bfloat16=(2, 6), float16=(2, 8))
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

class GPTError(Exception):
    """A problem the user can fix: main prints it as one line, never a traceback."""

def say(*args, **kwargs):  # under torchrun, process 0 speaks for all of them
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)

# ------------------------------------------------------------ device and precision
def pick_device(name="auto", dtype="auto"):
    """Device and precision, decided once; the model reads its device from its inputs. bfloat16 only
    where computed natively: it needs no loss scaling, float16 a GradScaler."""
    has = dict(cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available(), cpu=True)
    if name == "auto":
        name = next(d for d in has if has[d])
    if not has[name]:
        raise GPTError(f"--device {name}: this PyTorch cannot use it here; try --device auto")
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if name == "cuda" else name)
    if dtype == "auto" and device.type == "cuda":  # A100, H100: compute capability 8.0 and up. Not
        # torch.cuda.is_bf16_supported(): it says yes on a T4 or V100, which only emulate bf16.
        dtype = "bfloat16" if torch.cuda.get_device_capability(device) >= (8, 0) else "float16"
    elif dtype == "auto":  # MPS: float32, its half precision is no faster for models this small
        dtype = "bfloat16" if device.type == "cpu" and native_cpu_bf16() else "float32"
    version = tuple(int(n) for n in torch.__version__.split(".")[:2])
    if device.type == "mps" and dtype != "float32" and version < MAC_HALF[dtype]:
        need = ".".join(map(str, MAC_HALF[dtype]))
        raise GPTError(f"--dtype {dtype} on a Mac needs PyTorch {need} or newer (this is {torch.__version__}); "
                       "upgrade it, or train in float32 (the default)")
    return device, getattr(torch, dtype)

def native_cpu_bf16(cpuinfo="/proc/cpuinfo"):
    """AMX (Xeons since Sapphire Rapids) and AVX-512 BF16 (AMD Zen 4 and later, Cooper Lake) multiply
    bfloat16 natively: 1.5-2.3x faster training steps, measured. Elsewhere it is emulated, slower.
    Linux lists the features; elsewhere (and on ARM, unmeasured) float32."""
    if not os.path.exists(cpuinfo):
        return False
    with open(cpuinfo, encoding="utf-8") as f:
        return not {"amx_bf16", "avx512_bf16"}.isdisjoint(f.read().split())

# ------------------------------------------------------------ texts, BPE and prepared folders
class BPETokenizer:
    """Byte-level BPE run by tiktoken (GPT-2's tokens, or learned by scripts/prepare.py): any text
    encodes, even characters it never saw, as their UTF-8 bytes."""
    def __init__(self, spec):  # the split pattern, and each token's bytes (as latin-1) in id order
        ranks = {token.encode("latin-1"): i for i, token in enumerate(spec["tokens"])}
        try:  # optional packages are imported only by the feature that needs them
            import tiktoken
        except ImportError:
            raise GPTError('tiktoken is not installed: pip install -e ".[bpe]"') from None
        self.enc = tiktoken.Encoding(spec["name"], pat_str=spec["pattern"], mergeable_ranks=ranks,
                                     special_tokens={"<|endoftext|>": len(ranks)})  # ends documents
        self.spec, self.vocab_size, self.chat = spec, len(ranks) + 1, None
    def encode(self, s):
        return self.enc.encode_ordinary(s)  # "<|endoftext|>" typed in a text is just text
    def decode(self, ids):  # a character cut across tokens reads "\ufffd" until it is whole
        return self.enc.decode(ids)

def make_tokenizer(spec, chat=None):  # from the plain data a checkpoint or a prepared folder keeps
    tokenizer = CharTokenizer(spec["vocab"]) if spec["name"] == "char" else BPETokenizer(spec)
    tokenizer.chat = chat
    return tokenizer

def find_text(path):
    """The default text may sit next to this script, or is downloaded (gpt.py pasted alone)."""
    beside = os.path.join(os.path.dirname(globals().get("__file__", "")), path)
    if os.path.exists(path) or path != DEFAULTS["data"]:
        return path
    if os.path.exists(beside):
        return beside
    say(f"{path} not found: downloading tiny-shakespeare (1.1 MB) into {os.path.abspath(path)}")
    try:
        urllib.request.urlretrieve(TINY_SHAKESPEARE_URL, path + ".tmp")
        os.replace(path + ".tmp", path)  # whole or not at all
    except OSError as e:
        raise GPTError(f"{path} not found and downloading it failed ({e}); put a UTF-8 text file at "
                       f"{os.path.abspath(path)} or pass --data PATH") from None
    return path

def load_data(path, block_size, tokenizer=None):
    """The tokenizer, the train and val tokens, their masks (None, or 1 on answers for conversations)
    and val tokens per character. A text file is read whole, a prepared folder memory-mapped."""
    path = find_text(path)
    if os.path.isdir(path):
        tokenizer, splits, masks, per_char = load_prepared(path, tokenizer)
    else:
        tokenizer, splits, masks, per_char = load_text(path, tokenizer)
    what = f"data folder {path}" if os.path.isdir(path) else f"data file {path}"
    for name, split in splits.items():
        if len(split) < block_size + 1:
            raise GPTError(f"{what} is {'too short' if len(split) else 'empty'}: its {name} split has "
                           f"{len(split)} tokens, fewer than block_size + 1 = {block_size + 1}")
    return tokenizer, splits, masks, per_char

def load_text(path, tokenizer):
    if not os.path.isfile(path):
        raise GPTError(f"data file {path} not found; pass --data PATH to a UTF-8 text file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GPTError(f"data file {path} is not UTF-8 text (byte {raw[e.start]:#04x} at offset "
                       f"{e.start})") from None
    if len(raw) > 50e6:
        say(f"{path} is {len(raw) / 1e6:.0f} MB: scripts/prepare.py makes token files that start in seconds")
    tokenizer = tokenizer or CharTokenizer("".join(sorted(set(text))))
    try:
        splits = split_text(text, tokenizer)
    except GPTError as e:  # a char model given a text with characters it never saw
        raise GPTError(f"data file {path}: {e}") from None
    per_char = len(splits["val"]) / max(len(text) - int(0.9 * len(text)), 1)
    return tokenizer, splits, dict(train=None, val=None), per_char

def load_prepared(folder, tokenizer):
    """meta.json (the tokenizer and the counts), train.bin and val.bin (the token ids), for
    conversations train_mask.bin and val_mask.bin (1 on the answers' tokens)."""
    import numpy as np  # memory maps
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        sizes = {s: meta[s]["tokens"] * np.dtype(meta["dtype"]).itemsize for s in ("train", "val")}
        per_char = meta["val"]["tokens"] / max(meta["val"]["characters"], 1)
        if tokenizer is not None and not fits(tokenizer.spec, meta["tokenizer"]):
            raise GPTError(f"data folder {folder} was prepared with another tokenizer, not the model's")
        tokenizer = make_tokenizer(meta["tokenizer"], meta.get("chat"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise GPTError(f"data folder {folder} has no meta.json from scripts/prepare.py") from None
    splits, masks = {}, dict(train=None, val=None)
    for name in ("train", "val"):
        files = {f"{name}.bin": sizes[name]}
        if "chat" in meta:
            files[f"{name}_mask.bin"] = meta[name]["tokens"]  # a byte per token
        for file, size in files.items():
            path = os.path.join(folder, file)
            if not os.path.isfile(path) or os.path.getsize(path) != size:
                raise GPTError(f"data folder {folder} is incomplete: its {file} is cut short; prepare it again")
        splits[name] = np.zeros(0)
        if sizes[name]:
            splits[name] = np.memmap(os.path.join(folder, f"{name}.bin"), meta["dtype"], "r")
        if "chat" in meta and sizes[name]:
            masks[name] = np.memmap(os.path.join(folder, f"{name}_mask.bin"), "uint8", "r")
    return tokenizer, splits, masks, per_char

def fits(model_spec, data_spec):  # the same tokenizer, or a char vocabulary grown at its end
    if model_spec["name"] == "char" == data_spec["name"]:
        return data_spec["vocab"].startswith(model_spec["vocab"])
    return model_spec.get("tokens") == data_spec.get("tokens")

def tokens_at(data, at):  # data[at] as int64: of a memory map (numpy), only those tokens are read
    if torch.is_tensor(data):
        return data[at]
    return torch.from_numpy(data[at.numpy()].astype("int64"))

# ------------------------------------------------------------ torchrun: many processes, one model
def join_processes(device):
    """torchrun sets RANK: join by NCCL (GPUs) or gloo (CPUs). Returns a gloo group for the stop
    vote (it must not wait for a GPU), this process's rank and their number."""
    if "RANK" not in os.environ:
        return None, 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.new_group(backend="gloo"), dist.get_rank(), dist.get_world_size()

def processes():  # this process's rank, and how many there are
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1

def micro_batches(batch, grad_accum, device):
    """This process's share of a batch all processes drew alike, as grad_accum micro-batches."""
    rank, world_size = processes()
    mine = slice(rank * grad_accum, (rank + 1) * grad_accum)
    cuda, shares = device.type == "cuda", []
    for x, y in zip(*(t.chunk(world_size * grad_accum)[mine] for t in batch)):
        if cuda:  # from pinned memory, the copy to the GPU overlaps its work
            x, y = x.pin_memory(), y.pin_memory()
        shares.append((x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)))
    return shares

def gradients_shared(model, last):  # DDP averages gradients in backward: the last micro-batch's
    if isinstance(model, DDP) and not last:
        return model.no_sync()
    return nullcontext()

# ------------------------------------------------------------ stop signals: Ctrl-C and SIGTERM
@contextmanager
def stop_requests(group):
    """Ctrl-C and SIGTERM (torchrun stopping, a cluster preempting) raise a flag; the processes
    vote after each step, so all save the same one. A second Ctrl-C (alone) stops at once.
    A signal ignored when gpt.py started (a shell's background job ignores SIGINT) stays ignored."""
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
    old = {}
    if threading.current_thread() is threading.main_thread():  # only it may handle signals
        for s in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(s) is not signal.SIG_IGN:
                old[s] = signal.signal(s, handler)
    try:
        yield agreed_stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)

def say_how_to_resume(cfg, run, world_size):
    if "ipykernel" in sys.modules:
        how = f'main(["--resume", "--out_dir", "{cfg.out_dir}"])'
    elif world_size > 1:
        how = f"torchrun --standalone --nproc_per_node N gpt.py --resume --out_dir {cfg.out_dir}"
    else:
        how = f"python gpt.py --resume --out_dir {cfg.out_dir}"
    say(f"saved {cfg.out_dir}/ckpt.pt at iter {run.iter}; continue with: {how}")

# ------------------------------------------------------------ compile and the fast paths
def compiles(cfg, device):  # by default only on CUDA on Linux, where it pays off
    if cfg.compile is None:
        return device.type == "cuda" and sys.platform == "linux"
    return cfg.compile

def fast_paths(model, device, dtype, cfg, data):
    """TF32, autocast (+ a GradScaler for float16), torch.compile and, under torchrun, DDP, tried on a
    real batch (if compiling fails: eager), for train() and bench.py; on a CPU also a step's time."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # training and eval forwards, undone: the RNG and gradients stay as they were
    def trial(step_model):
        t0 = time.perf_counter()
        # get_batch(..., None) draws from torch's generator, which fork_rng restores (GPU's too)
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
                batch = get_batch(data, cfg.batch_size, cfg.block_size, None)
                batch = micro_batches(batch, cfg.grad_accum, device)
                next_token_loss(step_model(batch[0][0]), batch[0][1]).backward()
                with torch.no_grad():  # eval's graph: compiled now, not at the first eval
                    step_model.eval()
                    step_model(batch[0][0])
        finally:
            step_model.train()
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0
    step_model = None
    if compiles(cfg, device):
        torch._dynamo.reset()  # a second model in one process (a notebook, bench.py) starts afresh
        try:  # compiled, then wrapped: dynamo sees DDP's forward and splits backward at its buckets
            step_model = wrap(torch.compile(model), device)
            trial(step_model)
        except Exception as e:
            reason = "".join(str(e).splitlines()[:1])[:200]
            say(f"warning: torch.compile failed, training without it: {reason}")
            step_model = None
    if step_model is None:
        step_model = wrap(model, device)
    if device.type != "cpu":
        return step_model, autocast, scaler, None
    # The first trial warms up; on a CPU the faster of two times a step, for the cost estimate.
    return step_model, autocast, scaler, min(trial(step_model), trial(step_model))

def wrap(model, device):  # under torchrun, even with one process: the whole DDP and NCCL path runs
    if not dist.is_initialized():
        return model
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

# ------------------------------------------------------------ memory and the cost of a run
def check_memory(cfg, device, dtype):
    """Refuse a training step that cannot fit, before allocating it; warn near the limit. Counted,
    as measured on a CPU: 16 bytes a parameter (weights, grads, AdamW); 100 per token, layer and
    channel (64 in half precision); 12 per logit; no flash attention (MPS): B·nh·T² a layer."""
    C, L, T, V = cfg.n_embd, cfg.n_layer, cfg.block_size, cfg.vocab_size
    B = cfg.batch_size // int(os.environ.get("WORLD_SIZE", 1)) // cfg.grad_accum  # a micro-batch
    kept = 100 if dtype == torch.float32 else 64  # bytes per token, layer and channel
    need = 16 * (12 * L * C * C + (V + T) * C) + B * T * (L * C * kept + 12 * V)
    if device.type == "mps":
        need += 12 * B * cfg.n_head * T * T * L
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    elif hasattr(os, "sysconf"):  # a Mac's GPU shares this memory
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        have = math.inf
    needs = f"a training step needs about {need / 2**30:.1f} GB of the {have / 2**30:.1f} GB here"
    if need > have:
        raise GPTError(f"{needs}: lower --batch_size or --block_size, or raise --grad_accum")
    if need > 0.6 * have:
        say(f"warning: {needs}; if it runs out, lower --batch_size or raise --grad_accum")

def say_what_runs(cfg, device, dtype, model, splits, world_size):
    where = device.type
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    if world_size > 1:
        where += f" x {world_size} processes"
    compiling = "on" if compiles(cfg, device) else "off"
    say(f"device {where} | dtype {str(dtype)[6:]} | compile {compiling}"
        f" | {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters | vocab {cfg.vocab_size}"
        f" | train {len(splits['train']):,} tokens | val {len(splits['val']):,} tokens")

def say_cost(step_s, cfg, start_iter):
    """On a CPU, what the whole run will cost, from one timed step: before the first (slow) eval."""
    step_s *= cfg.grad_accum  # the trial timed one micro-batch
    evals = (cfg.max_iters - start_iter) // cfg.eval_interval + 1  # each: 2 x eval_iters forwards
    total = step_s * (cfg.max_iters - start_iter + evals * cfg.eval_iters * 2 / 3)
    hint = "; --config tiny trains in minutes" if total > 1800 else ""
    say(f"one step takes {step_s:.2f} s on this CPU: the whole run {in_words(total)}{hint}")

def in_words(s):  # a duration in seconds, as people say it
    minutes = round(s / 60)
    if s < 60:
        return "under a minute"
    if minutes > 90:
        return f"about {s / 3600:.1f} hours"
    return f"about {minutes} minute{'s' * (minutes > 1)}"

# ------------------------------------------------------------ evaluation and the progress line
@torch.no_grad()
def estimate_loss(model, splits, cfg, autocast, device, masks=None):
    """Each split's mean loss over the same eval_iters batches every time (per process: a share)."""
    model.eval()
    totals = []
    for name, data in splits.items():
        generator, total = torch.Generator().manual_seed(cfg.seed + 1), 0.0
        for _ in range(cfg.eval_iters):
            batch = get_batch(data, cfg.batch_size, cfg.block_size, generator, (masks or {}).get(name))
            for x, y in micro_batches(batch, cfg.grad_accum, device):
                with autocast:
                    total += next_token_loss(model(x), y).float()
        totals.append(total)
    totals, (_, world_size) = torch.stack(totals), processes()
    if world_size > 1:
        dist.all_reduce(totals)
    model.train()
    count = cfg.eval_iters * cfg.grad_accum * world_size  # micro-batch means, over all processes
    return {name: total / count for name, total in zip(splits, totals.tolist())}

def evaluate(model, splits, cfg, autocast, device, run, masks=None):
    """Print and log both splits' loss (BPE: also val per character); True for the best val yet."""
    dt, tokens = time.perf_counter() - run.since_time, (run.iter - run.since_iter) * cfg.batch_size
    train, val = estimate_loss(model, splits, cfg, autocast, device, masks).values()
    notes = ""
    if run.per_char != 1:  # BPE: comparable with a char model
        notes += f" ({val * run.per_char:.4f} per character)"
    if masks and masks["val"] is not None:
        notes += " (on the answers' tokens)"
    say(f"eval at step {run.iter}: train loss {train:.4f} | val loss {val:.4f}{notes}")
    elapsed = run.elapsed + time.perf_counter() - run.start
    run.log.append([run.iter, round(train, 4), round(val, 4), get_lr(max(run.iter - 1, 0), cfg),
                    round(tokens * cfg.block_size / dt), round(elapsed, 1)])
    best = val < run.best_val_loss
    run.best_val_loss = min(val, run.best_val_loss)
    run.since_iter, run.since_time = run.iter, time.perf_counter()  # the next stretch starts
    return best

def report(loss, lr, cfg, run, world_size):
    """The progress line. The loss is the whole batch's: a NaN on any process stops them all."""
    if world_size > 1:
        dist.all_reduce(loss)
    loss = loss.item() / world_size
    if not math.isfinite(loss):  # checked before any save: no NaN is ever saved
        raise GPTError(f"loss became {loss} at step {run.iter}; {cfg.out_dir}/ckpt.pt and best.pt keep the last "
                       f"good state; lower --learning_rate (now {cfg.learning_rate})")
    step_s = (time.perf_counter() - run.since_time) / max(run.iter - run.since_iter, 1)
    minutes, seconds = divmod(round((cfg.max_iters - run.iter) * step_s), 60)
    say(f"step {run.iter} / {cfg.max_iters} | loss {loss:.4f} | {step_s * 1000:.0f} ms/step | "
        f"{cfg.batch_size * cfg.block_size / step_s:,.0f} tok/s | lr {lr:.2e} | eta {minutes}m{seconds:02d}s")

# ------------------------------------------------------------ checkpoint files
def save_atomic(obj, path):
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: killed mid-write, the previous file is still whole

def load_checkpoint(path, what_to_do):
    """weights_only: tensors and plain data only, so a stranger's checkpoint runs no code."""
    if not os.path.exists(path):
        raise GPTError(f"no checkpoint at {path}; {what_to_do}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own words would suggest weights_only=False: never safe here
        raise GPTError(f"{path} is not a loadable checkpoint: cut short, not written by torch.save, or holding "
                       "more than tensors and plain data (which gpt.py never runs)") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= ckpt.keys() or "vocab" not in ckpt:
        raise GPTError(f"{path} is not a gpt.py checkpoint (no model, config and vocab in it)")
    return ckpt

def tokenizer_of(ckpt):  # a char model keeps its vocab, a BPE model its tokenizer
    if not ckpt:
        return None
    return make_tokenizer(ckpt.get("tokenizer") or dict(name="char", vocab=ckpt["vocab"]), ckpt.get("chat"))

def save_run(model, optimizer, scaler, batch_generator, tokenizer, cfg, run, best, rank):
    """best.pt (if best), ckpt.pt (all that --resume needs) and log.csv, each written atomically."""
    if rank != 0:
        return
    state = dict(model=model.state_dict(), config=vars(cfg).copy(), iter=run.iter,
                 best_val_loss=run.best_val_loss, vocab=getattr(tokenizer, "vocab", None), chat=tokenizer.chat)
    if not isinstance(tokenizer, CharTokenizer):
        state["tokenizer"] = tokenizer.spec
    if best:
        save_atomic(state, os.path.join(cfg.out_dir, "best.pt"))
    rng = dict(torch=torch.get_rng_state(), batch=batch_generator.get_state())
    if torch.cuda.is_initialized():  # the GPU's dropout stream: resume draws the same masks
        rng["cuda"] = torch.cuda.get_rng_state()
    everything = dict(state, optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), rng=rng, log=run.log)
    save_atomic(everything, os.path.join(cfg.out_dir, "ckpt.pt"))
    path = os.path.join(cfg.out_dir, "log.csv")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(",".join(map(str, row)) + "\n" for row in [LOG_COLUMNS, *run.log])
    os.replace(path + ".tmp", path)

def restore(model, optimizer, scaler, batch_generator, run, resume, init, rank):
    """--resume: everything ckpt.pt holds. --init_from: the weights only (for a char model whose data
    has new characters, their embeddings start fresh)."""
    if init:
        weights = dict(init["model"])
        old = weights["transformer.wte.weight"]
        new = model.transformer.wte.weight.detach().cpu().clone()  # fresh rows for new characters
        new[:len(old)] = old  # the new characters' ids come after the old ones
        weights["transformer.wte.weight"] = weights["lm_head.weight"] = new
        model.load_state_dict(weights)
    if not resume:
        return
    if len(resume["model"]["transformer.wte.weight"]) != model.config.vocab_size:
        raise GPTError(f"--resume: the data has {model.config.vocab_size} tokens, the model "
                       f"{len(resume['model']['transformer.wte.weight'])}; grow a vocabulary with --init_from")
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    if "scaler" in resume:  # float16: the loss scale it had found, not 65,536 again
        scaler.load_state_dict(resume["scaler"])
    if rank == 0:  # the others' dropout keeps its own seed
        torch.set_rng_state(resume["rng"]["torch"])
        if "cuda" in resume["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(resume["rng"]["cuda"])
    batch_generator.set_state(resume["rng"]["batch"])
    run.iter, run.best_val_loss, run.log = resume["iter"], resume["best_val_loss"], resume["log"]
    run.elapsed = run.log[-1][-1]  # seconds trained before (every saved run has evaluated step 0)

def claim_out_dir(out_dir, fresh):
    """Before any work: a fresh run never replaces a model, and the folder must be writable. Returns
    whether it made the folder (a run that fails before saving anything removes it again)."""
    for path in (os.path.join(out_dir, "best.pt"), os.path.join(out_dir, "ckpt.pt")):
        if fresh and os.path.exists(path):
            c = load_checkpoint(path, "")
            what = f"n_layer {c['config']['n_layer']}, n_embd {c['config']['n_embd']}, step {c['iter']}"
            raise GPTError(f"{out_dir} already holds a model ({what}, best val loss {c['best_val_loss']:.4f}); "
                           "continue it with --resume, train into another --out_dir, or replace it with "
                           "--overwrite")
    made = not os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test{os.environ.get('RANK', '')}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise GPTError(f"output folder {out_dir} is not writable ({e.strerror})") from None
    return made

# ------------------------------------------------------------ sampling from the command line, --verbose
def model_from(ckpt, device):
    config = {**DEFAULTS, **ckpt["config"]}  # a checkpoint from before "gelu" existed is exact
    model = GPT(GPTConfig(**{k: config[k] for k in MODEL_KEYS})).to(device).eval()
    model.load_state_dict(ckpt["model"])  # copies the weights onto the model's device
    # MPS's one-query attention kernel has given wrong results (pytorch issues 163597, 169222)
    for block in model.transformer.h:
        block.attn.by_hand = device.type == "mps"  # the formula instead
    return model

def sample(cfg):
    """Stream text from best.pt to stdout and all else to stderr (so `> poem.txt` keeps the poem).
    --verbose: first a line per new token with the five likeliest, then the whole text."""
    path = os.path.join(cfg.out_dir, "best.pt")
    ckpt = load_checkpoint(path, f"train one: python gpt.py --config tiny --out_dir {cfg.out_dir}")
    device, _ = pick_device(cfg.device)
    model, tokenizer = model_from(ckpt, device), tokenizer_of(ckpt)
    # BPE writes any character, a char model its own
    newline = "\n" in tokenizer.spec.get("vocab", "\n")
    prompt = cfg.prompt or ("\n" if newline else tokenizer.vocab[0])
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)  # (1, T)
    print(f"sampling {path} (step {ckpt['iter']}, val loss {ckpt['best_val_loss']:.4f}, {device})",
          file=sys.stderr)
    generator, t0 = torch.Generator().manual_seed(cfg.seed), time.perf_counter()
    for i in range(cfg.num_samples):
        if i:
            print("\n---", flush=True)
        if cfg.verbose:
            print("step | chosen | the five likeliest and their probabilities")
        else:
            print(prompt, end="", flush=True)
        ids, shown = [], 0  # shown: how many of the ids are printed
        tokens = generate(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator)
        for step, (next_id, probs) in enumerate(tokens, start=1):
            ids.append(next_id.item())
            if cfg.verbose:
                print(f"{step:4d} | {tokenizer.decode(ids[-1:])!r:>6} | {likeliest(tokenizer, probs[0])}")
                continue
            text = tokenizer.decode(ids[shown:])
            if not text.endswith("\ufffd"):  # whole characters only
                print(text, end="", flush=True)
                shown = len(ids)
        if cfg.verbose:
            print(prompt, end="")
        print(tokenizer.decode(ids[shown:]), end="")
    print(flush=True)
    n, seconds = cfg.max_new_tokens * cfg.num_samples, time.perf_counter() - t0
    print(f"{n} tokens in {seconds:.2f}s ({n / seconds:,.0f} tokens/s)", file=sys.stderr)
    return 0

def likeliest(tokenizer, probs, k=5):  # as literals ('\n'), their probabilities to 3 digits
    p, top = probs.topk(min(k, probs.size(-1)))
    return "  ".join(f"{tokenizer.decode([t])!r} {q:.3g}" for q, t in zip(p.tolist(), top.tolist()) if q)

def write_a_taste(cfg):  # the end of a training run: 300 characters from best.pt
    taste = dict(max_new_tokens=300, num_samples=1, prompt="", verbose=False)
    return sample(argparse.Namespace(**{**vars(cfg), **taste}))

# ------------------------------------------------------------ the command line
def boolean(text):  # nanoGPT's habits: --compile, --compile=True, --compile False
    return ("true", "false").index(text.lower()) == 0  # else argparse reports the ValueError

FLAGS = dict(  # what each flag does; --help adds its default, or each preset's value
    config="the preset; the flags below override its fields", out_dir="for checkpoints, log.csv",
    data="a UTF-8 text file, or a folder scripts/prepare.py wrote", device="auto: CUDA, MPS, CPU",
    init_from="a best.pt or ckpt.pt to start from: its weights, shape and tokenizer",
    dtype="auto: bfloat16 where the chip computes it natively, float16 on older GPUs, else float32",
    compile="torch.compile the model (default: on for CUDA on Linux)", n_layer="transformer blocks",
    n_head="attention heads", n_embd="width of the residual stream", block_size="context (tokens)",
    batch_size="sequences per step, all processes", max_iters="optimizer steps",
    grad_accum="micro-batches per step: less memory, the same training", warmup_iters="steps",
    learning_rate="peak learning rate", min_lr="learning rate at the end of the cosine decay",
    lr_decay_iters="steps of cosine decay (default: max_iters)", dropout="while training",
    weight_decay="AdamW's, on matrices and embeddings", grad_clip="clip the gradient norm (0: off)",
    eval_interval="steps between evals and checkpoints", eval_iters="batches per eval",
    log_interval="steps between progress lines", seed="for the init, the batches and sampling",
    prompt="--sample: the text to go on from", max_new_tokens="--sample, --chat: tokens to write",
    temperature="--sample: below 1 safer, above 1 wilder, 0 greedy", num_samples="--sample: texts",
    top_k="--sample: draw from the k likeliest only")
CHOICES = dict(config=PRESETS, device=("auto", "cpu", "cuda", "mps"),
               dtype=("auto", "float32", "bfloat16", "float16"))
KINDS = dict(compile=boolean)  # the type of each flag's value; the others' are int
KINDS.update(dict.fromkeys(("learning_rate", "min_lr", "weight_decay", "grad_clip", "dropout", "temperature"), float))
KINDS.update(dict.fromkeys(("config", "data", "init_from", "out_dir", "device", "dtype", "prompt"), str))
POSITIVE = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "eval_interval",
            "eval_iters", "log_interval", "max_new_tokens", "num_samples", "top_k", "grad_accum",
            "learning_rate")

def exit_quietly(message):  # under torchrun every process finds the same usage error: process 0
    time.sleep(3)  # says it, while the others wait before they exit
    sys.exit(2)

def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpt.py", description="Train a GPT on a text, or --sample, or --chat.",
                                argument_default=argparse.SUPPRESS, allow_abbrev=False)
    if int(os.environ.get("RANK", "0")):
        p.error = exit_quietly
    p.add_argument("--sample", action="store_true", default=False, help="write from best.pt")
    p.add_argument("--resume", action="store_true", default=False, help="continue ckpt.pt")
    p.add_argument("--overwrite", action="store_true", default=False, help="replace out_dir's model")
    p.add_argument("--verbose", action="store_true", help="--sample: each step's likeliest tokens")
    for name, text in FLAGS.items():
        kind, presets = KINDS.get(name, int), "/".join(str(c.get(name)) for c in PRESETS.values())
        if name in PRESETS["tiny"]:
            text += f" (tiny/small/medium: {presets})"
        elif DEFAULTS.get(name):
            text += f" (default: {DEFAULTS[name]})"
        metavar = {int: "N", float: "F", boolean: "BOOL"}.get(kind)  # else --data DATA
        optional = dict(nargs="?", const=True) if kind is boolean else {}
        p.add_argument(f"--{name}", type=kind, choices=CHOICES.get(name), metavar=metavar, help=text,
                       **optional)
    given = argparse.Namespace()
    # a prompt may look like a flag ("-x", "--"): it goes around argparse
    if "--prompt" in argv[:-1]:
        at = argv.index("--prompt")
        given.prompt, argv = argv[at + 1], [*argv[:at], *argv[at + 2:]]
    args, unknown = p.parse_known_args(argv, given)
    if unknown and "ipykernel" not in sys.modules:  # a notebook kernel's own: -f kernel.json
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    for name, value in vars(args).items():  # sizes must be > 0; counts, rates and the seed >= 0
        if type(value) not in (int, float):
            continue
        if not math.isfinite(value) or value < 0 or value == 0 and name in POSITIVE:
            p.error(f"argument --{name}: must be {'>' if name in POSITIVE else '>='} 0, got {value}")
    if getattr(args, "dropout", 0) >= 1:
        p.error(f"argument --dropout: must be < 1, got {args.dropout}")
    return p, args

def settings(args, parser):
    """The run's settings, weakest first: the defaults, a checkpoint's, the preset's, the flags."""
    given = {k: v for k, v in vars(args).items() if k not in ("sample", "resume", "overwrite")}
    resume = init = None
    if args.resume:
        resume = load_checkpoint(os.path.join(given.get("out_dir", "out"), "ckpt.pt"),
                                 "--resume continues a run: start one without --resume first")
    elif given.get("init_from"):
        init = load_checkpoint(given["init_from"], "--init_from needs a gpt.py checkpoint")
    saved = (resume or init or {}).get("config", {})
    if init:  # its model and training settings, not its data, folder or device
        saved = {k: v for k, v in saved.items() if k in MODEL_KEYS or k in PRESETS["tiny"]}
    preset = given.get("config", None if saved else DEFAULTS["config"])
    cfg = argparse.Namespace(**{**DEFAULTS, **saved, **PRESETS.get(preset, {}), **given})
    if cfg.n_embd % cfg.n_head:
        parser.error(f"--n_embd {cfg.n_embd} is not divisible by --n_head {cfg.n_head}: heads need equal "
                     "shares")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    if cfg.batch_size % (world_size * cfg.grad_accum):
        parser.error(f"--batch_size {cfg.batch_size} is not divisible by {world_size} processes x --grad_accum "
                     f"{cfg.grad_accum}: every micro-batch must have one size")
    differ = [f"{k} {saved[k]} -> {getattr(cfg, k)}" for k in SHAPE if saved and saved[k] != getattr(cfg, k)]
    if differ:
        raise GPTError(f"{'--resume' if resume else '--init_from'}: the flags change the model "
                       f"({', '.join(differ)}); drop them, or train anew in another --out_dir")
    return cfg, resume, init

def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    parser, args = parse_args(argv)
    # the output folder, if this run made it: one that fails before saving anything removes it
    made = None
    try:
        if args.sample:
            return sample(argparse.Namespace(**{**DEFAULTS, **vars(args)}))
        cfg, resume, init = settings(args, parser)
        if claim_out_dir(cfg.out_dir, fresh=not resume and not args.overwrite):
            made = cfg.out_dir
        return train(cfg, resume, init)
    except GPTError as e:
        say(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if made and os.path.isdir(made) and not os.listdir(made):
            os.rmdir(made)

if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE") and "ipykernel" not in sys.modules:  # `| head`: end quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    code = main()
    if code and "ipykernel" not in sys.modules:  # in a notebook, SystemExit only prints a warning
        sys.exit(code)
