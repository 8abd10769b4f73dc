"""
microgpt.py: the GPT of gpt.py in pure Python, every multiplication in plain sight.

    python microgpt.py    # trains a 1-layer model on shakespeare.txt in minutes, then samples

It computes the very same function as gpt.py, in the same order and names: GPT-2 with pre-LayerNorm,
learned positions, biases, the head tied to the token embedding, exact-erf GELU, LayerNorm with eps
1e-5 and biased variance; AdamW (0.9, 0.99, eps 1e-8, decay on matrices only), warmup + cosine LR and
global-norm clipping. test_gpt.py checks that logits, loss, every gradient and three optimizer steps
agree to 1e-9. A scalar autograd engine stands in for PyTorch: all gpt.py adds is efficiency.
"""
import argparse  # the command line, with gpt.py's flag names
import math  # exp, log, erf, sqrt, cos
import os  # finds shakespeare.txt next to this file
import random  # init, batches and sampling, each from its own seeded generator
import time  # ms/step

# ------------------------------------------------------------ the text and its characters
def load_text(path):
    if not os.path.exists(path):  # the default text also sits next to this file
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), path)
    with open(path, encoding="utf-8") as f:
        return f.read()

# ------------------------------------------------------------ autograd: what PyTorch does for gpt.py
class Value:
    """A scalar that remembers how it was made: its children and d(self)/d(child) for each."""
    __slots__ = ("data", "grad", "children", "local_grads")  # no dict per object: smaller, faster

    def __init__(self, data, children=(), local_grads=()):
        self.data, self.grad, self.children, self.local_grads = data, 0.0, children, local_grads

    def __add__(self, other):
        if isinstance(other, Value):
            return Value(self.data + other.data, (self, other), (1.0, 1.0))
        return Value(self.data + other, (self,), (1.0,))  # a constant is no node

    def __mul__(self, other):
        if isinstance(other, Value):
            return Value(self.data * other.data, (self, other), (other.data, self.data))
        return Value(self.data * other, (self,), (other,))

    def __pow__(self, k):  # k a constant
        return Value(self.data ** k, (self,), (k * self.data ** (k - 1),))

    def exp(self):
        e = math.exp(self.data)
        return Value(e, (self,), (e,))

    def log(self):
        return Value(math.log(self.data), (self,), (1.0 / self.data,))

    def __neg__(self): return self * -1.0
    def __radd__(self, other): return self + other
    def __sub__(self, other): return self + (-other)
    def __rsub__(self, other): return -self + other
    def __rmul__(self, other): return self * other
    def __truediv__(self, other): return self * (other ** -1.0 if isinstance(other, Value) else 1.0 / other)

    def backward(self):
        # Reverse topological order by an iterative depth-first search: a recursive one would hit
        # Python's recursion limit on the long chains of a deep graph.
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                order.append(node)
            elif node not in seen:
                seen.add(node)
                stack.append((node, True))
                stack.extend((child, False) for child in node.children if child not in seen)
        self.grad = 1.0
        for node in reversed(order):  # the chain rule, from the loss back to every leaf
            for child, local_grad in zip(node.children, node.local_grads):
                child.grad += local_grad * node.grad

def dot(ws, xs, bias=None):
    """sum(w * x) (+ bias) as one node instead of 2n: the graph and the time shrink several-fold."""
    data = sum(w.data * x.data for w, x in zip(ws, xs)) + (bias.data if bias is not None else 0.0)
    children, local_grads = (*ws, *xs), (*(x.data for x in xs), *(w.data for w in ws))
    if bias is not None:
        children, local_grads = (*children, bias), (*local_grads, 1.0)
    return Value(data, children, local_grads)

def total(xs):
    """sum(xs) as one node (a chain of + would make len(xs) nodes)."""
    return Value(sum(x.data for x in xs), tuple(xs), (1.0,) * len(xs))

# ------------------------------------------------------------ the model
def init_state_dict(vocab_size, block_size, n_layer, n_embd, rng):
    """Random weights keyed like gpt.py's state_dict: N(0, 0.02), residual projections smaller."""
    def matrix(rows, cols, std=0.02):
        return [[Value(rng.gauss(0.0, std)) for _ in range(cols)] for _ in range(rows)]

    def vector(n, value):
        return [Value(value) for _ in range(n)]

    C, proj_std = n_embd, 0.02 / math.sqrt(2 * n_layer)
    sd = {"transformer.wte.weight": matrix(vocab_size, C),
          "transformer.wpe.weight": matrix(block_size, C)}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        sd.update({h + "ln_1.weight": vector(C, 1.0), h + "ln_1.bias": vector(C, 0.0),
                   h + "attn.c_attn.weight": matrix(3 * C, C),
                   h + "attn.c_attn.bias": vector(3 * C, 0.0),
                   h + "attn.c_proj.weight": matrix(C, C, proj_std),
                   h + "attn.c_proj.bias": vector(C, 0.0),
                   h + "ln_2.weight": vector(C, 1.0), h + "ln_2.bias": vector(C, 0.0),
                   h + "mlp.c_fc.weight": matrix(4 * C, C), h + "mlp.c_fc.bias": vector(4 * C, 0.0),
                   h + "mlp.c_proj.weight": matrix(C, 4 * C, proj_std),
                   h + "mlp.c_proj.bias": vector(C, 0.0)})
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = vector(C, 1.0), vector(C, 0.0)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied: the very same Value objects
    return sd

def from_floats(floats):
    """A state_dict of Values from nested float lists (say, gpt.py's weights), keeping the tie."""
    sd = {k: [[Value(x) for x in row] for row in w] if isinstance(w[0], list)
          else [Value(x) for x in w] for k, w in floats.items() if k != "lm_head.weight"}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd

def linear(x, w, b):
    return [dot(row, x, bias) for row, bias in zip(w, b)]  # w is (out, in), as in nn.Linear

def layernorm(x, w, b):
    mean = total(x) * (1.0 / len(x))
    centered = [xi - mean for xi in x]
    var = total([c * c for c in centered]) * (1.0 / len(x))  # biased: divide by n, not n - 1
    inv_std = (var + 1e-5) ** -0.5
    return [c * inv_std * wi + bi for c, wi, bi in zip(centered, w, b)]

def gelu(x):  # exact: 0.5·x·(1 + erf(x/√2)); the derivative is Φ(x) + x·φ(x)
    cdf = 0.5 * (1.0 + math.erf(x.data / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * x.data * x.data) / math.sqrt(2.0 * math.pi)
    return Value(x.data * cdf, (x,), (cdf + x.data * pdf,))

def softmax(logits):
    biggest = max(v.data for v in logits)  # subtracting it changes nothing but keeps exp finite
    exps = [(v - biggest).exp() for v in logits]
    denominator = total(exps)
    return [e / denominator for e in exps]

def gpt(token, pos, keys, values, sd, n_head):
    """Logits for the token at position pos. Earlier positions' keys and values are in keys[layer]
    and values[layer] (this one's are appended): attending only to them makes it causal."""
    wte, wpe = sd["transformer.wte.weight"], sd["transformer.wpe.weight"]
    x = [t + p for t, p in zip(wte[token], wpe[pos])]
    C = len(x)
    head_dim = C // n_head
    for layer in range(len(keys)):
        h = f"transformer.h.{layer}."
        qkv = linear(layernorm(x, sd[h + "ln_1.weight"], sd[h + "ln_1.bias"]),
                     sd[h + "attn.c_attn.weight"], sd[h + "attn.c_attn.bias"])
        q, k, v = qkv[:C], qkv[C:2 * C], qkv[2 * C:]  # split in that order, as gpt.py does
        keys[layer].append(k)
        values[layer].append(v)
        heads = []
        for s in range(0, C, head_dim):  # head h owns channels s .. s + head_dim
            scores = [dot(q[s:s + head_dim], k_t[s:s + head_dim]) * (1.0 / math.sqrt(head_dim))
                      for k_t in keys[layer]]
            weights = softmax(scores)
            heads += [dot(weights, [v_t[j] for v_t in values[layer]])
                      for j in range(s, s + head_dim)]
        attn = linear(heads, sd[h + "attn.c_proj.weight"], sd[h + "attn.c_proj.bias"])
        x = [a + b for a, b in zip(x, attn)]
        hidden = linear(layernorm(x, sd[h + "ln_2.weight"], sd[h + "ln_2.bias"]),
                        sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"])
        mlp = linear([gelu(u) for u in hidden], sd[h + "mlp.c_proj.weight"],
                     sd[h + "mlp.c_proj.bias"])
        x = [a + b for a, b in zip(x, mlp)]
    x = layernorm(x, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
    return [dot(row, x) for row in sd["lm_head.weight"]]

# ------------------------------------------------------------ the loss
def next_token_loss(logits, target):  # -log(the probability given to the true next token)
    return -softmax(logits)[target].log()

def forward(sd, n_head, idx, targets=None):
    """idx: B sequences of T token ids. Returns the logits (B x T x vocab_size Values) and the mean
    cross-entropy over all B*T positions, as gpt.py's GPT.forward does."""
    n_layer = sum(1 for k in sd if k.endswith("ln_1.weight"))
    logits, losses = [], []
    for b, sequence in enumerate(idx):
        keys, values = [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]
        logits.append([gpt(t, pos, keys, values, sd, n_head) for pos, t in enumerate(sequence)])
        if targets is not None:
            losses += [next_token_loss(row, target) for row, target in zip(logits[-1], targets[b])]
    return logits, (total(losses) * (1.0 / len(losses)) if targets is not None else None)

# ------------------------------------------------------------ the optimizer and the learning rate
def get_lr(it, cfg):
    """Linear warmup, then cosine decay to min_lr: the very same schedule as gpt.py's."""
    decay_iters = cfg.max_iters if cfg.lr_decay_iters is None else cfg.lr_decay_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / (decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)

def parameters(sd):
    """(param, decays) for each distinct Value: matrices and embeddings decay; biases, gains don't."""
    params = {}
    for key, w in sd.items():
        for row in w if isinstance(w[0], list) else [w]:
            for p in row:
                params.setdefault(id(p), (p, isinstance(w[0], list)))  # the tied matrix only once
    return list(params.values())

# ------------------------------------------------------------ one training step
def adamw_step(params, m, v, step, lr, cfg, beta1=0.9, beta2=0.99, eps=1e-8):
    """Clip the gradients to a global L2 norm of grad_clip, then AdamW as torch.optim.AdamW does."""
    norm = math.sqrt(sum(p.grad * p.grad for p, _ in params))
    scale = min(1.0, cfg.grad_clip / (norm + 1e-6)) if cfg.grad_clip > 0 else 1.0
    for i, (p, decays) in enumerate(params):
        g = p.grad * scale
        if decays:
            p.data *= 1.0 - lr * cfg.weight_decay  # decoupled: shrink the weight, not its gradient
        m[i] = beta1 * m[i] + (1 - beta1) * g
        v[i] = beta2 * v[i] + (1 - beta2) * g * g
        m_hat, v_hat = m[i] / (1 - beta1 ** step), v[i] / (1 - beta2 ** step)  # step counts from 1
        p.data -= lr * m_hat / (math.sqrt(v_hat) + eps)
        p.grad = 0.0

# ------------------------------------------------------------ the training loop
def train(args):  # returns the weights and the vocabulary
    cfg = argparse.Namespace(learning_rate=args.learning_rate, min_lr=args.learning_rate / 10,
                             warmup_iters=20, max_iters=args.num_steps, lr_decay_iters=None,
                             weight_decay=0.1, grad_clip=1.0)
    text = load_text(args.data)
    vocab = sorted(set(text))  # the same tokenizer as gpt.py's: sorted characters
    stoi = {ch: i for i, ch in enumerate(vocab)}
    data = [stoi[ch] for ch in text]
    n = int(0.9 * len(data))
    rng = random.Random(args.seed)
    sd = init_state_dict(len(vocab), args.block_size, args.n_layer, args.n_embd, rng)
    params = parameters(sd)
    m, v = [0.0] * len(params), [0.0] * len(params)
    print(f"{len(params):,} parameters | vocab {len(vocab)} | train {n:,} tokens")
    batch_rng = random.Random(args.seed + 1)
    for step in range(args.num_steps):
        t0 = time.time()
        i = batch_rng.randrange(n - args.block_size - 1)
        chunk = data[i:i + args.block_size + 1]
        _, loss = forward(sd, args.n_head, [chunk[:-1]], [chunk[1:]])
        loss.backward()
        lr = get_lr(step, cfg)
        adamw_step(params, m, v, step + 1, lr, cfg)
        if step % 10 == 0 or step == args.num_steps - 1:
            ms = (time.time() - t0) * 1000
            print(f"step {step + 1} / {args.num_steps} | loss {loss.data:.4f} | {ms:.0f} ms/step | "
                  f"{args.block_size / ms * 1000:,.0f} tok/s | lr {lr:.2e}", flush=True)
    return sd, vocab

# ------------------------------------------------------------ sampling
def generate(sd, n_head, block_size, ids, max_new_tokens, temperature=1.0, rng=None):
    """New token ids after ids, with gpt.py's window: past block_size it slides a quarter block."""
    n_layer = sum(1 for k in sd if k.endswith("ln_1.weight"))
    ids, start, keys, new = list(ids), 0, None, []
    for _ in range(max_new_tokens):
        if len(ids) - start > block_size:
            start, keys = len(ids) - (block_size - block_size // 4), None
        if keys is None:  # positions restart at 0: fill the cache with the window
            keys, values = [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]
            logits = [gpt(t, pos, keys, values, sd, n_head) for pos, t in enumerate(ids[start:])]
            logits = logits[-1]
        else:
            logits = gpt(ids[-1], len(ids) - 1 - start, keys, values, sd, n_head)
        if temperature == 0:
            token = max(range(len(logits)), key=lambda i: logits[i].data)
        else:
            probs = softmax([l * (1.0 / temperature) for l in logits])
            token = rng.choices(range(len(probs)), weights=[p.data for p in probs])[0]
        ids.append(token)
        new.append(token)
    return new

# ------------------------------------------------------------ the command line
def main():
    p = argparse.ArgumentParser(description="Train the pure-Python GPT on a text, then sample from it.")
    p.add_argument("--data", default="shakespeare.txt")
    p.add_argument("--n_layer", type=int, default=1)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=16)
    p.add_argument("--block_size", type=int, default=16)
    p.add_argument("--num_steps", type=int, default=1000)  # one block_size sequence per step
    p.add_argument("--learning_rate", type=float, default=1e-2)  # high: tiny models take big steps
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args()
    if args.n_embd % args.n_head:
        p.error(f"--n_embd {args.n_embd} is not divisible by --n_head {args.n_head}")
    sd, vocab = train(args)
    print("\n--- a sample:")
    start = [vocab.index("\n")] if "\n" in vocab else [0]
    ids = generate(sd, args.n_head, args.block_size, start, 200, 0.8, random.Random(args.seed))
    print("".join(vocab[i] for i in ids))

if __name__ == "__main__":
    main()
