"""
microgpt.py: the GPT of gpt.py in plain Python, every multiplication in sight.

    python microgpt.py    # trains a 1-layer model on shakespeare.txt in minutes, then samples

A GPT reads text one token at a time (here a token is a character) and learns to guess the next one.
Read this file first for the ideas, one number at a time; gpt.py computes the very same function
with PyTorch, fast, plus what makes a real run dependable. Each function here names its gpt.py twin.
test_gpt.py checks that both give the same logits, loss, gradients and optimizer steps, to 1e-9.

The exact contract (skip it on a first read; each term is explained where it runs): GPT-2, pre-LayerNorm,
no dropout, exact-erf GELU, LayerNorm eps 1e-5; AdamW (0.9, 0.99, 1e-8), warmup + cosine, clipping.
"""
import argparse  # the command line, with gpt.py's flag names
import math  # exp, log, erf, sqrt, cos
import os  # finds shakespeare.txt next to this file
import random  # init, batches and sampling, each from its own seeded generator
import time  # ms/step

# ------------------------------------------------------------ the text and its characters
def load_text(path):  # gpt.py's read_text
    if not os.path.exists(path):  # the default text also sits next to this file
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), path)
    with open(path, encoding="utf-8") as f:
        return f.read()

# ------------------------------------------------------------ autograd: what PyTorch does for gpt.py
# Learning needs each parameter's gradient: how much the loss (one number: how wrong the model's
# guesses are, see next_token_loss) would change if that parameter moved a little. A Value is one
# number that remembers the Values it was made from (its children) and the local derivative of
# itself with respect to each. backward() then applies the chain rule from the loss back to every
# parameter. gpt.py's loss.backward() (in train_step) does exactly this, on whole tensors at once.
class Value:
    __slots__ = ("data", "grad", "children", "local_grads")  # no dict per object: smaller, faster

    def __init__(self, data, children=(), local_grads=()):
        self.data = data  # the number itself
        self.grad = 0.0  # d(loss)/d(this number), filled in by backward()
        self.children, self.local_grads = children, local_grads  # d(self)/d(child) for each child

    def __add__(self, other):
        if isinstance(other, Value):
            return Value(self.data + other.data, (self, other), (1.0, 1.0))
        return Value(self.data + other, (self,), (1.0,))  # a plain number needs no gradient: not kept

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
        # order lists every node after the nodes it was made from. A depth-first search: a node is
        # popped twice, first (children_done False) to push itself back marked True and its children
        # on top, then, its children all listed, to be listed itself (a loop, as a recursion would
        # hit Python's limit). Walked backwards from the loss, each node's grad is complete, every
        # user of it having added its share, before it is passed on.
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                order.append(node)
            elif node not in seen:
                seen.add(node)
                stack.append((node, True))
                stack.extend((child, False) for child in node.children if child not in seen)
        self.grad = 1.0  # d(loss)/d(loss)
        for node in reversed(order):  # the chain rule, from the loss back to every leaf:
            for child, local_grad in zip(node.children, node.local_grads):
                # d(loss)/d(child) += d(loss)/d(node) * d(node)/d(child). A child used by several
                # nodes (a weight used at every position) adds up one share from each: hence +=.
                child.grad += local_grad * node.grad

# Two shortcuts, their local derivatives written by hand: one node each, not a chain of + and *
# (several-fold faster; PyTorch's operations do the same). dot's children: w_1..w_n, x_1..x_n and
# the bias, with d/dw_i = x_i, d/dx_i = w_i, d/dbias = 1.
def dot(ws, xs, bias=None):  # sum(w * x) + bias
    data = sum(w.data * x.data for w, x in zip(ws, xs)) + (bias.data if bias is not None else 0.0)
    children, local_grads = (*ws, *xs), (*(x.data for x in xs), *(w.data for w in ws))
    if bias is not None:
        children, local_grads = (*children, bias), (*local_grads, 1.0)
    return Value(data, children, local_grads)

def total(xs):  # sum(xs): each d/dx_i = 1
    return Value(sum(x.data for x in xs), tuple(xs), (1.0,) * len(xs))

# ------------------------------------------------------------ the model
def init_state_dict(vocab_size, block_size, n_layer, n_embd, rng):
    """gpt.py's GPT.__init__: random weights, normal with standard deviation 0.02, in a state_dict
    (name -> weights) with GPT-2's names. wte: the token embedding, n_embd numbers per token; wpe:
    the same per position; h.{i}: block i; ln: a LayerNorm; attn.c_attn: queries, keys and values;
    c_proj: a projection back into x (gpt() below), started smaller: each block adds to x twice;
    mlp.c_fc: the MLP's widening layer (fc: fully connected); ln_f: the final LayerNorm; lm_head: the
    language model's head, a score per next token, tied: the very vectors of wte."""
    def matrix(rows, cols, std=0.02):  # a list of rows
        return [[Value(rng.gauss(0.0, std)) for _ in range(cols)] for _ in range(rows)]
    def vector(n, value):  # one row
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

def linear(x, w, b):  # nn.Linear: each output a weighted sum of all inputs, plus a bias
    return [dot(row, x, bias) for row, bias in zip(w, b)]  # w is (out, in), as in nn.Linear

def layernorm(x, w, b):  # nn.LayerNorm: to mean 0, variance 1, then a learned gain w and bias b
    mean = total(x) * (1.0 / len(x))
    centered = [xi - mean for xi in x]
    var = total([c * c for c in centered]) * (1.0 / len(x))  # biased: divide by n, not n - 1
    inv_std = (var + 1e-5) ** -0.5
    return [c * inv_std * wi + bi for c, wi, bi in zip(centered, w, b)]

def gelu(x):  # nn.GELU: x * Phi(x), a smooth bend (without one, two linears would be one linear)
    cdf = 0.5 * (1.0 + math.erf(x.data / math.sqrt(2.0)))  # Phi(x): P(a standard normal < x)
    pdf = math.exp(-0.5 * x.data * x.data) / math.sqrt(2.0 * math.pi)  # phi(x): its density
    return Value(x.data * cdf, (x,), (cdf + x.data * pdf,))  # d/dx = Phi(x) + x * phi(x)

def softmax(logits):  # F.softmax: scores -> probabilities, exp(score) / the sum of them all
    biggest = max(v.data for v in logits)  # subtracting it changes nothing but keeps exp finite
    exps = [(v - biggest).exp() for v in logits]
    denominator = total(exps)
    return [e / denominator for e in exps]

def gpt(token, pos, keys, values, sd, n_head):
    """gpt.py's GPT.forward for one position: the logits, a score for every possible next token. The
    earlier positions' keys and values wait in keys[layer], values[layer]; this one's are appended."""
    wte, wpe = sd["transformer.wte.weight"], sd["transformer.wpe.weight"]
    x = [t + p for t, p in zip(wte[token], wpe[pos])]  # what the token is, and where
    C, head_dim = len(x), len(x) // n_head
    for layer in range(len(keys)):
        h = f"transformer.h.{layer}."
        # x is the residual stream: attention, then the MLP, each reads it and adds (Block.forward).
        # Attention (gpt.py's CausalSelfAttention, its formula): this token asks a query (what am I
        # looking for?); every token so far offers a key (what do I hold?) and a value (what I pass
        # on if chosen).
        qkv = linear(layernorm(x, sd[h + "ln_1.weight"], sd[h + "ln_1.bias"]),
                     sd[h + "attn.c_attn.weight"], sd[h + "attn.c_attn.bias"])
        q, k, v = qkv[:C], qkv[C:2 * C], qkv[2 * C:]  # split in that order, as gpt.py does
        keys[layer].append(k)
        values[layer].append(v)
        # Causal: a token may not see the tokens after it, the ones it learns to guess. Here that
        # needs no mask: keys[layer] holds only positions 0..pos. gpt.py runs all positions at once,
        # so it masks the later ones.
        heads = []  # every head's outputs, side by side: C numbers
        for start in range(0, C, head_dim):  # n_head heads, each its own head_dim numbers (channels)
            end = start + head_dim
            # the query against each key so far; / sqrt(head_dim) keeps the scores' spread near 1
            scores = [dot(q[start:end], k_t[start:end]) * (1.0 / math.sqrt(head_dim))
                      for k_t in keys[layer]]
            weights = softmax(scores)  # how much to take from each token so far, summing to 1
            for j in range(start, end):  # the values, weighted: gpt.py's att @ v, a channel at a time
                heads.append(dot(weights, [v_t[j] for v_t in values[layer]]))
        attn = linear(heads, sd[h + "attn.c_proj.weight"], sd[h + "attn.c_proj.bias"])
        x = [a + b for a, b in zip(x, attn)]
        # gpt.py's MLP (multi-layer perceptron): this position alone, 4C numbers, GELU, back to C
        hidden = linear(layernorm(x, sd[h + "ln_2.weight"], sd[h + "ln_2.bias"]),
                        sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"])
        mlp = linear([gelu(u) for u in hidden], sd[h + "mlp.c_proj.weight"],
                     sd[h + "mlp.c_proj.bias"])
        x = [a + b for a, b in zip(x, mlp)]
    x = layernorm(x, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
    return [dot(row, x) for row in sd["lm_head.weight"]]  # x against each token's vector (wte's)

# ------------------------------------------------------------ the loss
def next_token_loss(logits, target):
    """Cross-entropy, as gpt.py's next_token_loss: -log(the probability the model gave the true next
    token). 0 if it was sure and right; large if it gave the truth little chance. A fresh model
    spreads its bets evenly: ln(vocab_size)."""
    return -softmax(logits)[target].log()

def forward(sd, n_head, idx, targets=None):
    """idx: B sequences of T token ids. Returns the logits (B x T x vocab_size Values) and the mean
    cross-entropy over all B*T positions, as gpt.py's GPT.forward and next_token_loss do."""
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
    """The learning rate lr, the size of a step: Adam moves each parameter by about lr. gpt.py's
    get_lr: a linear warmup (the first gradients of random weights are wild), then a cosine (from 1
    to 0) that glides from learning_rate to min_lr, so that late steps settle instead of bouncing."""
    decay_iters = cfg.max_iters if cfg.lr_decay_iters is None else cfg.lr_decay_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)  # + 1: step 0 moves already
    if it >= decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / (decay_iters - cfg.warmup_iters)  # 0 -> 1
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)

def parameters(sd):
    """(param, decays) for each distinct Value, as gpt.py's make_optimizer groups them: matrices and
    embeddings decay; biases and LayerNorm gains, which cannot overfit, don't."""
    params = {}
    for key, w in sd.items():
        for row in w if isinstance(w[0], list) else [w]:  # a matrix: rows; a vector: one row
            for p in row:
                params.setdefault(id(p), (p, isinstance(w[0], list)))  # the tied matrix only once
    return list(params.values())

# ------------------------------------------------------------ one training step
def adamw_step(params, m, v, step, lr, cfg, beta1=0.9, beta2=0.99, eps=1e-8):
    """Clip the gradients to a global L2 norm of grad_clip, then AdamW, as gpt.py's train_step does
    with clip_grad_norm_ and torch.optim.AdamW (make_optimizer). AdamW: Adam, with Weight decay on
    the weight directly, not added to g (Adam would rescale it). m, v: Adam's, not attention's."""
    norm = math.sqrt(sum(p.grad * p.grad for p, _ in params))  # all gradients as one long vector
    scale = min(1.0, cfg.grad_clip / (norm + 1e-6)) if cfg.grad_clip > 0 else 1.0  # no freak jumps
    for i, (p, decays) in enumerate(params):
        g = p.grad * scale
        if decays:
            p.data *= 1.0 - lr * cfg.weight_decay  # a pull to 0 against overfitting, on the weight
        m[i] = beta1 * m[i] + (1 - beta1) * g  # the gradient's running mean: a smoothed direction
        v[i] = beta2 * v[i] + (1 - beta2) * g * g  # its square's running mean: its usual size
        # m and v start at 0, so early on they are too small: dividing by (1 - beta**step) fixes it
        m_hat, v_hat = m[i] / (1 - beta1 ** step), v[i] / (1 - beta2 ** step)  # step counts from 1
        p.data -= lr * m_hat / (math.sqrt(v_hat) + eps)  # m_hat ~ g, sqrt(v_hat) ~ |g|: moves ~ lr
        p.grad = 0.0  # backward adds into grad: clear it for the next step

# ------------------------------------------------------------ the training loop
def train(args):  # gpt.py's train, stripped to the loop: returns the weights and the vocabulary
    cfg = argparse.Namespace(learning_rate=args.learning_rate, min_lr=args.learning_rate / 10,
                             warmup_iters=20, max_iters=args.num_steps, lr_decay_iters=None,
                             weight_decay=0.1, grad_clip=1.0)
    text = load_text(args.data)
    vocab = sorted(set(text))  # the same tokenizer as gpt.py's: sorted characters
    stoi = {ch: i for i, ch in enumerate(vocab)}
    data = [stoi[ch] for ch in text]
    n = int(0.9 * len(data))  # the first 90% to learn from, as gpt.py's (no eval here)
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
        _, loss = forward(sd, args.n_head, [chunk[:-1]], [chunk[1:]])  # targets: the inputs, shifted
        loss.backward()
        lr = get_lr(step, cfg)
        adamw_step(params, m, v, step + 1, lr, cfg)
        if step % 10 == 0 or step == args.num_steps - 1:
            ms = (time.time() - t0) * 1000
            print(f"step {step + 1} / {args.num_steps} | loss {loss.data:.4f} | {ms:.0f} ms/step | "
                  f"{args.block_size / ms * 1000:,.0f} tok/s | lr {lr:.2e}", flush=True)
    return sd, vocab

# ------------------------------------------------------------ sampling
def generate(sd, n_head, block_size, ids, max_new_tokens, temperature=1.0, rng=None, top_k=None):
    """New token ids after ids, as gpt.py's generate and draw. The model knows block_size positions:
    when the text outgrows them, its last 3/4 block is numbered from 0 again, the cache rebuilt."""
    n_layer = sum(1 for k in sd if k.endswith("ln_1.weight"))
    ids, start, keys = list(ids), 0, None
    for _ in range(max_new_tokens):
        if len(ids) - start > block_size:
            start, keys = len(ids) - (block_size - block_size // 4), None
        if keys is None:  # positions restart at 0: fill the cache with the window
            keys, values = [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]
            logits = [gpt(t, pos, keys, values, sd, n_head) for pos, t in enumerate(ids[start:])][-1]
        else:
            logits = gpt(ids[-1], len(ids) - 1 - start, keys, values, sd, n_head)
        if temperature == 0:  # greedy: the likeliest token, every time
            token = max(range(len(logits)), key=lambda i: logits[i].data)
        else:  # temperature divides the scores: below 1 sharper (safer text), above 1 flatter (wilder)
            scores = [l.data / temperature for l in logits]
            if top_k is not None:  # only the top_k likeliest may be drawn: the long tail cut off
                kth_best = sorted(scores, reverse=True)[min(top_k, len(scores)) - 1]
                scores = [s if s >= kth_best else -math.inf for s in scores]
            probs = softmax([Value(s) for s in scores])  # exp(-inf) = 0: cut tokens get no chance
            token = rng.choices(range(len(probs)), weights=[p.data for p in probs])[0]  # one draw
        ids.append(token)
    return ids[len(ids) - max_new_tokens:]

# ------------------------------------------------------------ the command line
def main():  # gpt.py's main, in brief
    p = argparse.ArgumentParser(description="Train the pure-Python GPT on a text, then sample from it.")
    for name, default in dict(data="shakespeare.txt", n_layer=1, n_head=4, n_embd=16, block_size=16,
                              num_steps=1000,  # one block_size sequence per step
                              learning_rate=1e-2,  # high: tiny models take big steps
                              seed=1337, temperature=0.8, top_k=0).items():  # top_k 0: any token
        p.add_argument(f"--{name}", type=type(default), default=default)
    args = p.parse_args()
    if args.n_embd % args.n_head:
        p.error(f"--n_embd {args.n_embd} is not divisible by --n_head {args.n_head}")
    sd, vocab = train(args)
    print("\n--- a sample:")
    start = [vocab.index("\n")] if "\n" in vocab else [0]
    ids = generate(sd, args.n_head, args.block_size, start, 200, args.temperature,
                   random.Random(args.seed), args.top_k or None)
    print("".join(vocab[i] for i in ids))

if __name__ == "__main__":
    main()
