"""
gpt.py: a GPT to read top to bottom, then train from scratch on your own machine.

    python gpt.py --config tiny     # 0.44M parameters: a few minutes on a laptop CPU
    python gpt.py --sample          # Shakespeare-shaped text from out/best.pt
    torchrun --standalone --nproc_per_node 4 gpt.py   # nanoGPT's shakespeare_char (10.8M), 4 GPUs

GPT-2, small: it reads text as tokens (here a character each) and learns to guess the next one;
its parameters are the numbers learning adjusts. The lesson comes first, in a run's order: the text,
batches, the model, the loss, the optimizer, a training step, writing. The machinery after it (its
headers say so) makes it fast and dependable: skip to the training loop at first. Each name is
defined before it is used. microgpt.py: the same in plain Python, even .backward() and AdamW.
"""
import argparse, difflib, gc, json, math, os, pathlib, signal, sys, tempfile, time, urllib.request
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
try:  # torch takes seconds to load: a Ctrl-C meanwhile ends quietly, as it does later
    import numpy as np  # a text's tokens, and memory maps of big ones
    import torch  # arrays of numbers (tensors) on any device, their gradients, a model's parts
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.distributed as dist  # torchrun only: several processes training one model
    from torch.nn.parallel import DistributedDataParallel as DDP
except KeyboardInterrupt:
    sys.exit(130)

# ------------------------------------------------------------ settings
# Each setting is a flag (--n_layer 4), explained where it runs: n_layer, n_head, n_embd and dropout
# in the model, batch_size and block_size in batches, the learning rates with the optimizer, the
# iters in the training loop. tiny and small suit a 2-core CPU; medium (nanoGPT's) wants a GPU.
PRESETS = dict(
    tiny=dict(n_layer=2, n_head=2, n_embd=128, dropout=0.0, batch_size=16, max_iters=1500,
        eval_interval=250, eval_iters=40, learning_rate=5e-3, min_lr=5e-4, warmup_iters=50),
    small=dict(n_layer=4, n_head=4, n_embd=256, dropout=0.1, batch_size=16, max_iters=1200,
        eval_interval=200, eval_iters=20, learning_rate=3e-3, min_lr=3e-4, warmup_iters=50),
    medium=dict(n_layer=6, n_head=6, n_embd=384, dropout=0.2, batch_size=64, max_iters=5000,
        eval_interval=250, eval_iters=20, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100))
DEFAULTS = dict(  # what every preset shares; a flag overrides any of these, or a preset's
    config="medium", data="shakespeare.txt", out_dir="out", device="auto", dtype="auto",
    init_from="", compile=None,  # a checkpoint to start from; torch.compile: see fast_model
    block_size=256, grad_accum=1, lr_decay_iters=None,  # context length; see train_step, get_lr
    weight_decay=0.1, grad_clip=1.0, seed=1337, log_interval=10, gelu="exact",  # the optimizer, MLP
    prompt="", max_new_tokens=500, temperature=0.8, top_k=None, num_samples=1)  # writing new text
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "gelu", "vocab_size")  # a model's shape
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

class GPTError(Exception):  # a problem the user can fix: main prints it as one line, no traceback
    pass

def say(*args, **kwargs):  # under torchrun (many processes), process 0 speaks for all
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)

# ------------------------------------------------------------ the text and its characters
class CharTokenizer:
    """Each distinct character is a token, numbered in sorted order: encode turns text into ids."""
    def __init__(self, vocab):  # the characters in id order, one string (as checkpoints keep it)
        self.vocab, self.vocab_size, self.spec = vocab, len(vocab), dict(name="char", vocab=vocab)
        self.stoi = {ch: i for i, ch in enumerate(vocab)}
    def encode(self, s):
        unknown = "".join(sorted(set(s) - self.stoi.keys()))
        if unknown:
            raise GPTError(f"characters not in the model's vocabulary: {unknown!r} (it knows {self.vocab!r})")
        return [self.stoi[ch] for ch in s]
    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)

@dataclass
class Data:
    """Tokens to learn from (train) and to measure on (val: never learned from, so it shows
    overfitting, a model learning the training text by heart instead of what carries over)."""
    tokenizer: object  # a CharTokenizer, or a BPETokenizer (byte-pair encoding, in the machinery)
    splits: dict  # "train" and "val": token ids, a numpy array or a prepared folder's memory map
    masks: dict  # the same keys: None, or for conversations 1 where a token is part of an answer
    per_char: float = 1.0  # val tokens per character: a per-token loss times this is per character
    chat: dict = None  # conversations: the template they are written in (scripts/prepare.py)

def read_text(path, tokenizer=None):  # read whole: its characters are the tokens (or a model's own)
    text = pathlib.Path(path).read_bytes().decode("utf-8")
    tokenizer = tokenizer or CharTokenizer("".join(sorted(set(text))))
    n = int(0.9 * len(text))  # the first 90% to learn from, the last 10% to measure on
    splits = dict(train=np.array(tokenizer.encode(text[:n]), dtype=np.int64),
                  val=np.array(tokenizer.encode(text[n:]), dtype=np.int64))
    return Data(tokenizer, splits, dict(train=None, val=None), len(splits["val"]) / max(len(text) - n, 1))

# ------------------------------------------------------------ batches
# PyTorch in brief: a tensor is an array of numbers (on the CPU or a GPU) that remembers how it was
# computed, so that its gradients (how the loss changes as each number moves) can be found.
def get_batch(data, split, batch_size, block_size, generator):
    """B = batch_size windows of T = block_size tokens at random places: inputs x, targets y, (B, T)
    each. A target is the token after its input, y is x shifted by one: one window, T guesses."""
    tokens, mask = data.splits[split], data.masks[split]
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)  # (B,)
    at = (starts[:, None] + torch.arange(block_size + 1)).numpy()  # (B, 1) + (T+1,) -> (B, T+1)
    window = torch.from_numpy(tokens[at].astype(np.int64))  # of a memory map, only these are read
    x = window[:, :-1].contiguous()  # (B, T)
    y = window[:, 1:].clone()  # (B, T), a copy and not a view: masking y below must leave x alone
    if mask is not None:  # conversations (scripts/prepare.py): learn to answer, not to ask
        y[torch.from_numpy(mask[at[:, 1:]] == 0)] = -1  # the loss skips targets of -1
    return x, y

# ------------------------------------------------------------ the model
# An nn.Module holds parameters (tensors that training adjusts) and smaller modules; calling it,
# module(x), runs its forward(x). nn.Linear(n_in, n_out) computes x @ weight.T + bias (@: matrix
# multiplication, a matmul): each output a weighted sum of all inputs. microgpt.py: linear().
@dataclass
class GPTConfig:
    vocab_size: int = 63  # distinct tokens, always set from the data (the shakespeare.txt here: 63)
    block_size: int = 256  # the longest context the model sees, in tokens (T at most)
    n_layer: int = 6  # blocks, one after another
    n_head: int = 6  # nh; each head works in head_dim = n_embd // n_head numbers (hs, head size)
    n_embd: int = 384  # C, the numbers describing each token: the residual stream's width (Block)
    dropout: float = 0.2  # zero that share of numbers at random while training, against overfitting
    gelu: str = "exact"  # or "tanh", GPT-2's approximation (checkpoints from scripts/from_gpt2.py)

class CausalSelfAttention(nn.Module):
    """Each token gathers information from the tokens before it, weighted by how well they match."""
    def __init__(self, config):
        super().__init__()  # nn.Module's own set-up comes first
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v of all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)  # proj: the heads' results, mixed
        self.resid_dropout = nn.Dropout(config.dropout)
        self.by_hand = False  # the formula below, or PyTorch's fused kernel (the same but rounding)
    def forward(self, x, cache=None):  # cache: only while writing (see generate); skip it at first
        B, T, C = x.size()  # batch, time (positions), channels
        # Each token asks a query (what am I looking for?), offers a key (what do I hold?) and a
        # value (what I pass on if chosen), in nh heads: smaller attentions, each free to look for
        # something else. view cuts each token's C numbers into nh heads of hs; transpose(1, 2) puts
        # nh beside B, so each head is one more batch and one matmul serves them all.
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:  # writing: earlier tokens' keys and values are kept, not recomputed
            if cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v  # (B, nh, Tk, hs)
        Tk = k.size(2)  # the keys: while training Tk == T (read Tk as T); a cache adds earlier ones
        # Two routes to the same numbers: the formula (read this one; microgpt.py's loop), or the
        # fused call where faster; it can't mask a few new tokens after a cache: there, the formula
        if self.by_hand or T not in (1, Tk):  # softmax(q @ k.T / sqrt(hs)) @ v
            # how well each query matches each key; / sqrt(hs) keeps their spread near 1, any hs
            att = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))  # (B, nh, T, Tk)
            # Causal: no token may see those after it, the ones it learns to guess. All positions
            # run at once, so a mask hides the later keys (microgpt.py's gpt() runs one position at
            # a time: it needs none). Training: query i sees keys 0..i, a lower triangle, tril(0).
            # With a cache, the T queries are the last of Tk keys: the triangle shifts, tril(Tk - T)
            causal = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(Tk - T)  # (T, Tk)
            att = att.masked_fill(~causal, float("-inf"))  # ~: not; exp(-inf) is 0 below
            att = F.softmax(att, dim=-1)  # each row: weights over the keys, summing to 1
            self.att = None if self.training else att  # for looking inside (scripts/serve.py)
            y = att @ v  # (B, nh, T, Tk) x (B, nh, Tk, hs) -> (B, nh, T, hs): the values, weighted
        else:  # fused: one kernel that never stores att; is_causal: the mask, never built
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T == Tk)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side, copied so for view
        return self.resid_dropout(self.c_proj(y))

class MLP(nn.Module):
    """Multi-layer perceptron: each position alone, its C numbers widened to 4C, bent, narrowed."""
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)  # fc: fully connected
        # GELU(x) = x * P(normal < x): x above 0, 0 far below, smooth between; without a bend the
        # Linears would add up to one. Exact erf, as microgpt.py; GPT-2's own weights learned tanh
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
    def forward(self, x):  # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        # LayerNorm: each token's numbers to mean 0, variance 1, then a learned gain and bias
        self.ln_1 = nn.LayerNorm(config.n_embd)  # eps 1e-5, biased variance (÷ n): as in GPT-2
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
    def forward(self, x, cache=None):
        # x is the residual stream: each sublayer reads it and adds to it (refines, not replaces)
        x = x + self.attn(self.ln_1(x), cache)  # tokens look at earlier tokens
        x = x + self.mlp(self.ln_2(x))  # each position is transformed on its own, no mixing
        return x

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(  # GPT-2's names: other GPT-2 tools read the weights
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding: a vector per id
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding: one per place
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),  # h: the hidden blocks
            ln_f=nn.LayerNorm(config.n_embd)))  # f: final
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # lm: language model
        self.lm_head.weight = self.transformer.wte.weight  # tied: one vector per token, in and out
        # Small random weights (microgpt.py's init_state_dict; normal_: in place; LayerNorms keep
        # gains 1, biases 0). Each block adds two c_proj to the stream: smaller, lest it swell deep.
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("c_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
    def forward(self, idx, cache=None):  # (B, T) ids -> (B, T, vocab_size) logits; microgpt: gpt()
        B, T = idx.size()
        start = cache[0]["k"].size(2) if cache and cache[0] else 0  # positions a cache holds
        assert start + T <= self.config.block_size, f"{start + T} positions > block_size"
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B,T,C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i])
        # logits: a score for every possible next token; softmax turns them into probabilities
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)

# ------------------------------------------------------------ the loss
def next_token_loss(logits, targets, reduction="mean"):
    """Cross-entropy: -log(the probability the model gave the true next token), averaged over the
    positions: a fresh model bets evenly, ln(vocab_size), 4.14 for 63; a perfect one scores 0.
    Targets of -1 are skipped (get_batch)."""
    # F.cross_entropy takes the softmax itself (microgpt.py's next_token_loss writes it out);
    # flatten(0, 1): (B, T, vocab_size) -> (B*T, vocab_size), a row per guess
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=reduction)

# ------------------------------------------------------------ the optimizer and the learning rate
# The optimizer turns each parameter p's gradient g (one training step finds it) into a change of
# p; lr, the learning rate, sets the size of that step. AdamW at step t, as microgpt.py's adamw_step
# writes it out number by number:
#   p = p - lr * weight_decay * p      AdamW's W: weight decay, a pull towards 0 against overfitting
#   m = 0.9 * m + 0.1 * g              the gradient's running mean: its direction, smoothed
#   v = 0.99 * v + 0.01 * g * g        its square's running mean: how large it tends to be
#   p = p - lr * (m / (1 - 0.9**t)) / (sqrt(v / (1 - 0.99**t)) + 1e-8)   the divisions undo m's
#   and v's start at 0; m ~ g and sqrt(v) ~ |g|, so each move is about lr, whatever g's scale
def make_optimizer(model, cfg, device):
    # Decay matrices and embeddings (2+ dims) only, not biases and gains: few, and a gain at 0 mutes
    params = list(model.parameters())  # unique: the tied matrix appears once
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg.weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    fused = device.type == "cuda"  # on a GPU one kernel updates every tensor at once
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99), eps=1e-8, fused=fused)

def get_lr(it, cfg):
    """Linear warmup (random init gives wild first gradients; + 1: step 0 moves already), then a
    cosine, 0.5 * (1 + cos(pi * progress)) going 1 -> 0: big steps early, then settling to min_lr"""
    decay_iters = cfg.max_iters if cfg.lr_decay_iters is None else cfg.lr_decay_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / (decay_iters - cfg.warmup_iters)  # 0 -> 1
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)

# ------------------------------------------------------------ one training step
def train_step(model, optimizer, scaler, autocast, batches, lr, grad_clip, n_targets):
    """One step of learning. Without its wrappers (marked below) it is five lines:
        loss = next_token_loss(model(x), y)                      # 1. how wrong the guesses are
        loss.backward()                                          # 2. each parameter's gradient
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # 3. no step too long
        optimizer.step()                                         # 4. AdamW moves the parameters
        optimizer.zero_grad()                                    # 5. clear the gradients"""
    for group in optimizer.param_groups:
        group["lr"] = lr  # this step's learning rate (get_lr)
    total = 0.0
    # Wrapper: the batch may come in pieces (--grad_accum: less memory; torchrun: each process its
    # share), each piece's summed loss / the step's targets: they add up to the step's mean
    for i, (x, y) in enumerate(batches):
        last = i == len(batches) - 1 or not isinstance(model, DDP)
        with nullcontext() if last else model.no_sync():  # wrapper: DDP averages the grads once
            with autocast:  # wrapper: lower precision, or nothing
                loss = next_token_loss(model(x), y, reduction="sum") / n_targets  # 1.
            # 2. Backward: for each parameter, how much the loss would change if it moved a little,
            # d(loss)/d(parameter), added into its .grad. The chain rule: for loss = (w*x - y)**2,
            # d(loss)/dw = 2*(w*x - y) * x, local derivatives multiplied back from the loss through
            # each operation, as microgpt.py's Value.backward does number by number.
            scaler.scale(loss).backward()  # (wrapper: float16 scales it up, lest small grads be 0)
        total += loss.detach()  # its value alone, without the history of how it was made
    scaler.unscale_(optimizer)  # float16: the true gradients again
    # 3. All gradients as one long vector: if longer than grad_clip, all shrink alike (a freak batch
    # must not undo hours of training; 0: off). The _ ending the name: it changes them in place.
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)  # 4. optimizer.step(); float16: skipped if the gradients overflowed
    scaler.update()  # float16: a lower scale after an overflow
    optimizer.zero_grad(set_to_none=True)  # 5. backward adds into .grad: clear it for the next step
    return total

# ------------------------------------------------------------ writing new text
def draw(logits, temperature, top_k, generator):
    """The next token's id (B, 1) from the model's scores (B, vocab_size), and its probabilities."""
    logits = logits - logits.amax(dim=-1, keepdim=True)  # largest 0: same odds, no exp overflow
    # Temperature divides the scores: below 1 the likeliest grow likelier (safer text), above 1
    # the rest catch up (wilder text). 0 is greedy: the likeliest every time (odds shown at 1).
    if temperature > 0:
        logits = logits / max(temperature, 1e-30)  # 1e-50 would round to 0 in float32: x / 0 is nan
    if top_k is not None:  # only the k likeliest may be drawn: the long tail of unlikely tokens,
        # drawn surprisingly often all together, is cut (score -inf, probability 0)
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1), k-th
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # the scores as probabilities: exp(score) / their sum
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True), probs
    probs = probs.cpu()  # drawn on the CPU: one seed gives one text on any device
    # multinomial: one id per row, each with its probability (random.choices in microgpt.py)
    return torch.multinomial(probs, 1, generator=generator).to(logits.device), probs

@torch.no_grad()  # writing learns nothing: no gradients
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_cache=True):
    """Yield max_new_tokens ids (B, 1) after idx (B, T), each with the probabilities it had."""
    block_size, start, cache = model.config.block_size, 0, None  # the model sees idx[:, start:]
    for _ in range(max_new_tokens):
        # Machinery, skip at first. The model knows block_size positions: past them, the last 3/4
        # block is renumbered from 0 and run afresh, leaving 1/4 block of room. In between, the KV
        # cache keeps the keys and values, and only the newest token goes through the model.
        if idx.size(1) - start > block_size:
            start, cache = idx.size(1) - (block_size - block_size // 4), None
        if cache:
            logits = model(idx[:, -1:], cache=cache)
        else:  # the whole window: to fill a fresh cache, or every time without one
            cache = [{} for _ in model.transformer.h] if use_cache else None
            logits = model(idx[:, start:], cache=cache)
        logits = logits[:, -1, :].float()  # the last position's scores: (B, vocab_size)
        next_id, probs = draw(logits, temperature, top_k, generator)
        idx = torch.cat([idx, next_id], dim=1)  # the drawn token joins the context
        yield next_id, probs

# ============================================================ machinery (skip to the training loop)
# ------------------------------------------------------------ machinery: the device, its precision
def native_cpu_bf16(cpuinfo="/proc/cpuinfo"):  # AMX, AVX-512 BF16: 1.5-2.5x faster; else emulated
    flags = pathlib.Path(cpuinfo).read_text(encoding="utf-8").split() if os.path.exists(cpuinfo) else []
    return not {"amx_bf16", "avx512_bf16"}.isdisjoint(flags)  # (no /proc/cpuinfo: not Linux)

def pick_device(name="auto", dtype="auto"):
    """The device and its precision, decided once; the model reads its device from its inputs."""
    have = dict(cuda=torch.cuda.is_available(), mps=torch.backends.mps.is_available(), cpu=True)
    name = next(d for d in have if have[d]) if name == "auto" else name
    if not have[name]:
        raise GPTError(f"--device {name}: this PyTorch cannot use it here; try --device auto")
    device = torch.device(name, int(os.environ.get("LOCAL_RANK", 0)) if name == "cuda" else None)
    if dtype == "auto" and name == "cuda":  # A100, H100: compute capability 8.0 and up. Not
        # torch.cuda.is_bf16_supported(): it says yes on a T4 or V100, which only emulate bf16.
        dtype = "bfloat16" if torch.cuda.get_device_capability(device) >= (8, 0) else "float16"
    elif dtype == "auto":  # MPS: float32, its half precision is no faster for models this small
        dtype = "bfloat16" if name == "cpu" and native_cpu_bf16() else "float32"
    return device, getattr(torch, dtype)

def mixed_precision(device, dtype):
    """autocast: matmuls in bfloat16 or float16 (float32: none); float16's scaler (train_step)."""
    torch.backends.cuda.matmul.allow_tf32 = device.type == "cuda"  # float32 matmuls on TF32 units
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    return autocast, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

# ------------------------------------------------------------ machinery: big texts, BPE, chats
class BPETokenizer:
    """Byte-level BPE (GPT-2's, or prepare.py's), by tiktoken: unseen characters encode as bytes."""
    def __init__(self, spec):  # the split pattern, and each token's bytes (as latin-1) in id order
        try:  # an optional package, imported only where it is needed
            import tiktoken
        except ImportError:
            raise GPTError('tiktoken is not installed: pip install -e ".[bpe]"') from None
        ranks = {token.encode("latin-1"): i for i, token in enumerate(spec["tokens"])}
        enc = tiktoken.Encoding(spec["name"], pat_str=spec["pattern"], mergeable_ranks=ranks,
                                special_tokens={"<|endoftext|>": len(ranks)})  # between texts
        self.spec, self.vocab_size = spec, len(ranks) + 1
        self.encode, self.decode = enc.encode_ordinary, enc.decode  # a typed <|endoftext|>: text

def make_tokenizer(spec):  # from the plain data that checkpoints and prepared folders keep
    return CharTokenizer(spec["vocab"]) if spec["name"] == "char" else BPETokenizer(spec)

def mapped(folder, name, dtype, count):  # a file of count numbers, memory-mapped
    path = os.path.join(folder, name)
    if not os.path.isfile(path) or os.path.getsize(path) != count * np.dtype(dtype).itemsize:
        raise GPTError(f"data folder {folder} is incomplete: its {name} is missing or cut short; prepare it again")
    return np.memmap(path, dtype, "r") if count else np.zeros(0, dtype)

def read_folder(folder, tokenizer=None):
    """prepare.py's meta.json, train.bin and val.bin (memory-mapped), and chats' *_mask.bin."""
    try:
        meta = json.loads(pathlib.Path(folder, "meta.json").read_text(encoding="utf-8"))
        counts, dtype = dict(train=meta["train"]["tokens"], val=meta["val"]["tokens"]), np.dtype(meta["dtype"])
        data = Data(make_tokenizer(meta["tokenizer"]), {}, dict(train=None, val=None),
                    counts["val"] / max(meta["val"]["characters"], 1), meta.get("chat"))
    except (OSError, ValueError, LookupError, TypeError):  # missing, not JSON, not prepare.py's
        raise GPTError(f"data folder {folder} has no meta.json, or not one scripts/prepare.py wrote") from None
    old, new = (tokenizer or data.tokenizer).spec, data.tokenizer.spec  # a char vocabulary may grow
    if old != new and not (old["name"] == new["name"] == "char" and new["vocab"].startswith(old["vocab"])):
        raise GPTError(f"data folder {folder} was prepared with another tokenizer, not the model's")
    for split, count in counts.items():
        data.splits[split] = mapped(folder, f"{split}.bin", dtype, count)
        if data.chat:
            data.masks[split] = mapped(folder, f"{split}_mask.bin", np.uint8, count)
    return data

def load_data(path, block_size, tokenizer=None):  # --data: a text file or a prepared folder
    if path == DEFAULTS["data"] and not os.path.exists(path):  # beside this file, or downloaded
        path = os.path.join(os.path.dirname(globals().get("__file__", "")), path)  # (a notebook)
        if not os.path.exists(path):
            say(f"downloading tiny-shakespeare (1.1 MB) into {os.path.abspath(path)}")
            try:
                urllib.request.urlretrieve(TINY_SHAKESPEARE_URL, path + ".tmp")
                os.replace(path + ".tmp", path)  # whole or not at all
            except OSError as e:
                raise GPTError(f"{path} not found and downloading it failed ({e}); pass --data PATH") from None
    if os.path.isdir(path):
        data = read_folder(path, tokenizer)
    elif not os.path.isfile(path):
        raise GPTError(f"data file {path} not found (or not a file); pass --data PATH to a UTF-8 text file")
    else:
        try:
            data = read_text(path, tokenizer)
        except UnicodeDecodeError as e:
            raise GPTError(f"data file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})")
        except GPTError as e:  # a char model given a text with characters it never saw
            raise GPTError(f"data file {path}: {e}") from None
    for split, tokens in data.splits.items():  # (an empty file too)
        if len(tokens) < block_size + 1:
            raise GPTError(f"data {path} is too short: its {split} split has {len(tokens)} tokens, "
                           f"fewer than block_size + 1 = {block_size + 1}")
    return data

# ------------------------------------------------------------ machinery: many processes (torchrun)
def my_share(x, y, grad_accum, device):
    """This process's share of the batch (all draw the same one), in grad_accum micro-batches."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mine = slice(rank * grad_accum, (rank + 1) * grad_accum)
    pieces = zip(x.chunk(world_size * grad_accum)[mine], y.chunk(world_size * grad_accum)[mine])
    def to(t):  # to a GPU from pinned memory, without waiting: the copy overlaps the GPU's work
        return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
    return [(to(x), to(y)) for x, y in pieces]

# ------------------------------------------------------------ machinery: evaluation
@dataclass
class Run:
    """Where a training run stands; ckpt.pt keeps it, so that --resume goes on from there."""
    iter: int = 0  # optimizer steps taken
    best_val_loss: float = math.inf  # the lowest val loss so far: best.pt holds those weights
    log: list = field(default_factory=list)  # log.csv's rows, one per eval
    trained_s: float = 0.0  # seconds trained before this process began (by the run it resumes)
    start: float = field(default_factory=time.perf_counter)  # when this process began
    clock: float = field(default_factory=time.perf_counter)  # when the last eval ended (or start),
    clock_iter: int = 0  # and at which step: the speed is measured since then

def check_finite(loss, what, cfg, run):  # before any save: no NaN is ever saved
    if not math.isfinite(loss):
        raise GPTError(f"{what} became {loss} at step {run.iter}; {cfg.out_dir}/ckpt.pt and best.pt keep "
                       f"the last good state; lower --learning_rate (now {cfg.learning_rate})")

@torch.no_grad()
def evaluate(model, data, cfg, autocast, device, run):
    """Each split's mean loss on the same eval_iters batches every time; True if val's is best."""
    model.eval()  # dropout off
    losses = []
    for split in ("train", "val"):
        generator, sums = torch.Generator().manual_seed(cfg.seed + 1), torch.zeros(2, device=device)
        for _ in range(cfg.eval_iters):
            x, y = get_batch(data, split, cfg.batch_size, cfg.block_size, generator)
            for x, y in my_share(x, y, cfg.grad_accum, device):  # torchrun: each process a share
                with autocast:
                    sums[0] += next_token_loss(model(x), y, reduction="sum").float()
                sums[1] += (y != -1).sum()  # the targets: a batch without any adds nothing
        if dist.is_initialized():
            dist.all_reduce(sums)
        losses.append((sums[0] / sums[1]).item())
    model.train()
    train_loss, val = losses
    check_finite(val, "the val loss", cfg, run)
    per_char = f" ({val * data.per_char:.4f} per character)" if data.per_char != 1 else ""  # BPE's
    answers = " (on the answers' tokens)" if data.chat else ""
    say(f"eval at step {run.iter}: train loss {train_loss:.4f} | val loss {val:.4f}{per_char}{answers}")
    now = time.perf_counter()
    tokens_per_s = (run.iter - run.clock_iter) * cfg.batch_size * cfg.block_size / (now - run.clock)
    run.log.append([run.iter, round(train_loss, 4), round(val, 4), get_lr(max(run.iter - 1, 0), cfg),
                    round(tokens_per_s), round(run.trained_s + now - run.start, 1)])
    run.clock, run.clock_iter = time.perf_counter(), run.iter  # the next stretch starts
    best, run.best_val_loss = val < run.best_val_loss, min(val, run.best_val_loss)
    return best

# ------------------------------------------------------------ machinery: checkpoints
def save_atomic(obj, path):  # killed mid-write, the previous file is still whole
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)

def save_checkpoint(model, optimizer, scaler, batch_generator, data, cfg, run, best):
    """best.pt (if best), ckpt.pt (all --resume needs) and log.csv; plain dicts of tensors, data."""
    state = dict(model=model.state_dict(), config=vars(cfg).copy(), iter=run.iter, chat=data.chat,
                 best_val_loss=run.best_val_loss, vocab=getattr(data.tokenizer, "vocab", None))
    if isinstance(data.tokenizer, BPETokenizer):
        state["tokenizer"] = data.tokenizer.spec
    if best:
        save_atomic(state, os.path.join(cfg.out_dir, "best.pt"))
    rng = dict(torch=torch.get_rng_state(), batch=batch_generator.get_state())
    if torch.cuda.is_initialized():  # the GPU's dropout: resume draws the same masks
        rng["cuda"] = torch.cuda.get_rng_state()
    state.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), rng=rng, log=run.log)
    save_atomic(state, os.path.join(cfg.out_dir, "ckpt.pt"))
    path = os.path.join(cfg.out_dir, "log.csv")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("iter,train_loss,val_loss,lr,tokens_per_s,elapsed_s\n")
        f.writelines(",".join(map(str, row)) + "\n" for row in run.log)
    os.replace(path + ".tmp", path)

def load_checkpoint(path, what_to_do):  # weights_only: a stranger's file runs no code
    if not os.path.exists(path):
        raise GPTError(f"no checkpoint at {path}; {what_to_do}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own words would suggest weights_only=False: never safe here
        raise GPTError(f"{path} is not a loadable checkpoint: cut short, not from torch.save, or "
                       "holding more than tensors and plain data (gpt.py runs none of it)") from None
    if not (isinstance(ckpt, dict) and {"model", "config", "vocab", "iter", "best_val_loss"} <= ckpt.keys()
            and set(MODEL_KEYS[:4]) <= set(ckpt["config"])):
        raise GPTError(f"{path} is not a gpt.py checkpoint (no model, config, vocab, iter or val loss)")
    return ckpt

def tokenizer_of(ckpt):  # a char model keeps its vocab, a BPE model its tokenizer; no model, None
    if ckpt is not None:
        return make_tokenizer(ckpt.get("tokenizer") or dict(name="char", vocab=ckpt["vocab"]))

def model_from(ckpt, device):  # a checkpoint's model, ready to write
    config = {**DEFAULTS, **ckpt["config"]}  # a checkpoint from before "gelu" existed is exact
    model = GPT(GPTConfig(**{k: config[k] for k in MODEL_KEYS})).to(device).eval()
    model.load_state_dict(ckpt["model"])  # copies the weights onto the model's device
    for block in model.transformer.h:  # on MPS the formula: its fused kernel has given wrong
        block.attn.by_hand = device.type == "mps"  # results for one query (pytorch #163597)
    return model

def claim_out_dir(out_dir, fresh):  # before any work: never replace a trained model; be writable
    for path in (os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "best.pt")):
        if fresh and os.path.exists(path):
            try:
                c = load_checkpoint(path, "")
                what = f"step {c['iter']}, best val loss {c['best_val_loss']:.4f}"
            except GPTError:
                what = "unreadable"
            raise GPTError(f"{out_dir} already holds a model ({what}); continue it with --resume, train "
                           "into another --out_dir, or replace it with --overwrite")
    try:
        os.makedirs(out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()  # writable?
    except OSError as e:
        raise GPTError(f"--out_dir {out_dir} is not a folder that can be written ({e.strerror})") from None

def restore(model, optimizer, scaler, batch_generator, run, resume, init):
    """--resume: all ckpt.pt holds. --init_from: the weights (new characters' embeddings fresh)."""
    if init:
        weights, wte = dict(init["model"]), model.transformer.wte.weight.detach().cpu().clone()
        wte[:len(weights["transformer.wte.weight"])] = weights["transformer.wte.weight"]
        weights["transformer.wte.weight"] = weights["lm_head.weight"] = wte
        model.load_state_dict(weights)
    if not resume:
        return
    if len(resume["model"]["lm_head.weight"]) != model.config.vocab_size:
        raise GPTError("--resume: the data brings new tokens; a vocabulary grows with --init_from")
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    for group in optimizer.param_groups:  # this device's choice, not the saved run's (CPU -> GPU)
        group["fused"] = optimizer.defaults["fused"]
    if resume.get("scaler"):  # float16: the loss scale it had found (other precisions save none)
        scaler.load_state_dict(resume["scaler"])
    if int(os.environ.get("RANK", 0)) == 0:  # the others' dropout keeps its own seed
        torch.set_rng_state(resume["rng"]["torch"])
        if "cuda" in resume["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(resume["rng"]["cuda"])
    batch_generator.set_state(resume["rng"]["batch"])
    run.iter, run.best_val_loss, run.log = resume["iter"], resume["best_val_loss"], resume["log"]
    run.trained_s, run.clock_iter = run.log[-1][-1], run.iter  # every saved run evaluated step 0

# ------------------------------------------------------------ machinery: --sample
def sample(cfg):
    """best.pt's text on stdout, the rest on stderr (`> poem.txt` keeps the poem)."""
    path = os.path.join(cfg.out_dir, "best.pt")
    ckpt = load_checkpoint(path, f"train one: python gpt.py --config tiny --out_dir {cfg.out_dir}")
    device, _ = pick_device(cfg.device)
    model, tokenizer = model_from(ckpt, device), tokenizer_of(ckpt)
    prompt = cfg.prompt or ("\n" if "\n" in tokenizer.spec.get("vocab", "\n") else tokenizer.vocab[0])
    idx = torch.tensor([tokenizer.encode(prompt)], device=device)  # (1, T)
    say(f"sampling {path} (step {ckpt['iter']}, val loss {ckpt['best_val_loss']:.4f}, {device})", file=sys.stderr)
    generator, t0 = torch.Generator().manual_seed(cfg.seed), time.perf_counter()
    for i in range(cfg.num_samples):
        if i:
            print("\n---")
        if cfg.verbose:  # a row per token, then the text as without --verbose
            print("step | chosen | the five likeliest and their probabilities")
        else:
            print(prompt, end="", flush=True)
        ids, shown = [], 0  # shown: how many of the ids are printed
        tokens = generate(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator)
        for step, (next_id, probs) in enumerate(tokens, start=1):
            ids.append(next_id.item())
            if cfg.verbose:
                p, top = probs[0].topk(min(5, probs.size(-1)))
                likeliest = [f"{tokenizer.decode([t])!r} {q:.3g}" for q, t in zip(p.tolist(), top.tolist()) if q]
                print(f"{step:4d} | {tokenizer.decode(ids[-1:])!r:>6} | {'  '.join(likeliest)}")
            elif not tokenizer.decode(ids[shown:]).endswith("\ufffd"):  # whole characters only
                print(tokenizer.decode(ids[shown:]), end="", flush=True)
                shown = len(ids)
        print((prompt if cfg.verbose else "") + tokenizer.decode(ids[shown:]), end="")
    print(flush=True)
    n, seconds = cfg.max_new_tokens * cfg.num_samples, time.perf_counter() - t0
    say(f"{n} tokens in {seconds:.2f}s ({n / seconds:,.0f} tokens/s)", file=sys.stderr)
    return 0

# ------------------------------------------------------------ the training loop (machinery first)
def compiles(cfg, device):  # by default only on CUDA on Linux, where it pays off
    return device.type == "cuda" and sys.platform == "linux" if cfg.compile is None else cfg.compile

def fast_model(model, compiling, device, data, cfg, autocast):
    """What the loop calls: the model, in DDP under torchrun, compiled if a trial step works."""
    fast = DDP(model) if dist.is_initialized() else model
    if not compiling:
        return fast
    torch._dynamo.reset()  # a second model in one process (a notebook, bench.py) starts afresh
    try:
        if isinstance(fast, DDP):  # compiled inside DDP, it is split at DDP's buckets: sharing
            fast.module = torch.compile(model)  # gradients overlaps backward (not so around DDP)
        else:
            fast = torch.compile(model)
        x, y = get_batch(data, "train", cfg.batch_size, cfg.block_size, None)  # a trial step
        x, y = my_share(x, y, cfg.grad_accum, device)[0]
        with autocast:
            loss = next_token_loss(fast(x), y)
        loss.backward()
    except Exception as e:
        say(f"warning: torch.compile failed, training without it: {str(e).splitlines()[0][:200]}")
        if isinstance(fast, DDP):
            fast.module = model  # the same parameters: no second DDP, and its gradient hooks stay
        else:
            fast = model
    model.zero_grad(set_to_none=True)
    return fast

@contextmanager
def stop_signals():
    """Ctrl-C or SIGTERM: all save and stop after this step (a 2nd Ctrl-C without torchrun: now)"""
    received, old = [], {}
    def handler(signum, frame):
        if received and "RANK" not in os.environ:
            raise KeyboardInterrupt
        received.append(signum)
        say(f"\n{signal.Signals(signum).name}: finishing this step, then saving ckpt.pt")
    def stop_requested():  # 0, or the signal that any process received
        vote = torch.tensor(received[:1] or [0])  # on the CPU: torchrun's gloo half votes
        if dist.is_initialized():
            dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return vote.item()
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) is not signal.SIG_IGN:  # a background job's ignored SIGINT stays so
            old[s] = signal.signal(s, handler)
    try:
        yield stop_requested
    finally:
        for s, h in old.items():
            signal.signal(s, h)

def report(loss, lr, cfg, run):  # the progress line; a NaN on any process stops them all
    if dist.is_initialized():  # each process's loss is world_size x its share of the mean
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    check_finite(loss.item(), "loss", cfg, run)
    step_s = (time.perf_counter() - run.clock) / max(run.iter - run.clock_iter, 1)
    minutes, seconds = divmod(round((cfg.max_iters - run.iter) * step_s), 60)
    say(f"step {run.iter} / {cfg.max_iters} | loss {loss.item():.4f} | {step_s * 1000:.0f} ms/step | "
        f"{cfg.batch_size * cfg.block_size / step_s:,.0f} tok/s | lr {lr:.2e} | eta {minutes}m{seconds:02d}s")

def train(cfg, resume=None, init=None):
    """Train per cfg; resume: a ckpt.pt to go on from; init: a checkpoint whose weights start it."""
    device, dtype = pick_device(cfg.device, cfg.dtype)
    data = load_data(cfg.data, cfg.block_size, tokenizer_of(resume or init))
    claim_out_dir(cfg.out_dir, fresh=not resume and not cfg.overwrite)
    if "RANK" in os.environ:  # torchrun started a process per GPU: they join (NCCL; gloo on CPUs)
        dist.init_process_group(device_id=device if device.type == "cuda" else None)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg.vocab_size = data.tokenizer.vocab_size
    torch.manual_seed(cfg.seed + rank)  # the init and dropout (DDP copies process 0's weights)
    batch_generator = torch.Generator().manual_seed(cfg.seed)  # the batches: alike in every process
    model = GPT(GPTConfig(**{k: getattr(cfg, k) for k in MODEL_KEYS}, dropout=cfg.dropout)).to(device)
    for block in model.transformer.h:  # the formula where measured faster: a bfloat16 CPU, T <= 256
        block.attn.by_hand = device.type == "cpu" and dtype == torch.bfloat16 and cfg.block_size <= 256
    optimizer, run, compiling = make_optimizer(model, cfg, device), Run(), compiles(cfg, device)
    where = device.type + (f" x {world_size} processes" if world_size > 1 else "")
    say(f"device {where} | dtype {str(dtype)[6:]} | compile {'on' if compiling else 'off'} | "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters | vocab {data.tokenizer.vocab_size} | "
        f"train {len(data.splits['train']):,} tokens | val {len(data.splits['val']):,} tokens")
    autocast, scaler = mixed_precision(device, dtype)
    fast = fast_model(model, compiling, device, data, cfg, autocast)  # model, compiled or in DDP
    restore(model, optimizer, scaler, batch_generator, run, resume, init)
    to_save = (model, optimizer, scaler, batch_generator, data, cfg, run)  # the plain model saved
    if not resume:  # a fresh model scores about ln(vocab_size)
        best = evaluate(model, data, cfg, autocast, device, run)
        if rank == 0:
            save_checkpoint(*to_save, best)
    with stop_signals() as stop_requested:  # from here on, Ctrl-C saves before it stops
        for it in range(run.iter, cfg.max_iters):
            lr = get_lr(it, cfg)
            x, y = get_batch(data, "train", cfg.batch_size, cfg.block_size, batch_generator)
            # the step's targets, each process's share of them (DDP averages over the processes)
            n_targets = max((y != -1).sum().item(), 1) / world_size
            batches = my_share(x, y, cfg.grad_accum, device)
            loss = train_step(fast, optimizer, scaler, autocast, batches, lr, cfg.grad_clip, n_targets)
            run.iter = it + 1
            evaluating = run.iter % cfg.eval_interval == 0 or run.iter == cfg.max_iters
            stop = stop_requested()
            if run.iter % cfg.log_interval == 0 or run.iter == 1 or evaluating or stop:
                report(loss, lr, cfg, run)  # .item() waits for the device: not at every step
            best = False
            if evaluating:
                best = evaluate(model, data, cfg, autocast, device, run)
            if (evaluating or stop) and rank == 0:
                save_checkpoint(*to_save, best)
            if stop:
                say(f"saved {cfg.out_dir}/ckpt.pt at step {run.iter}; go on with --resume --out_dir {cfg.out_dir}")
                return 128 + stop  # the shell's way: 130 after Ctrl-C (SIGINT), 143 after SIGTERM
    say(f"best val loss {run.best_val_loss:.4f}, in {cfg.out_dir}/best.pt")
    if data.chat:  # a raw taste would look garbled: each answer ends at the template's end marker
        say(f"talk to it: python scripts/chat.py --out_dir {cfg.out_dir}")
    elif rank == 0:
        say("A taste of it:")
        return sample(argparse.Namespace(**{**vars(cfg), "max_new_tokens": 300, "num_samples": 1,
                                            "prompt": "", "verbose": False}))
    return 0

# ------------------------------------------------------------ machinery: the command line
def boolean(text):  # nanoGPT's habits: --compile, --compile=True, --compile False
    return ("true", "false").index(text.lower()) == 0  # else argparse reports the ValueError

def usage_error(message):  # one line, exit 2
    say(f"gpt.py: error: {message}", file=sys.stderr)
    if int(os.environ.get("RANK", 0)):  # torchrun: process 0 says it; the others wait, or torchrun
        time.sleep(3)  # would stop process 0 before it could
    sys.exit(2)

def parse_args(argv):
    """Each setting a flag (--name value or --name=value) of its default's type; switches bare."""
    p = argparse.ArgumentParser(prog="gpt.py", description="Train a GPT or --sample it (defaults: tiny/small/medium's)",
                                allow_abbrev=False, argument_default=argparse.SUPPRESS)
    p.error = usage_error  # one line, not argparse's usage
    for name in ("sample", "resume", "overwrite", "verbose"):
        p.add_argument(f"--{name}", action="store_true", default=False)
    p.add_argument("--compile", type=boolean, nargs="?", const=True, help="(on for CUDA on Linux)")
    choices = dict(config=PRESETS, device=("auto", "cpu", "cuda", "mps"), gelu=("exact", "tanh"),
                   dtype=("auto", "float32", "bfloat16", "float16"))
    known = {**PRESETS["medium"], **DEFAULTS}
    shown = {**known, **{k: "/".join(str(c[k]) for c in PRESETS.values()) for k in PRESETS["tiny"]}}
    for name in [k for k in known if k != "compile"]:
        kind = dict(top_k=int, lr_decay_iters=int).get(name, type(known[name]))  # None's: ints
        p.add_argument(f"--{name}", type=kind, choices=choices.get(name), help=f"({shown[name]})")
    given = argparse.Namespace()
    if "--prompt" in argv[:-1]:  # a prompt may start with "-": it goes around argparse
        at = argv.index("--prompt")
        given.prompt, argv = argv[at + 1], [*argv[:at], *argv[at + 2:]]
    args, unknown = p.parse_known_args(argv, given)
    if unknown:
        flags = [f"--{k}" for k in ("sample", "resume", "overwrite", "verbose", *known)]
        closest = difflib.get_close_matches(unknown[0].split("=")[0], flags, n=1) or ["--help"]
        usage_error(f"unrecognized argument {unknown[0]}; did you mean {closest[0]}?")
    for name, value in vars(args).items():  # sizes must be at least 1; counts, rates and the seed 0
        low = int(type(value) is int and name not in ("seed", "max_iters", "warmup_iters"))
        if type(value) in (int, float) and not (math.isfinite(value) and low <= value < 2**63):
            usage_error(f"argument --{name}: must be at least {low} (and below 2**63), got {value}")
    if getattr(args, "dropout", 0) >= 1:
        usage_error(f"argument --dropout: must be below 1, got {args.dropout}")
    return args

def settings(args):
    """The run's settings, weakest first: the defaults, a checkpoint's, the preset's, the flags."""
    resume = init = None
    if args.resume:
        path = os.path.join(getattr(args, "out_dir", "out"), "ckpt.pt")
        resume = load_checkpoint(path, "--resume continues a run: start one without --resume first")
        tool = (resume.get("made_by") or {}).get("script")  # another tool's run (scripts/rl.py's)?
        if tool or not {"optimizer", "rng", "log"} <= resume.keys():  # or a best.pt
            why = f"made by {tool}: python {tool} --resume --out_dir {os.path.dirname(path)}" if tool else "a best.pt?"
            raise GPTError(f"{path} holds no optimizer state of gpt.py ({why}); start from it with --init_from")
    elif getattr(args, "init_from", ""):
        init = load_checkpoint(args.init_from, "--init_from needs a gpt.py checkpoint")
    saved = (resume or init or {}).get("config", {})
    if init:  # its model and training settings, not its data, folder or device
        saved = {k: v for k, v in saved.items() if k in MODEL_KEYS or k in PRESETS["tiny"]}
    preset = getattr(args, "config", None if saved else DEFAULTS["config"])
    cfg = argparse.Namespace(**{**DEFAULTS, **saved, **PRESETS.get(preset, {}), **vars(args)})
    if cfg.n_embd % cfg.n_head:
        usage_error(f"--n_embd {cfg.n_embd} is not divisible by --n_head {cfg.n_head}: heads need equal shares")
    if cfg.min_lr > cfg.learning_rate:
        usage_error(f"min_lr {cfg.min_lr} > --learning_rate {cfg.learning_rate}: the rate would rise; lower --min_lr")
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    if cfg.batch_size % (world_size * cfg.grad_accum):
        usage_error(f"--batch_size {cfg.batch_size} is not divisible by {world_size} processes x "
                    f"--grad_accum {cfg.grad_accum}: every micro-batch must have one size")
    changed = [f"{k} {saved[k]} -> {getattr(cfg, k)}" for k in MODEL_KEYS  # vocab_size: the data's
               if k in saved and saved[k] != getattr(cfg, k)]  # later (--init_from may grow it)
    if changed:
        raise GPTError(f"--resume or --init_from: the flags or --config change the model "
                       f"({', '.join(changed)}); drop them, or train anew in another --out_dir")
    return cfg, resume, init

def main(argv=None):  # argv None: the command line's if it runs this file (python, torchrun, %run),
    here = os.path.abspath(globals().get("__file__", "<pasted>"))  # not a kernel's (-f kernel.json)
    argv = (sys.argv[1:] if os.path.abspath(sys.argv[0]) == here else []) if argv is None else argv
    args = parse_args(list(argv))
    try:
        if args.sample:
            return sample(argparse.Namespace(**{**DEFAULTS, **vars(args)}))
        return train(*settings(args))
    except GPTError as e:
        say(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # out of memory, on any device: ckpt.pt is whole, --resume after
        if "alloc" not in str(e):
            raise
        say("error: out of memory: lower --batch_size or --block_size, or raise --grad_accum", file=sys.stderr)
        return 1
    except IndexError as e:  # an id past the vocabulary: a prepared folder gone wrong, met in use
        if "out of range in self" not in str(e):  # (reading it whole at the start can take minutes)
            raise
        say(f"error: data {getattr(args, 'data', '')} has ids beyond its vocabulary; prepare it again", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the loop: in the setup or the first eval
        say("\ninterrupted", file=sys.stderr)
        return 130
    finally:  # DDP's reference cycles hold the process group: collected, its threads end here,
        if dist.is_initialized():  # not in the exit, where they could abort it (2 runs in 22 did)
            gc.collect()
            dist.destroy_process_group()

if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE") and "ipykernel" not in sys.modules:  # `| head`: end quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    code = main()
    if code and "ipykernel" not in sys.modules:  # in a notebook, SystemExit only prints a warning
        sys.exit(code)
