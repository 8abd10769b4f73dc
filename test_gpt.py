"""test_gpt.py: the behaviour of gpt.py (and microgpt.py), one behaviour per test, on tiny CPU configs.

    python -m pytest
"""
import ast
import contextlib
import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings, strategies as st

import gpt

# A loaded machine makes hypothesis's data generation slow, which is not what these tests are about
settings.register_profile("patient", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("patient")
HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = open(os.path.join(HERE, "shakespeare.txt"), encoding="utf-8").read()[:20_000]
TINY_RUN = ["--config", "tiny", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16",
            "--batch_size", "8", "--max_iters", "60", "--eval_interval", "20", "--eval_iters", "4",
            "--log_interval", "20", "--learning_rate", "3e-3", "--warmup_iters", "5", "--device", "cpu"]


def run_gpt(*args):
    """gpt.py as a user runs it: a fresh process, its exit code and both output streams."""
    return subprocess.run([sys.executable, os.path.join(HERE, "gpt.py"), *args], cwd=HERE,
                          capture_output=True, text=True, timeout=300)


def call_gpt(*args):
    """gpt.py's main in this process, as run_gpt but without a second start of Python and torch (seconds on
    a small CPU): its exit code and both output streams. An exception escaping main fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = gpt.main(list(args))
        except SystemExit as e:  # argparse's own exit: --help, usage errors
            code = e.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def ids_of(generation):  # generate yields (next_id, probs) pairs; the ids alone
    return [next_id for next_id, _ in generation]


def tiny_model(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, seed=0):
    torch.manual_seed(seed)
    return gpt.GPT(gpt.GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                                 n_head=n_head, n_embd=n_embd, dropout=0.0)).eval()


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_file):
    """One tiny training run, shared by every test that needs a checkpoint."""
    out_dir = str(tmp_path_factory.mktemp("run"))
    result = run_gpt(*TINY_RUN, "--data", data_file, "--out_dir", out_dir)
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(out_dir=out_dir, stdout=result.stdout, data=data_file)


# ----------------------------------------------------------------------------- tokenizer
VOCAB = "".join(sorted(set(TEXT)))


@given(st.text(alphabet=VOCAB))
def test_encode_decode_round_trip(s):
    tokenizer = gpt.CharTokenizer(VOCAB)
    assert tokenizer.decode(tokenizer.encode(s)) == s


def test_vocab_is_sorted_distinct_characters(data_file):
    data = gpt.load_data(data_file, block_size=16)
    assert data.per_char == 1 and data.tokenizer.vocab == "".join(sorted(set(TEXT)))
    assert len(data.splits["train"]) == int(0.9 * len(TEXT))
    assert len(data.splits["val"]) == len(TEXT) - int(0.9 * len(TEXT))


# ----------------------------------------------------------------------------- model
def expected_params(n_layer, n_embd, vocab_size=65, block_size=256):
    C = n_embd
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    return n_layer * per_block + vocab_size * C + block_size * C + 2 * C  # the tied head adds nothing


@pytest.mark.parametrize("name, spec_millions", [("tiny", 0.44), ("small", 3.2), ("medium", 10.7)])
def test_preset_parameter_counts(name, spec_millions):
    p = gpt.PRESETS[name]
    model = gpt.GPT(gpt.GPTConfig(vocab_size=65, block_size=256, n_layer=p["n_layer"], n_head=p["n_head"],
                                  n_embd=p["n_embd"]))
    count = sum(t.numel() for t in model.parameters())
    assert count == expected_params(p["n_layer"], p["n_embd"])
    assert abs(count / 1e6 - spec_millions) / spec_millions < 0.015  # the README's table, to its rounding


def test_state_dict_keys_are_gpt2_names():
    model = tiny_model(n_layer=2)
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                "transformer.ln_f.bias", "lm_head.weight"}
    for i in range(2):
        for name in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                     "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                     "mlp.c_proj.weight", "mlp.c_proj.bias"):
            expected.add(f"transformer.h.{i}.{name}")
    assert set(model.state_dict()) == expected
    assert model.state_dict()["transformer.h.0.attn.c_attn.weight"].shape == (3 * 16, 16)  # (out, in)


def test_lm_head_is_the_token_embedding():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_init_follows_gpt2_in_every_layer():
    torch.manual_seed(0)
    n_layer = 3
    model = gpt.GPT(gpt.GPTConfig(vocab_size=65, block_size=256, n_layer=n_layer, n_head=4, n_embd=256))
    for name, p in model.named_parameters():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert torch.all(p == 1), name
        elif p.dim() == 1:  # every bias, of the linear layers and the LayerNorms
            assert torch.all(p == 0), name
        else:  # residual projections (attention's and the MLP's, in every block) scaled by 1/sqrt(2 n_layer)
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
            assert abs(p.std().item() - std) < 0.03 * std, (name, p.std().item(), std)
            assert abs(p.mean().item()) < 4 * std / math.sqrt(p.numel()), name
    assert sum(name.endswith("c_proj.weight") for name, _ in model.named_parameters()) == 2 * n_layer


@settings(max_examples=20, deadline=None)
@given(t=st.integers(0, 7), seed=st.integers(0, 1000))
def test_causality_future_tokens_change_no_earlier_logit(t, seed):
    model = tiny_model()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(11, (2, 8), generator=g)
    changed = idx.clone()
    changed[:, t + 1:] = torch.randint(11, (2, 8 - t - 1), generator=g)
    with torch.no_grad():
        a = model(idx)
        b = model(changed)
    assert torch.equal(a[:, :t + 1], b[:, :t + 1])


def test_loss_of_a_fresh_model_is_near_uniform():
    model = tiny_model(vocab_size=65, block_size=8, n_embd=32)
    idx, targets = torch.randint(65, (2, 4, 8), generator=torch.Generator().manual_seed(0))
    loss = gpt.next_token_loss(model(idx), targets)
    assert abs(loss.item() - math.log(65)) < 0.1


# ----------------------------------------------------------------------------- optimizer and schedule
SCHEDULE = SimpleNamespace(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=1100, lr_decay_iters=None)


def test_lr_warmup_starts_small_and_reaches_peak():
    assert gpt.get_lr(0, SCHEDULE) == pytest.approx(1e-3 * 1 / 101)
    assert gpt.get_lr(99, SCHEDULE) == pytest.approx(1e-3 * 100 / 101)
    assert gpt.get_lr(100, SCHEDULE) == pytest.approx(1e-3)


def test_lr_cosine_midpoint_and_floor():
    assert gpt.get_lr(600, SCHEDULE) == pytest.approx((1e-3 + 1e-4) / 2)
    assert gpt.get_lr(1100, SCHEDULE) == pytest.approx(1e-4)
    assert gpt.get_lr(5000, SCHEDULE) == pytest.approx(1e-4)
    decay_early = SimpleNamespace(**{**vars(SCHEDULE), "lr_decay_iters": 600})
    assert gpt.get_lr(350, decay_early) == pytest.approx((1e-3 + 1e-4) / 2)
    assert gpt.get_lr(700, decay_early) == pytest.approx(1e-4)


def test_weight_decay_applies_exactly_to_matrices_and_embeddings():
    model = tiny_model()
    optimizer = gpt.make_optimizer(model, SimpleNamespace(weight_decay=0.1, learning_rate=1e-3), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    free = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed == {n for n, p in model.named_parameters() if p.dim() >= 2}
    assert free == {n for n, p in model.named_parameters() if p.dim() < 2}
    assert "transformer.wte.weight" in decayed and "transformer.h.0.ln_1.weight" in free
    assert optimizer.defaults["betas"] == (0.9, 0.99) and optimizer.defaults["eps"] == 1e-8


# ----------------------------------------------------------------------------- sampling and the KV cache
def test_kv_cache_greedy_generation_matches_uncached_past_block_size():
    model = tiny_model(block_size=8)
    prompt = torch.tensor([[1, 2, 3]])
    cached = torch.cat(ids_of(gpt.generate(model, prompt, 2 * 8, temperature=0, use_cache=True)), dim=1)
    uncached = torch.cat(ids_of(gpt.generate(model, prompt, 2 * 8, temperature=0, use_cache=False)), dim=1)
    assert cached.shape == (1, 16)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("block_size", [1, 3, 8])
def test_kv_cache_sampling_matches_uncached_with_the_same_seed(block_size):
    model = tiny_model(block_size=block_size)
    prompt = torch.tensor([[4]])
    runs = [torch.cat(ids_of(gpt.generate(model, prompt, 3 * block_size + 2, temperature=1.0, top_k=5,
                                        generator=torch.Generator().manual_seed(7), use_cache=c)), dim=1)
            for c in (True, False)]
    assert torch.equal(runs[0], runs[1])


def test_temperature_zero_is_argmax_and_top_k_one_is_greedy():
    model = tiny_model()
    prompt = torch.tensor([[1, 2]])
    greedy = torch.cat(ids_of(gpt.generate(model, prompt, 6, temperature=0)), dim=1)
    top1 = torch.cat(ids_of(gpt.generate(model, prompt, 6, temperature=1.0, top_k=1,
                                       generator=torch.Generator().manual_seed(0))), dim=1)
    with torch.no_grad():
        first = model(prompt)[0, -1].argmax().item()
    assert greedy[0, 0].item() == first
    assert torch.equal(greedy, top1)


def hand_softmax(logits, temperature=1.0):  # in plain Python floats, not the code under test
    scaled = [z / temperature for z in logits]
    top = max(scaled)
    weights = [math.exp(z - top) for z in scaled]
    return [w / sum(weights) for w in weights]


def peaked_model(block_size=8, seed=0):
    """Weights 10-25x GPT-2's init: sharp attention, so the next token depends on the whole context."""
    model = tiny_model(block_size=block_size, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5 if p.size(0) > 32 else 0.2, generator=torch.Generator().manual_seed(seed))
    return model


def first_distribution(model, prompt, **sampling):
    _, probs = next(gpt.generate(model, prompt, 1, generator=torch.Generator().manual_seed(0), **sampling))
    return probs[0].tolist()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_divides_the_logits_before_the_softmax(temperature):
    model, prompt = peaked_model(), torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits = model(prompt)[0, -1].tolist()
    probs = first_distribution(model, prompt, temperature=temperature)
    assert probs == pytest.approx(hand_softmax(logits, temperature), abs=1e-6)


def test_a_lower_temperature_sharpens_and_a_higher_one_flattens():
    model, prompt = peaked_model(), torch.tensor([[1, 2, 3]])
    entropy = lambda probs: -sum(p * math.log(p) for p in probs if p > 0)
    cold, warm, hot = (first_distribution(model, prompt, temperature=t) for t in (0.5, 1.0, 2.0))
    assert max(cold) > max(warm) > max(hot)
    assert entropy(cold) < entropy(warm) < entropy(hot) < math.log(len(hot))


@pytest.mark.parametrize("top_k", [2, 3, 5, 11, 50])
def test_top_k_keeps_the_k_likeliest_tokens_renormalised(top_k):
    model, prompt = peaked_model(), torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits = model(prompt)[0, -1].tolist()
    likeliest = sorted(range(len(logits)), key=lambda i: -logits[i])[:top_k]
    kept = hand_softmax([logits[i] for i in likeliest], 0.8)
    expected = [kept[likeliest.index(i)] if i in likeliest else 0.0 for i in range(len(logits))]
    assert first_distribution(model, prompt, temperature=0.8, top_k=top_k) == pytest.approx(expected, abs=1e-6)
    drawn = ids_of(gpt.generate(model, prompt, 1, temperature=0.8, top_k=top_k,
                                generator=torch.Generator().manual_seed(1)))
    assert drawn[0].item() in likeliest


def test_past_block_size_the_model_sees_the_latest_tokens_as_a_window_of_at_least_three_quarters():
    class Recorder(torch.nn.Module):  # a stand-in model: remembers each context it is shown
        config, transformer = SimpleNamespace(block_size=8), SimpleNamespace(h=[])
        seen = []
        def forward(self, idx, cache=None):
            self.seen.append(idx[0].tolist())
            return torch.eye(11)[len(self.seen) % 11].expand(1, idx.size(1), 11)
    model, prompt = Recorder(), torch.tensor([[1, 2, 3]])
    ids = [1, 2, 3] + [i.item() for i in ids_of(gpt.generate(model, prompt, 30, temperature=0, use_cache=False))]
    for step, window in enumerate(model.seen):
        context = ids[:3 + step]  # all tokens before the one this step writes
        assert window == context[-len(window):], f"step {step}: not the latest tokens"
        assert min(len(context), 6) <= len(window) <= 8, f"step {step}: a window of {len(window)}"
    assert max(len(window) for window in model.seen) == 8  # the whole block is used before it slides


@pytest.mark.parametrize("block_size, prompt_length", [(4, 2), (8, 3), (8, 11), (9, 1)])
def test_kv_cache_draws_from_the_same_distributions_as_the_uncached_path_past_block_size(block_size, prompt_length):
    model = peaked_model(block_size=block_size)
    prompt = torch.randint(11, (1, prompt_length), generator=torch.Generator().manual_seed(2))
    runs = [list(gpt.generate(model, prompt, 4 * block_size, temperature=1.0,
                              generator=torch.Generator().manual_seed(5), use_cache=c)) for c in (True, False)]
    for (id_a, probs_a), (id_b, probs_b) in zip(*runs):
        assert torch.equal(id_a, id_b)
        assert (probs_a - probs_b).abs().max().item() < 1e-5


def test_the_peaked_model_depends_on_more_than_the_last_token():  # or the two tests above would prove little
    model = peaked_model()
    a, b = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[7, 2, 3, 4]])
    with torch.no_grad():
        assert (model(a)[0, -1] - model(b)[0, -1]).abs().max().item() > 0.1


@pytest.mark.parametrize("cuts", [(0, 3, 4, 5, 6, 7, 8), (0, 3, 5, 8)])  # a prompt of 3, then 1 at a time or 2 and 3
def test_kv_cache_logits_equal_the_full_forward(cuts):
    model = peaked_model(block_size=8)
    idx = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(idx)
        cache = [{} for _ in model.transformer.h]
        chunks = [model(idx[:, a:b], cache=cache) for a, b in zip(cuts, cuts[1:])]
    diff = (torch.cat(chunks, dim=1) - full).abs().max().item()
    assert diff < 1e-5, f"max |cached - full| = {diff}"


def test_the_causal_mask_is_built_only_where_a_path_uses_it(monkeypatch):
    built = []
    tril = torch.Tensor.tril
    monkeypatch.setattr(torch.Tensor, "tril", lambda self, *a, **k: built.append(self.shape) or tril(self, *a, **k))
    model, idx = tiny_model(n_layer=2), torch.randint(11, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(idx)  # training's shape (T == Tk): the fused kernel's is_causal, no mask
        cache = [{} for _ in model.transformer.h]
        model(idx[:, :4], cache=cache)
        model(idx[:, 4:5], cache=cache)  # one new token sees every cached key: no mask either
        assert built == []
        model(idx[:, 5:6].repeat(1, 2), cache=cache)  # two new tokens at once: the second may not see the first
        assert built == [(2, 7)] * 2  # one per layer
        by_hand(model, True)(idx)  # the formula by hand applies its mask itself
        assert built[2:] == [(6, 6)] * 2


# ----------------------------------------------------------------------------- training and the files it writes
def losses_in(out_dir):
    rows = open(os.path.join(out_dir, "log.csv"), encoding="utf-8").read().splitlines()[1:]
    return [(int(r.split(",")[0]), float(r.split(",")[1]), float(r.split(",")[2])) for r in rows]


def test_training_lowers_the_loss_and_writes_its_files(trained):
    rows = open(os.path.join(trained.out_dir, "log.csv"), encoding="utf-8").read().splitlines()
    assert rows[0] == "iter,train_loss,val_loss,lr,tokens_per_s,elapsed_s"
    iters = [int(r.split(",")[0]) for r in rows[1:]]
    val = [float(r.split(",")[2]) for r in rows[1:]]
    assert iters == [0, 20, 40, 60]
    assert val[-1] < val[0] - 0.5, f"val loss went {val[0]} -> {val[-1]}"
    assert "best val loss" in trained.stdout


def test_the_first_90_percent_of_the_text_trains_and_the_last_10_percent_is_val(tmp_path):
    text = "".join(chr(ord("a") + i % 7) for i in range(900)) + "XYZ" * 33 + "!"  # 900 + 100 characters
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    data = gpt.load_data(str(tmp_path / "text.txt"), block_size=8)
    assert data.tokenizer.decode(data.splits["train"].tolist()) == text[:900]
    assert data.tokenizer.decode(data.splits["val"].tolist()) == text[900:]


@pytest.fixture(scope="session")
def held_out(tmp_path_factory):
    """A run on a text whose last tenth (val) is pairs the first nine tenths never show: it learns, then overfits."""
    folder = tmp_path_factory.mktemp("held_out")
    (folder / "text.txt").write_text("ab" * 450 + "cd" * 50, encoding="utf-8")  # no newline, either
    args = [*TINY_RUN, "--n_layer", "1", "--n_embd", "16", "--block_size", "8", "--max_iters", "80",
            "--learning_rate", "1e-2", "--data", str(folder / "text.txt"), "--out_dir", str(folder / "run"),
            "--dtype", "float32"]
    assert gpt.main(args) == 0
    return SimpleNamespace(out_dir=folder / "run", data=str(folder / "text.txt"), log=losses_in(folder / "run"))


def test_the_model_learns_from_the_train_split_only(held_out):
    *_, (step, train_loss, val_loss) = held_out.log
    assert step == 80 and train_loss < 0.3 and val_loss > 1.0, (train_loss, val_loss)


def test_best_pt_keeps_the_weights_of_the_best_eval_not_the_last(held_out):
    best, last = (torch.load(held_out.out_dir / f, weights_only=True) for f in ("best.pt", "ckpt.pt"))
    best_step, _, best_val = min(held_out.log, key=lambda row: row[2])
    assert best["iter"] == best_step < last["iter"] == 80  # val rose after its best: overfitting
    cfg = SimpleNamespace(**{**vars(EVAL_CFG), "seed": 1337, "eval_iters": 4, "batch_size": 8, "grad_accum": 1})
    run = gpt.Run()
    gpt.evaluate(gpt.model_from(best, CPU), gpt.load_data(held_out.data, 8), cfg, contextlib.nullcontext(), CPU, run)
    assert run.log[0][2] == pytest.approx(best_val, abs=1e-4)  # the weights in best.pt score the best val loss


class MeanTarget(torch.nn.Module):
    """A stand-in model whose loss is 0 on a split of zeros (it is sure of 0) and ln 2 on a split of ones (a coin)."""
    def forward(self, idx):
        return torch.stack([torch.zeros(idx.shape), torch.where(idx == 0, -math.inf, 0.0)], dim=-1)


CPU = torch.device("cpu")
EVAL_CFG = SimpleNamespace(seed=0, eval_iters=3, batch_size=4, block_size=8, grad_accum=2, learning_rate=1e-3,
                           min_lr=1e-4, warmup_iters=10, max_iters=50, lr_decay_iters=None, out_dir="out")


def zeros_and_ones(per_char=1.0):  # a train split of zeros and a val split of ones
    return gpt.Data(None, dict(train=np.zeros(100, np.int64), val=np.ones(100, np.int64)), dict(train=None, val=None),
                    per_char)


class NaNModel(torch.nn.Module):
    def forward(self, idx):
        return torch.full((*idx.shape, 2), math.nan)


def test_an_eval_that_finds_a_nan_stops_the_run_before_anything_is_saved():
    with pytest.raises(gpt.GPTError, match="val loss became nan at step 0"):
        gpt.evaluate(NaNModel(), zeros_and_ones(), EVAL_CFG, contextlib.nullcontext(), CPU, gpt.Run())


def test_eval_measures_each_split_on_its_own_data():
    run = gpt.Run()
    gpt.evaluate(MeanTarget(), zeros_and_ones(), EVAL_CFG, contextlib.nullcontext(), CPU, run)
    assert run.log[0][1:3] == [0.0, round(math.log(2), 4)]


def test_an_eval_logs_the_step_both_losses_the_last_lr_the_speed_and_the_time_trained(monkeypatch, capsys):
    monkeypatch.setattr(gpt.time, "perf_counter", lambda: 12.0)  # a clock that reads 12 s now
    run = gpt.Run(iter=30, start=2.0, clock=10.0, clock_iter=20, trained_s=100.0, best_val_loss=1.5)
    assert gpt.evaluate(MeanTarget(), zeros_and_ones(), EVAL_CFG, contextlib.nullcontext(), CPU, run) is True
    progress = (29 - 10) / (50 - 10)  # the lr of the step just taken, step 29: 19 of the 40 cosine steps
    lr = 1e-4 + 0.5 * (1 + math.cos(math.pi * progress)) * (1e-3 - 1e-4)
    # 10 steps x 4 sequences x 8 tokens in the 2 s since the last eval; 100 s before this process, 10 in it
    assert run.log == [[30, 0.0, 0.6931, pytest.approx(lr), 160, 110.0]]
    assert (run.clock, run.clock_iter) == (12.0, 30)  # the next stretch starts now
    assert run.best_val_loss == pytest.approx(math.log(2))
    run.iter, run.best_val_loss = 40, 0.5
    monkeypatch.setattr(gpt.time, "perf_counter", lambda: 13.0)
    assert gpt.evaluate(MeanTarget(), zeros_and_ones(0.25), EVAL_CFG, contextlib.nullcontext(), CPU, run) is False
    assert run.best_val_loss == 0.5  # BPE: 0.25 tokens a character
    assert capsys.readouterr().out.splitlines()[-1].endswith("val loss 0.6931 (0.1733 per character)")


def test_checkpoints_load_with_weights_only_and_carry_the_spec_keys(trained):
    best = torch.load(os.path.join(trained.out_dir, "best.pt"), weights_only=True, map_location="cpu")
    ckpt = torch.load(os.path.join(trained.out_dir, "ckpt.pt"), weights_only=True, map_location="cpu")
    for c in (best, ckpt):
        assert {"model", "config", "vocab", "iter", "best_val_loss"} <= c.keys()
        assert not any(k.startswith("_orig_mod.") for k in c["model"])
        assert c["config"]["n_embd"] == 32 and c["config"]["vocab_size"] == len(c["vocab"])
    assert {"optimizer", "rng"} <= ckpt.keys()
    assert ckpt["iter"] == 60
    logged = [float(r.split(",")[2]) for r in open(os.path.join(trained.out_dir, "log.csv"), encoding="utf-8")
              .read().splitlines()[1:]]
    assert round(best["best_val_loss"], 4) == min(logged)  # log.csv rounds to 4 places


def test_sample_with_the_same_seed_prints_the_same_text(trained):
    args = ["--sample", "--out_dir", trained.out_dir, "--max_new_tokens", "80", "--seed", "5", "--prompt", "KING"]
    first, second = call_gpt(*args), call_gpt(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("KING") and len(first.stdout) == len("KING") + 80 + 1  # text, then a newline
    assert "tokens/s" in first.stderr and "tokens/s" not in first.stdout  # stdout carries the text alone
    other = call_gpt(*args[:-4], "--seed", "6", "--prompt", "KING")
    assert other.stdout != first.stdout



def test_sample_into_a_pipe_closed_early_ends_quietly(trained):  # python gpt.py --sample | head -1
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "gpt.py"), "--sample", "--out_dir", trained.out_dir,
                             "--max_new_tokens", "5000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()  # the reader has what it wanted
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == -signal.SIGPIPE and "Traceback" not in err and "Error" not in err, err

class ShownWhenFlushed(io.StringIO):  # a notebook kernel's streams: shown when flushed, in that order
    def __init__(self, shown):
        super().__init__()
        self.shown = shown

    def flush(self):
        self.shown.append(self.getvalue())
        self.seek(0)
        self.truncate()


def test_in_a_notebook_the_sampling_line_comes_before_the_text(trained, monkeypatch):
    shown = []
    monkeypatch.setattr(sys, "stdout", ShownWhenFlushed(shown))
    monkeypatch.setattr(sys, "stderr", ShownWhenFlushed(shown))
    assert gpt.main(["--sample", "--out_dir", trained.out_dir, "--prompt", "ROMEO", "--max_new_tokens", "5"]) == 0
    text = "".join(shown)
    assert text.startswith(f"sampling {trained.out_dir}") and text.index("ROMEO") > text.index("val loss"), text
    assert re.search(r"5 tokens in [\d.]+s", text), text  # flushed too, not lost


def test_num_samples_are_separated_by_a_dashes_line(trained):
    result = call_gpt("--sample", "--out_dir", trained.out_dir, "--max_new_tokens", "20", "--num_samples", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n---\n") == 2


# ----------------------------------------------------------------------------- command line
def test_compile_flag_accepts_nanogpt_habits():
    for argv, expected in ((["--compile"], True), (["--compile=True"], True), (["--compile=False"], False),
                           (["--compile", "False"], False), ([], None)):
        args = gpt.parse_args(argv)
        assert getattr(args, "compile", None) is expected, argv


def main_run_as(file, **replaced):
    """gpt.main as it runs in a notebook's or a script's namespace (__main__), with that __file__ (None: none,
    as in a pasted cell)."""
    namespace = {**vars(gpt), "__name__": "__main__", "__file__": file, **replaced}
    if file is None:
        del namespace["__file__"]
    return type(gpt.main)(gpt.main.__code__, namespace, "main", gpt.main.__defaults__)


KERNEL_ARGV = ["ipykernel_launcher.py", "-f", "/k/kernel-1.json"]


@pytest.mark.parametrize("how, file, argv, config", [
    ("a pasted cell in a kernel", None, KERNEL_ARGV, "medium"),
    ("exec(open('gpt.py').read())", None, ["-c", "--bogus"], "medium"),
    ("import gpt; gpt.main() in a kernel", gpt.__file__, KERNEL_ARGV, "medium"),
    ("main() after %run -i gpt.py", gpt.__file__, KERNEL_ARGV, "medium"),
    ("VS Code's interactive window, which sets __file__", "/home/me/notebook.ipynb", KERNEL_ARGV, "medium"),
    ("%run gpt.py --config tiny", gpt.__file__, [os.path.relpath(gpt.__file__), "--config", "tiny"], "tiny"),
    ("python gpt.py --config tiny, torchrun", gpt.__file__, [os.path.relpath(gpt.__file__), "--config", "tiny"],
     "tiny"),
    ("python -m gpt --config tiny", gpt.__file__, [gpt.__file__, "--config", "tiny"], "tiny"),
])
def test_main_reads_the_command_line_only_when_it_runs_this_file(monkeypatch, how, file, argv, config):
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # in a kernel or not, the rule is the same
    monkeypatch.setattr(sys, "argv", argv)
    ran = []
    main = main_run_as(file, train=lambda cfg, resume, init: ran.append(cfg) or 0)
    assert main() == 0 and ran[0].config == config, how


def test_in_a_notebook_a_typo_in_mains_argv_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", KERNEL_ARGV)
    with pytest.raises(SystemExit) as exit_info:
        main_run_as(None)(["--config", "tiny", "--learnin_rate", "1"])  # a later cell's typo
    assert exit_info.value.code == 2 and "did you mean --learning_rate?" in capsys.readouterr().err


def test_flags_override_one_field_of_the_preset(data_file, tmp_path):
    args = ["--config", "small", "--n_layer", "3", "--learning_rate=0.01", "--block_size", "16", "--batch_size", "2",
            "--eval_iters", "1", "--max_iters", "0", "--max_new_tokens", "1", "--data", data_file, "--out_dir",
            str(tmp_path), "--device", "cpu"]
    assert gpt.main(args) == 0
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    small, cfg = gpt.PRESETS["small"], ckpt["config"]
    assert (cfg["n_layer"], cfg["learning_rate"], cfg["block_size"]) == (3, 0.01, 16)  # the flags
    assert all(cfg[k] == small[k] for k in small if k not in ("n_layer", "learning_rate", "batch_size",
                                                               "eval_iters", "max_iters"))  # the preset
    assert cfg["weight_decay"] == 0.1 and cfg["grad_clip"] == 1.0  # the defaults
    assert {int(k.split(".")[2]) for k in ckpt["model"] if k.startswith("transformer.h.")} == {0, 1, 2}
    assert ckpt["model"]["transformer.wpe.weight"].shape == (16, small["n_embd"])


# ----------------------------------------------------------------------------- microgpt.py computes the same function
import microgpt  # noqa: E402  (after gpt's tests, as the twin comes after the reference)

TWIN_TOL = 1e-9


def twin_of(floats):
    """microgpt.py's state_dict of Values from gpt.py's weights as nested float lists, keeping the tie."""
    sd = {k: [[microgpt.Value(x) for x in row] for row in w] if isinstance(w[0], list)
          else [microgpt.Value(x) for x in w] for k, w in floats.items() if k != "lm_head.weight"}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


@st.composite
def twin_cases(draw):
    n_head, head_dim = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    # n_embd 1 would be no model: LayerNorm of one number is 0, every gradient before it is rounding noise
    # (1e-17), and AdamW divides noise by its own size: the twins' steps would differ by the learning rate
    head_dim = max(head_dim, 3 - n_head)  # n_embd >= 2
    B, T, vocab_size = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=vocab_size, block_size=T, n_layer=draw(st.integers(1, 2)),
                                  n_head=n_head, n_embd=n_head * head_dim, dropout=0.0)).double()
    with torch.no_grad():  # LayerNorm gains and biases off their init values, so a mix-up would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    batches = [(torch.randint(vocab_size, (B, T), generator=g), torch.randint(vocab_size, (B, T), generator=g))
               for _ in range(3)]
    twin = twin_of({k: v.tolist() for k, v in model.state_dict().items()})
    return SimpleNamespace(model=model, twin=twin, n_head=n_head, batches=batches, T=T)


def flat(w):
    return [x for row in w for x in (row if isinstance(row, list) else [row])]


def max_diff(values, tensor):
    return max(abs(v.data - t) for v, t in zip(flat(values), tensor.flatten().tolist()))


@settings(max_examples=25, deadline=None)
@given(twin_cases())
def test_twins_compute_the_same_logits_and_loss(case):
    idx, targets = case.batches[0]
    logits = case.model(idx)
    loss = gpt.next_token_loss(logits, targets)
    twin_logits, twin_loss = microgpt.forward(case.twin, case.n_head, idx.tolist(), targets.tolist())
    diff = max(abs(a.data - b) for row_a, row_b in zip(twin_logits, logits.tolist())
               for xa, xb in zip(row_a, row_b) for a, b in zip(xa, xb))
    assert diff < TWIN_TOL, f"logits differ by up to {diff:.3e}"
    assert abs(twin_loss.data - loss.item()) < TWIN_TOL, f"loss: {twin_loss.data!r} vs {loss.item()!r}"


@settings(max_examples=25, deadline=None)
@given(twin_cases())
def test_twins_compute_the_same_gradients(case):
    idx, targets = case.batches[0]
    gpt.next_token_loss(case.model(idx), targets).backward()
    microgpt.forward(case.twin, case.n_head, idx.tolist(), targets.tolist())[1].backward()
    grads = dict(case.model.named_parameters())  # the tied matrix once, as transformer.wte.weight
    worst = max((max(abs(v.grad - t) for v, t in zip(flat(case.twin[k]), p.grad.flatten().tolist())), k)
                for k, p in grads.items())
    assert worst[0] < TWIN_TOL, f"gradient of {worst[1]} differs by up to {worst[0]:.3e}"


@settings(max_examples=15, deadline=None)
@given(twin_cases())
def test_twins_take_the_same_three_optimizer_steps(case):
    # grad_clip: half the first step's gradient norm, so that clipping is sure to act (a fixed one, as small
    # as 1e-4, missed the gradients of some drawn models and clipped nothing)
    idx, targets = case.batches[0]
    gpt.next_token_loss(case.model(idx), targets).backward()
    first_norm = torch.cat([p.grad.flatten() for p in case.model.parameters()]).norm().item()
    case.model.zero_grad(set_to_none=True)
    cfg = SimpleNamespace(learning_rate=1e-2, min_lr=1e-3, warmup_iters=2, max_iters=4, lr_decay_iters=None,
                          weight_decay=0.5, grad_clip=first_norm / 2)
    optimizer = gpt.make_optimizer(case.model, cfg, torch.device("cpu"))
    params = microgpt.parameters(case.twin)
    m, v = [0.0] * len(params), [0.0] * len(params)
    clipped = 0
    for it, (idx, targets) in enumerate(case.batches):
        lr = gpt.get_lr(it, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gpt.next_token_loss(case.model(idx), targets).backward()
        clipped += torch.nn.utils.clip_grad_norm_(case.model.parameters(), cfg.grad_clip).item() > cfg.grad_clip
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        microgpt.forward(case.twin, case.n_head, idx.tolist(), targets.tolist())[1].backward()
        microgpt.adamw_step(params, m, v, it + 1, microgpt.get_lr(it, cfg), cfg)
    assert clipped > 0
    worst = max((max_diff(case.twin[k], p.detach()), k) for k, p in case.model.named_parameters())
    assert worst[0] < TWIN_TOL, f"after 3 steps {worst[1]} differs by up to {worst[0]:.3e}"


@settings(max_examples=15, deadline=None)
@given(twin_cases())
def test_twins_generate_the_same_greedy_tokens(case):
    prompt = case.batches[0][0][:1, :1]
    ours = torch.cat(ids_of(gpt.generate(case.model.eval(), prompt, 2 * case.T + 1, temperature=0)), dim=1)
    theirs = microgpt.generate(case.twin, case.n_head, case.T, prompt[0].tolist(), 2 * case.T + 1, temperature=0)
    assert ours[0].tolist() == theirs
    # top_k 1 leaves one token to draw: the greedy one, at any temperature, in both
    drawn = microgpt.generate(case.twin, case.n_head, case.T, prompt[0].tolist(), 2 * case.T + 1, temperature=2.0,
                              rng=__import__("random").Random(0), top_k=1)
    assert drawn == theirs


def test_twins_share_the_lr_schedule():
    for cfg in (SCHEDULE, SimpleNamespace(learning_rate=2e-3, min_lr=0.0, warmup_iters=0, max_iters=50,
                                          lr_decay_iters=30)):
        for it in range(cfg.max_iters + 5):
            assert microgpt.get_lr(it, cfg) == pytest.approx(gpt.get_lr(it, cfg), rel=1e-12, abs=0), it


def test_twins_share_state_dict_keys_and_the_tie():
    model = tiny_model(vocab_size=5, block_size=4, n_layer=2, n_head=2, n_embd=4)
    twin = microgpt.init_state_dict(vocab_size=5, block_size=4, n_layer=2, n_embd=4, rng=__import__("random").Random(0))
    assert set(twin) == set(model.state_dict())
    assert twin["lm_head.weight"] is twin["transformer.wte.weight"]
    for k, t in model.state_dict().items():
        assert len(flat(twin[k])) == t.numel(), k


# ----------------------------------------------------------------------------- bad input: one clear line, never lost work
def assert_clean_failure(result, code, *names):
    """A clean failure: the exit code, every culprit named, and no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)


@pytest.mark.parametrize("args, flag", [
    (["--config", "huge"], "--config"), (["--n_layer", "0"], "--n_layer"), (["--n_embd", "-8"], "--n_embd"),
    (["--batch_size", "0"], "--batch_size"), (["--block_size", "0"], "--block_size"), (["--top_k", "0"], "--top_k"),
    (["--temperature", "-1"], "--temperature"), (["--learning_rate", "nan"], "--learning_rate"),
    (["--dropout", "1.5"], "--dropout"), (["--max_iter", "5"], "--max_iter"), (["--compile", "maybe"], "--compile"),
    (["--dtype", "float64"], "--dtype"), (["--device", "cuda:0"], "--device"), (["--gelu", "relu"], "--gelu")])
def test_usage_errors_name_the_flag_and_exit_2(args, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own exit, as in a real run (checked below)
        gpt.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and err.strip().splitlines()[-1].startswith("gpt.py: error:"), err


@pytest.mark.parametrize("args", [["--learning_rate", "1e-3", "--min_lr", "1e-2"],
                                  ["--learning_rate", "1e-4"]])  # below tiny's min_lr, 5e-4
def test_a_min_lr_above_the_learning_rate_is_a_usage_error_the_schedule_would_rise(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpt.main([*TINY_RUN, "--max_iters", "1", *args, "--out_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--min_lr" in err and "would rise" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("typo, suggestion", [("--max_iter", "--max_iters"), ("--resum", "--resume"),
                                              ("--overwite", "--overwrite"), ("tiny", "--help")])
def test_a_mistyped_flag_is_one_line_that_names_the_closest_flag(typo, suggestion, capsys):
    with pytest.raises(SystemExit):
        gpt.main([typo])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip().endswith(f"did you mean {suggestion}?"), err


def test_a_seed_too_big_for_torch_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpt.main(["--seed", str(2**64)])
    assert exit_info.value.code == 2 and "--seed" in capsys.readouterr().err


def test_a_usage_error_in_a_real_process_is_one_line_and_exit_2():
    assert_clean_failure(run_gpt("--top_k", "0"), 2, "argument --top_k: must be at least 1 (and below 2**63), got 0")


def test_a_min_lr_above_the_learning_rate_is_a_usage_error_whichever_side_set_it(trained, data_file, tmp_path):
    result = call_gpt(*TINY_RUN, "--min_lr", "0.01", "--data", data_file, "--out_dir", str(tmp_path / "a"))
    assert_clean_failure(result, 2, "min_lr 0.01", "--learning_rate 0.003", "lower --min_lr")
    # a fine-tune's lower --learning_rate under the min_lr its checkpoint carries (3e-4 from TINY_RUN's 3e-3
    # would be fine; 1e-4 is below the tiny preset's 5e-4): the schedule would rise, so it is refused
    result = call_gpt("--init_from", os.path.join(trained.out_dir, "best.pt"), "--learning_rate", "1e-4",
                      "--data", data_file, "--out_dir", str(tmp_path / "b"))
    assert_clean_failure(result, 2, "--min_lr", "--learning_rate 0.0001")
    assert not os.path.exists(tmp_path / "b")  # refused before anything was written


def test_ctrl_c_while_torch_loads_ends_quietly_with_130(tmp_path):
    # SIGINT the moment `import torch` starts: a hook on the import system, so the timing is exact
    code = ("import importlib.abc, os, runpy, signal, sys\n"
            "class CtrlC(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n"
            "sys.meta_path.insert(0, CtrlC())\n"
            f"sys.argv = ['gpt.py', '--help']\nrunpy.run_path({os.path.join(HERE, 'gpt.py')!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""  # it stopped before --help


def test_n_embd_not_divisible_by_n_head_names_both_values(data_file, tmp_path):
    result = call_gpt("--config", "tiny", "--n_embd", "100", "--n_head", "3", "--data", data_file,
                     "--out_dir", str(tmp_path))
    assert_clean_failure(result, 2, "--n_embd 100", "--n_head 3")


@pytest.mark.parametrize("content, problem", [
    (None, "not found"), (b"", "has 0 tokens"), (b"abc\xff\xfe def" * 50, "not UTF-8"), (b"x" * 100, "too short")])
def test_bad_data_files_are_named_with_their_problem(tmp_path, content, problem):
    path = tmp_path / "text.txt"
    if content is not None:
        path.write_bytes(content)
    result = call_gpt(*TINY_RUN, "--data", str(path), "--out_dir", str(tmp_path / "out"))
    assert_clean_failure(result, 1, str(path), problem)


def test_a_val_split_shorter_than_a_block_is_refused(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcdefgh" * 20, encoding="utf-8")  # 160 characters: the val split gets 16, block needs 17
    result = call_gpt(*TINY_RUN, "--data", str(path), "--out_dir", str(tmp_path / "out"))
    assert_clean_failure(result, 1, str(path), "val split", "block_size + 1 = 17")


def test_missing_default_text_without_network_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpt, "TINY_SHAKESPEARE_URL", "file:///nonexistent/input.txt")
    monkeypatch.setitem(gpt.__dict__, "__file__", str(tmp_path / "gpt.py"))  # as if pasted alone into a folder
    assert gpt.main(["--config", "tiny", "--max_iters", "0"]) == 1
    err = capsys.readouterr().err
    assert "shakespeare.txt not found" in err and str(tmp_path / "shakespeare.txt") in err and "--data" in err


def test_missing_default_text_is_downloaded_when_possible(tmp_path, monkeypatch):
    source = tmp_path / "source.txt"
    source.write_text(TEXT, encoding="utf-8")
    work = tmp_path / "notebook"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(gpt, "TINY_SHAKESPEARE_URL", source.as_uri())
    monkeypatch.setitem(gpt.__dict__, "__file__", str(work / "gpt.py"))
    data = gpt.load_data("shakespeare.txt", block_size=16)
    assert (work / "shakespeare.txt").read_text(encoding="utf-8") == TEXT
    assert len(data.splits["train"]) + len(data.splits["val"]) == len(TEXT)


def test_prompt_with_unknown_characters_lists_them(trained):
    result = call_gpt("--sample", "--out_dir", trained.out_dir, "--prompt", "Hello, wörld ✨")
    assert_clean_failure(result, 1, "ö", "✨")
    assert result.stdout == ""  # nothing is printed before the check


def test_sample_without_a_checkpoint_says_where_it_looked_and_how_to_train(tmp_path):
    result = call_gpt("--sample", "--out_dir", str(tmp_path / "nowhere"))
    assert_clean_failure(result, 1, str(tmp_path / "nowhere" / "best.pt"), "python gpt.py --config tiny")


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    assert_clean_failure(call_gpt("--resume", "--out_dir", str(tmp_path)), 1, str(tmp_path / "ckpt.pt"))


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.9, 0.999])
def test_truncated_checkpoint_is_named_not_loaded(trained, tmp_path, fraction):
    blob = open(os.path.join(trained.out_dir, "best.pt"), "rb").read()
    (tmp_path / "best.pt").write_bytes(blob[:int(len(blob) * fraction)])
    result = call_gpt("--sample", "--out_dir", str(tmp_path), "--max_new_tokens", "5")
    assert_clean_failure(result, 1, str(tmp_path / "best.pt"), "not a loadable checkpoint")


class Exploit:  # a pickle that would create a file when loaded without weights_only
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_checkpoint_with_foreign_pickled_objects_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned.txt"
    torch.save({"model": Exploit(str(target)), "config": {}, "vocab": "ab"}, tmp_path / "best.pt")
    result = call_gpt("--sample", "--out_dir", str(tmp_path))
    assert_clean_failure(result, 1, str(tmp_path / "best.pt"))
    assert not target.exists()


def test_resume_with_another_model_shape_says_what_differs(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained.out_dir, out)
    result = call_gpt("--resume", "--out_dir", str(out), "--n_layer", "2", "--n_embd", "48")
    assert_clean_failure(result, 1, "n_layer 1 -> 2", "n_embd 32 -> 48")


def test_resume_refuses_a_best_pt_in_ckpt_pts_place_and_a_changed_gelu(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained.out_dir, out)
    assert_clean_failure(call_gpt("--resume", "--out_dir", str(out), "--gelu", "tanh"), 1, "gelu exact -> tanh")
    shutil.copy(out / "best.pt", out / "ckpt.pt")  # best.pt keeps no optimizer
    assert_clean_failure(call_gpt("--resume", "--out_dir", str(out)), 1, "no optimizer state", "--init_from")


def test_resume_refuses_a_checkpoint_another_script_made_and_says_which(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained.out_dir, out)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)  # optimizer and all, but scripts/rl.py's run
    gpt.save_atomic({**ckpt, "made_by": {"script": "scripts/rl.py", "args": {"samples": 8}}}, str(out / "ckpt.pt"))
    assert_clean_failure(call_gpt("--resume", "--out_dir", str(out)), 1, "scripts/rl.py", "--init_from")


def test_a_checkpoint_missing_what_gpt_py_writes_is_named_not_a_traceback(trained, tmp_path):
    ckpt = torch.load(os.path.join(trained.out_dir, "best.pt"), weights_only=True)
    torch.save(dict(model=ckpt["model"], config={}, vocab=ckpt["vocab"]), tmp_path / "best.pt")
    assert_clean_failure(call_gpt("--sample", "--out_dir", str(tmp_path)), 1, "is not a gpt.py checkpoint")


def test_running_out_of_memory_is_one_line_that_names_the_flags_to_lower(data_file, tmp_path, monkeypatch):
    def allocates_too_much(self, idx, cache=None):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(gpt.GPT, "forward", allocates_too_much)
    result = call_gpt(*TINY_RUN, "--data", data_file, "--out_dir", str(tmp_path))
    assert_clean_failure(result, 1, "out of memory", "--batch_size", "--grad_accum")
    assert result.stderr.count("\n") == 1


def test_resume_with_another_vocabulary_says_what_differs(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained.out_dir, out)
    other = tmp_path / "other.txt"
    other.write_text("0123456789 " * 500, encoding="utf-8")
    result = call_gpt("--resume", "--out_dir", str(out), "--data", str(other))
    assert_clean_failure(result, 1, "vocabulary", str(other))


def test_unwritable_output_folder_fails_before_training(data_file, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    result = call_gpt(*TINY_RUN, "--data", data_file, "--out_dir", str(blocker / "out"))
    assert_clean_failure(result, 1, str(blocker / "out"), "not a folder that can be written")
    assert "step 1 " not in result.stdout and "eval" not in result.stdout


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_state(data_file, tmp_path):
    args = [*TINY_RUN, "--data", data_file, "--out_dir", str(tmp_path), "--eval_interval", "5", "--log_interval", "1",
            "--learning_rate", "1e6", "--warmup_iters", "0", "--grad_clip", "0"]
    result = call_gpt(*args)
    assert_clean_failure(result, 1, "loss became nan at step", "last good state")
    for name in ("ckpt.pt", "best.pt"):
        ckpt = torch.load(tmp_path / name, weights_only=True)
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values()), name


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    gpt.save_atomic({"iter": 1, "weights": torch.ones(3)}, path)

    def dies_midway(obj, f):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # as if killed here

    monkeypatch.setattr(gpt.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        gpt.save_atomic({"iter": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["iter"] == 1


def signals_at_default(command):
    """command, started with SIGINT and SIGTERM at their defaults whatever this process ignores: a script's
    background job (`bash run_tests.sh &`) starts with SIGINT ignored, and a child inherits an ignored signal.
    A small Python resets them and execs command (same process id); preexec_fn would be unsafe with torch's
    threads in this process."""
    reset = ("import os, signal, sys; [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)]; "
             "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", reset, *command]


def test_ctrl_c_saves_and_resume_continues_bit_exactly(data_file, tmp_path):
    args = [*TINY_RUN, "--data", data_file, "--max_iters", "100", "--eval_interval", "20", "--dropout", "0.1"]
    whole = tmp_path / "whole"
    assert run_gpt(*args, "--out_dir", str(whole)).returncode == 0
    part = tmp_path / "part"
    proc = subprocess.Popen(signals_at_default([sys.executable, os.path.join(HERE, "gpt.py"), *args, "--out_dir",
                                                str(part)]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait for the first eval after step 0, then press Ctrl-C
        if line.startswith("eval at step 20"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in out
    interrupted_at = torch.load(part / "ckpt.pt", weights_only=True)["iter"]
    assert 20 <= interrupted_at < 100
    resumed = run_gpt("--resume", "--out_dir", str(part))
    assert resumed.returncode == 0, resumed.stderr
    a, b = (torch.load(d / "ckpt.pt", weights_only=True) for d in (whole, part))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    losses = [[r.split(",")[:3] for r in open(d / "log.csv", encoding="utf-8").read().splitlines()] for d in (whole, part)]
    assert losses[0] == losses[1]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prompt=st.text(min_size=1, max_size=12))
@example(prompt="-:")  # found by hypothesis: argparse took a prompt starting with "-" for a flag
@example(prompt="--")  # and turned `--prompt=--` into an empty prompt
def test_any_unicode_prompt_samples_or_names_its_unknown_characters(trained, prompt, capsys):
    code = gpt.main(["--sample", "--out_dir", trained.out_dir, "--prompt", prompt, "--max_new_tokens", "3"])
    out, err = capsys.readouterr()
    vocab = torch.load(os.path.join(trained.out_dir, "best.pt"), weights_only=True)["vocab"]
    unknown = set(prompt) - set(vocab)
    if unknown:
        assert code == 1 and out == "" and all(repr(ch)[1:-1] in err for ch in unknown), err
    else:
        assert code == 0 and out.startswith(prompt) and len(out) == len(prompt) + 3 + 1


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=st.binary(max_size=400))
def test_any_bytes_as_data_either_train_or_fail_cleanly(tmp_path_factory, content, capsys):
    folder = tmp_path_factory.mktemp("bytes")
    (folder / "data.bin").write_bytes(content)
    code = gpt.main(["--data", str(folder / "data.bin"), "--out_dir", str(folder / "out"), "--n_layer", "1",
                     "--n_head", "1", "--n_embd", "8", "--block_size", "4", "--batch_size", "2", "--max_iters", "2",
                     "--eval_iters", "1", "--max_new_tokens", "5", "--device", "cpu"])
    err = capsys.readouterr().err
    if code == 0:
        assert os.path.exists(folder / "out" / "best.pt")
    else:
        assert code == 1 and err.startswith("error: data ") and str(folder / 'data.bin') in err and err.count("\n") == 1, err


# ----------------------------------------------------------------------------- the first hour: nothing lost, nothing silent
def snapshot(folder):
    return {f: (os.path.getmtime(os.path.join(folder, f)), open(os.path.join(folder, f), "rb").read())
            for f in sorted(os.listdir(folder))}


def test_a_fresh_run_into_a_trained_folder_is_refused_and_changes_nothing(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained.out_dir, out)
    before = snapshot(out)
    for extra in ([], ["--max_iters", "0"], ["--config", "medium"]):
        result = call_gpt(*TINY_RUN, "--data", trained.data, "--out_dir", str(out), *extra)
        assert_clean_failure(result, 1, f"{out} already holds a model", "step 60", "best val loss", "--resume",
                             "--out_dir", "--overwrite")
        assert result.stdout == ""  # not even the header: nothing started
    assert snapshot(out) == before  # the same files, the same bytes, the same modification times



def test_a_folder_holding_an_unreadable_model_is_protected_and_the_message_says_how_to_replace_it(data_file, tmp_path):
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    result = call_gpt(*TINY_RUN, "--data", data_file, "--out_dir", str(tmp_path))
    assert_clean_failure(result, 1, f"{tmp_path} already holds a model (unreadable)", "--overwrite")
    assert (tmp_path / "best.pt").read_bytes() == b"not a checkpoint"


def test_a_folder_holding_only_ckpt_pt_is_protected_too(trained, tmp_path):  # best.pt deleted, or not copied
    shutil.copy(os.path.join(trained.out_dir, "ckpt.pt"), tmp_path / "ckpt.pt")
    before = snapshot(tmp_path)
    result = call_gpt(*TINY_RUN, "--data", trained.data, "--out_dir", str(tmp_path))
    assert_clean_failure(result, 1, f"{tmp_path} already holds a model", "step 60")
    assert snapshot(tmp_path) == before

def test_a_refused_folder_is_named_by_ckpt_pts_step_the_one_resume_goes_on_from(trained, tmp_path):
    shutil.copytree(trained.out_dir, tmp_path / "run")  # stopped after its last best: best.pt is behind
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    torch.save({**ckpt, "iter": 75}, tmp_path / "run" / "ckpt.pt")
    result = call_gpt(*TINY_RUN, "--data", trained.data, "--out_dir", str(tmp_path / "run"))
    assert_clean_failure(result, 1, "already holds a model (step 75,", "--resume")

def test_overwrite_replaces_the_model_and_resume_still_continues_it(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained.out_dir, out)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    ckpt["log"][-1][-1] = 1000.0  # as if the first 60 steps had taken 1000 s
    torch.save(ckpt, out / "ckpt.pt")
    t0 = time.time()
    resumed = call_gpt("--resume", "--out_dir", str(out), "--max_iters", "70")
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter"] == 70
    last = open(out / "log.csv", encoding="utf-8").read().splitlines()[-1].split(",")
    assert last[0] == "70" and 1000 <= float(last[-1]) <= 1000 + time.time() - t0  # the time trained goes on
    again = call_gpt(*TINY_RUN, "--data", trained.data, "--out_dir", str(out), "--max_iters", "20", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter"] == 20
    assert [r[0] for r in losses_in(out)] == [0, 20]  # a new log, not the old one continued


def test_the_header_comes_before_the_first_forward_pass(data_file, tmp_path, monkeypatch, capsys):
    forward = gpt.GPT.forward
    def announce(self, *args, **kwargs):
        print("FORWARD", flush=True)
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(gpt.GPT, "forward", announce)
    assert gpt.main([*TINY_RUN, "--data", data_file, "--out_dir", str(tmp_path), "--max_iters", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("device cpu | dtype ") and lines[1] == "FORWARD"


def interrupt_after(args, line_starts, timeout=20):
    """Start gpt.py, press Ctrl-C once the line is printed; the exit code and the seconds it took to stop."""
    proc = subprocess.Popen(signals_at_default([sys.executable, os.path.join(HERE, "gpt.py"), *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith(line_starts):
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, time.time() - t0, err


def test_ctrl_c_during_the_setup_or_a_long_first_eval_stops_within_seconds(data_file, tmp_path):
    # medium's shape on a 2-core CPU: its first eval takes minutes
    args = ["--config", "medium", "--batch_size", "32", "--data", data_file, "--out_dir", str(tmp_path)]
    code, seconds, err = interrupt_after(args, "device cpu")
    assert code == 130 and seconds < 10 and "interrupted" in err and "Traceback" not in err, (code, seconds, err)
    assert not os.path.exists(tmp_path / "ckpt.pt")


def test_ctrl_c_during_the_first_eval_stops_within_seconds(data_file, tmp_path):
    args = [*TINY_RUN, "--data", data_file, "--out_dir", str(tmp_path), "--eval_iters", "100000"]
    code, seconds, err = interrupt_after(args, "device cpu")
    assert code == 130 and seconds < 10 and "Traceback" not in err, (code, seconds, err)
    assert not os.path.exists(tmp_path / "ckpt.pt")


def test_help_lists_every_setting_as_a_flag_with_its_default_or_each_presets_value():
    result = call_gpt("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps the lines
    for name in [*gpt.DEFAULTS, *gpt.PRESETS["tiny"], "sample", "resume", "overwrite", "verbose"]:
        assert f"--{name}" in text, name
    assert "tiny/small/medium" in text and "--max_iters MAX_ITERS (1500/1200/5000)" in text
    assert "--data DATA (shakespeare.txt)" in text and "--temperature TEMPERATURE (0.8)" in text
    assert "--compile [COMPILE]" in text


def test_data_naming_a_folder_says_it_is_a_folder(tmp_path):
    result = call_gpt(*TINY_RUN, "--data", str(tmp_path), "--out_dir", str(tmp_path / "out"))
    assert_clean_failure(result, 1, str(tmp_path), "folder")
    assert "not found" not in result.stderr


# ----------------------------------------------------------------------------- bigger texts: prepare once, train from a memory map
sys.path.insert(0, os.path.join(HERE, "scripts"))
import chat  # noqa: E402  scripts/chat.py
import prepare  # noqa: E402  scripts/prepare.py


def run_prepare(*args):
    return subprocess.run([sys.executable, os.path.join(HERE, "scripts", "prepare.py"), *args], capture_output=True,
                          text=True, timeout=300)


def prepared_ids(folder):
    meta = __import__("json").load(open(os.path.join(folder, "meta.json"), encoding="utf-8"))
    return meta, {s: __import__("numpy").fromfile(os.path.join(folder, f"{s}.bin"), dtype=meta["dtype"]).tolist()
                  for s in ("train", "val")}


@pytest.fixture(scope="session")
def bpe_folder(tmp_path_factory, data_file):
    out = tmp_path_factory.mktemp("prepared") / "bpe"
    result = run_prepare(data_file, "--out", str(out), "--tokenizer", "bpe", "--vocab_size", "300")
    assert result.returncode == 0, result.stderr
    return out


def test_a_prepared_char_folder_trains_exactly_as_the_text_file(data_file, tmp_path):
    result = run_prepare(data_file, "--out", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "data")) == ["meta.json", "train.bin", "val.bin"]
    meta, ids = prepared_ids(tmp_path / "data")
    data = gpt.load_data(data_file, block_size=16)
    assert meta["tokenizer"] == {"name": "char", "vocab": data.tokenizer.vocab} and meta["dtype"] == "uint16"
    assert ids["train"] == data.splits["train"].tolist() and ids["val"] == data.splits["val"].tolist()
    args = [*TINY_RUN, "--max_iters", "20", "--eval_interval", "10"]
    runs = [call_gpt(*args, "--data", d, "--out_dir", str(tmp_path / f"out{i}"))
            for i, d in enumerate((data_file, str(tmp_path / "data")))]
    assert all(r.returncode == 0 for r in runs), runs[1].stderr
    assert losses_in(tmp_path / "out0") == losses_in(tmp_path / "out1")  # the same windows, the same losses


def test_prepare_train_and_sample_with_bpe(bpe_folder, tmp_path):
    meta, ids = prepared_ids(bpe_folder)
    assert meta["tokenizer"]["name"] == "bpe" and len(meta["tokenizer"]["tokens"]) == 299  # and end-of-text
    assert meta["train"]["tokens"] < meta["train"]["characters"]  # merges: fewer tokens than characters
    result = call_gpt(*TINY_RUN, "--max_iters", "10", "--eval_interval", "5", "--data", str(bpe_folder),
                     "--out_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "vocab 300" in result.stdout and re.search(r"val loss [\d.]+ \([\d.]+ per character\)", result.stdout)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["tokenizer"] == meta["tokenizer"] and best["model"]["lm_head.weight"].shape[0] == 300
    sampled = call_gpt("--sample", "--out_dir", str(tmp_path), "--prompt", "Héllo ✨ ", "--max_new_tokens", "30")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("Héllo ✨ ")  # bytes it never saw still encode, as bytes


def test_per_character_loss_is_the_token_loss_scaled_by_tokens_per_character(bpe_folder):
    data = gpt.load_data(str(bpe_folder), block_size=16)
    meta, _ = prepared_ids(bpe_folder)
    assert data.per_char == meta["val"]["tokens"] / meta["val"]["characters"] and 0.2 < data.per_char < 1
    assert isinstance(data.tokenizer, gpt.BPETokenizer) and len(data.splits["val"]) == meta["val"]["tokens"]


def small_encoding(name="gpt2"):
    """A stand-in for tiktoken's GPT-2 encoding (which is a download): its pattern, bytes and a few merges."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {bytes([i]): i for i in range(256)}
    for merge in (b"th", b"he", b"the", b" t", b"in", b"er", b"an", b" the"):
        ranks[merge] = len(ranks)
    from tiktoken_ext.openai_public import r50k_pat_str as pattern  # the real gpt2 encoding's, word for word
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)})


def test_prepare_with_gpt2_tokens_trains_and_samples_offline(data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(__import__("tiktoken"), "get_encoding", lambda name: small_encoding(name))
    assert prepare.main([data_file, "--out", str(tmp_path / "data"), "--tokenizer", "gpt2"]) == 0
    meta, ids = prepared_ids(tmp_path / "data")
    assert meta["tokenizer"]["name"] == "gpt2" and len(meta["tokenizer"]["tokens"]) == 264
    assert small_encoding().decode(ids["train"] + ids["val"]) == TEXT
    result = call_gpt(*TINY_RUN, "--max_iters", "5", "--data", str(tmp_path / "data"), "--out_dir", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert "vocab 265" in result.stdout


def test_folders_and_jsonl_are_documents_in_path_order(tmp_path):
    (tmp_path / "in" / "b").mkdir(parents=True)
    (tmp_path / "in" / "b" / "2.txt").write_text("second file\n", encoding="utf-8")
    (tmp_path / "in" / "1.txt").write_text("first file\n", encoding="utf-8")
    (tmp_path / "in" / "skip.md").write_text("not text", encoding="utf-8")
    lines = ['{"text": "a story"}', "", '{"text": "another, with é", "id": 7}']
    (tmp_path / "in" / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = prepare.prepare([str(tmp_path / "in")], str(tmp_path / "out"))
    _, ids = prepared_ids(tmp_path / "out")
    text = gpt.CharTokenizer(meta["tokenizer"]["vocab"]).decode(ids["train"] + ids["val"])
    assert text == "first file\n\n\nsecond file\n\n\na story\n\nanother, with é"
    assert meta["train"]["documents"] + meta["val"]["documents"] >= 4  # the one cut by the split counts twice
    assert meta["train"]["characters"] == int(0.9 * len(text))


def test_an_interrupted_prepare_leaves_no_folder_that_looks_complete(data_file, tmp_path, monkeypatch):
    out = tmp_path / "data"
    assert prepare.main([data_file, "--out", str(out)]) == 0
    before = snapshot(out)
    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C arrived while encoding
    monkeypatch.setattr(prepare, "split_at", dies)
    assert prepare.main([data_file, "--out", str(out), "--tokenizer", "bpe", "--vocab_size", "300"]) == 130
    assert snapshot(out) == before  # the old folder is still whole, no temporary files are left
    (out / "train.bin").write_bytes((out / "train.bin").read_bytes()[:1000])  # now cut it short by hand
    result = call_gpt(*TINY_RUN, "--data", str(out), "--out_dir", str(tmp_path / "o"))
    assert_clean_failure(result, 1, str(out), "incomplete", "train.bin")


@pytest.mark.parametrize("make, args, expected", [
    (lambda d: None, [], "not found"),
    (lambda d: (d / "in.txt").write_text("", encoding="utf-8"), [], "no text"),
    (lambda d: (d / "in.txt").mkdir(), [], "no .txt or .jsonl files"),
    (lambda d: (d / "in.txt").write_bytes(b"fine so far\n" * 100_000 + b"\xff oops"), [],
     "not UTF-8 text (byte 0xff at offset 1200000)"),
    (lambda d: (d / "in.txt").write_bytes(b"caf\xc3"), [], "not UTF-8 text (byte 0xc3 at offset 3)"),
    (lambda d: (d / "in.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n', encoding="utf-8"), [],
     "line 2"),
    (lambda d: (d / "in.jsonl").write_text('{"text": "ok"}\nnot json\n', encoding="utf-8"), [], "line 2"),
    (lambda d: (d / "in.txt").write_text("abc", encoding="utf-8"), ["--tokenizer", "bpe", "--vocab_size", "100"],
     "--vocab_size 100"),
    (lambda d: (d / "in.txt").write_text("abc", encoding="utf-8"), ["--tokenizer", "bpe", "--vocab_size", "9999999"],
     "--vocab_size 9999999"),
    (lambda d: (d / "in.txt").write_text("abc", encoding="utf-8"), ["--vocab_size", "512"], "--tokenizer bpe")])
def test_bad_prepare_inputs_get_one_line_and_leave_nothing(tmp_path, make, args, expected):
    make(tmp_path)
    name = next((p.name for p in tmp_path.iterdir()), "in.txt")
    result = run_prepare(str(tmp_path / name), "--out", str(tmp_path / "out"), *args)
    assert result.returncode in (1, 2) and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].count("error") == 1
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_prepare_in_small_pieces_gives_the_same_tokens_as_the_whole_text(data_file, tmp_path, monkeypatch):
    assert prepare.main([data_file, "--out", str(tmp_path / "whole"), "--tokenizer", "bpe", "--vocab_size", "300"]) == 0
    monkeypatch.setattr(prepare, "PIECE", 997)  # cuts everywhere: before a space, never inside " word"
    assert prepare.main([data_file, "--out", str(tmp_path / "small"), "--tokenizer", "bpe", "--vocab_size", "300"]) == 0
    assert prepared_ids(tmp_path / "whole") == prepared_ids(tmp_path / "small")


@pytest.mark.parametrize("make, expected", [
    (lambda d: [(d / "in").mkdir(), (d / "in" / "a.txt").write_text(""), (d / "in" / "b.txt").write_text("")], "no text"),
    (lambda d: (d / "in.jsonl").write_text('{"text": "half an emoji \\ud83d"}\n'), "lone surrogate"),
    (lambda d: (d / "in.jsonl").write_bytes(b'{"text": "caf\xe9"}\n'), "not UTF-8"),
    (lambda d: [(d / "in.txt").write_text("some text " * 50), (d / "out").write_text("a file")], "is a file")])
def test_more_bad_prepare_inputs_get_one_line(tmp_path, make, expected):
    make(tmp_path)
    name = next(p.name for p in tmp_path.iterdir() if p.name != "out")
    result = run_prepare(str(tmp_path / name), "--out", str(tmp_path / "out"), "--tokenizer", "bpe")
    assert result.returncode == 1 and expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").is_dir() or os.listdir(tmp_path / "out") == []


def test_prepare_refuses_vocab_size_zero(tmp_path):
    (tmp_path / "in.txt").write_text("abc", encoding="utf-8")
    result = run_prepare(str(tmp_path / "in.txt"), "--out", str(tmp_path / "out"), "--tokenizer", "bpe",
                         "--vocab_size", "0")
    assert result.returncode == 2 and "--vocab_size 0" in result.stderr


@pytest.mark.parametrize("meta", ["garbage{", "[]", "{}", '{"tokenizer": {"name": "bpe"}, "dtype": "uint16", '
                                  '"train": {"tokens": 0}, "val": {"tokens": 0, "characters": 0}}',
                                  '{"tokenizer": {"name": "char", "vocab": "ab"}, "dtype": "foo", "train": {"tokens": 1},'
                                  ' "val": {"tokens": 1, "characters": 1}}'])
def test_a_prepared_folder_with_a_broken_meta_json_is_named(tmp_path, meta):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(meta, encoding="utf-8")
    result = call_gpt(*TINY_RUN, "--data", str(tmp_path / "data"), "--out_dir", str(tmp_path / "o"))
    assert_clean_failure(result, 1, str(tmp_path / "data"), "meta.json")


def test_a_prepared_folder_whose_ids_exceed_its_vocabulary_is_named(data_file, tmp_path):
    assert run_prepare(data_file, "--out", str(tmp_path / "data")).returncode == 0
    ids = np.fromfile(tmp_path / "data" / "val.bin", dtype=np.uint16)
    ids[::7] = 500  # a char vocabulary of a few dozen: ids no embedding has, met by the first val batch
    ids.tofile(tmp_path / "data" / "val.bin")
    result = call_gpt(*TINY_RUN, "--data", str(tmp_path / "data"), "--out_dir", str(tmp_path / "o"))
    assert_clean_failure(result, 1, str(tmp_path / "data"), "ids beyond its vocabulary", "prepare it again")
    assert len(result.stderr.strip().splitlines()) == 1


def test_prepare_without_its_packages_names_the_install(tmp_path, monkeypatch, capsys):
    (tmp_path / "in.txt").write_text("some text " * 50, encoding="utf-8")
    real = prepare.importlib.import_module
    monkeypatch.setattr(prepare.importlib, "import_module",
                        lambda name: (_ for _ in ()).throw(ImportError(name)) if name == "rustbpe" else real(name))
    assert prepare.main([str(tmp_path / "in.txt"), "--out", str(tmp_path / "out"), "--tokenizer", "bpe"]) == 1
    assert 'pip install -e ".[bpe]"' in capsys.readouterr().err


def test_sample_from_a_bpe_model_without_tiktoken_names_the_install(bpe_folder, tmp_path, monkeypatch, capsys):
    assert gpt.main([*TINY_RUN, "--max_iters", "2", "--data", str(bpe_folder), "--out_dir", str(tmp_path)]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # as if it were not installed
    assert gpt.main(["--sample", "--out_dir", str(tmp_path)]) == 1
    assert 'pip install -e ".[bpe]"' in capsys.readouterr().err


def test_a_folder_that_was_not_prepared_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("hello " * 100, encoding="utf-8")
    result = call_gpt(*TINY_RUN, "--data", str(tmp_path / "data"), "--out_dir", str(tmp_path / "o"))
    assert_clean_failure(result, 1, str(tmp_path / "data"), "scripts/prepare.py")


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1))
def test_bpe_round_trips_any_unicode(bpe_folder, text):
    tokenizer = gpt.load_data(str(bpe_folder), block_size=16).tokenizer
    assert tokenizer.decode(tokenizer.encode(text)) == text.encode("utf-8", "replace").decode("utf-8")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.text(min_size=1, max_size=300), kind=st.sampled_from(["char", "bpe"]))
def test_prepare_on_any_text_gives_ids_that_decode_back(tmp_path_factory, text, kind):
    folder = tmp_path_factory.mktemp("any")
    (folder / "in.txt").write_text(text, encoding="utf-8")
    meta = prepare.prepare([str(folder / "in.txt")], str(folder / "out"), kind, 300)
    _, ids = prepared_ids(folder / "out")
    assert gpt.make_tokenizer(meta["tokenizer"]).decode(ids["train"] + ids["val"]) == text


# ----------------------------------------------------------------------------- fine-tuning: --init_from
def test_init_from_starts_where_the_source_model_is(trained, tmp_path):
    best = torch.load(os.path.join(trained.out_dir, "best.pt"), weights_only=True)
    result = call_gpt(*TINY_RUN, "--data", trained.data, "--init_from", os.path.join(trained.out_dir, "best.pt"),
                     "--out_dir", str(tmp_path), "--max_iters", "20", "--learning_rate", "1e-3")
    assert result.returncode == 0, result.stderr
    first = losses_in(tmp_path)[0]
    assert first[0] == 0 and first[2] == round(best["best_val_loss"], 4)  # the same model, the same eval batches
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["iter"] == 20 and ckpt["optimizer"]["state"][0]["step"] == 20  # a new optimizer and schedule


def test_init_from_keeps_the_model_and_training_settings_but_not_the_device_or_precision(trained, tmp_path):
    source = torch.load(os.path.join(trained.out_dir, "best.pt"), weights_only=True)
    source["config"].update(device="cuda", dtype="float16", compile=True)  # as if trained on a GPU
    torch.save(source, tmp_path / "gpu.pt")
    result = call_gpt("--init_from", str(tmp_path / "gpu.pt"), "--data", trained.data, "--out_dir", str(tmp_path / "o"),
                     "--max_iters", "2")
    assert result.returncode == 0, result.stderr
    assert "device cpu" in result.stdout and "compile off" in result.stdout and "n_embd" not in result.stderr
    assert torch.load(tmp_path / "o" / "best.pt", weights_only=True)["config"]["n_embd"] == 32


def test_resume_after_max_iters_zero_logs_step_zero_once(trained, tmp_path):
    args = [*TINY_RUN, "--data", trained.data, "--out_dir", str(tmp_path)]
    assert call_gpt(*args, "--max_iters", "0").returncode == 0
    assert call_gpt("--resume", "--out_dir", str(tmp_path), "--max_iters", "20").returncode == 0
    assert [r[0] for r in losses_in(tmp_path)] == [0, 20]


def test_init_from_refuses_a_new_shape_another_tokenizer_and_unseen_characters(trained, bpe_folder, tmp_path):
    source = os.path.join(trained.out_dir, "best.pt")
    shaped = call_gpt(*TINY_RUN, "--init_from", source, "--n_layer", "2", "--out_dir", str(tmp_path / "a"))
    assert_clean_failure(shaped, 1, "--init_from", "n_layer 1 -> 2")
    other = call_gpt(*TINY_RUN, "--init_from", source, "--data", str(bpe_folder), "--out_dir", str(tmp_path / "b"))
    assert_clean_failure(other, 1, str(bpe_folder), "another tokenizer")
    (tmp_path / "new.txt").write_text("Ünïcödé 🙂 " * 500, encoding="utf-8")
    unseen = call_gpt(*TINY_RUN, "--init_from", source, "--data", str(tmp_path / "new.txt"),
                     "--out_dir", str(tmp_path / "c"))
    assert_clean_failure(unseen, 1, str(tmp_path / "new.txt"), "Ü", "🙂")
    missing = call_gpt(*TINY_RUN, "--init_from", str(tmp_path / "nope.pt"), "--out_dir", str(tmp_path / "d"))
    assert_clean_failure(missing, 1, str(tmp_path / "nope.pt"))


# ----------------------------------------------------------------------------- GPT-2's weights: scripts/from_gpt2.py
import from_gpt2  # noqa: E402  scripts/from_gpt2.py


@pytest.fixture(scope="session")
def hf_gpt2(tmp_path_factory):
    """A small random GPT-2 in Hugging Face's format (2 layers, width 64, 64 positions), saved with a
    GPT-2-style vocab.json of 265 tokens, then converted by scripts/from_gpt2.py."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf_gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=265, n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                     bos_token_id=264, eos_token_id=264)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # gains and biases off their init values, so a mix-up would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder / "model")
    encoding, character = small_encoding(), {b: c for c, b in from_gpt2.byte_of_character().items()}
    vocab = {"".join(character[b] for b in encoding.decode_single_token_bytes(i)): i for i in range(264)}
    (folder / "model" / "vocab.json").write_text(__import__("json").dumps({**vocab, "<|endoftext|>": 264}))
    result = subprocess.run([sys.executable, os.path.join(HERE, "scripts", "from_gpt2.py"), str(folder / "model"),
                             "--out_dir", str(folder / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(hf=model, out_dir=folder / "out", model_dir=folder / "model", stdout=result.stdout)


def converted(out_dir, **overrides):
    ckpt = torch.load(os.path.join(out_dir, "best.pt"), weights_only=True)
    ckpt["config"].update(overrides)
    return gpt.model_from(ckpt, torch.device("cpu")), ckpt


def test_from_gpt2_writes_a_gpt_py_checkpoint(hf_gpt2):
    model, ckpt = converted(hf_gpt2.out_dir)
    assert ckpt["iter"] == 0 and ckpt["config"]["gelu"] == "tanh" and ckpt["config"]["block_size"] == 64
    assert ckpt["tokenizer"]["name"] == "gpt2" and len(ckpt["tokenizer"]["tokens"]) == 264
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf_gpt2.hf.parameters())


def test_converted_gpt2_computes_what_hugging_face_computes(hf_gpt2):
    model, _ = converted(hf_gpt2.out_dir)
    idx = torch.randint(265, (3, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf_gpt2.hf(idx).logits
        ours = model(idx)
        cache = [{} for _ in model.transformer.h]
        stepwise = torch.cat([model(idx[:, :5], cache=cache)] +
                             [model(idx[:, t:t + 1], cache=cache) for t in range(5, 64)], dim=1)
    diff, cached_diff = (ours - theirs).abs().max().item(), (stepwise - theirs).abs().max().item()
    assert diff < 1e-5 and cached_diff < 1e-5, f"max |ours - HF| = {diff:.2e}, with the KV cache {cached_diff:.2e}"


def test_converted_gpt2_writes_the_same_greedy_tokens_as_hugging_face(hf_gpt2):
    model, _ = converted(hf_gpt2.out_dir)
    prompt = torch.tensor([[17, 42, 99, 3]])
    ours = torch.cat(ids_of(gpt.generate(model, prompt, 40, temperature=0)), dim=1)
    theirs = hf_gpt2.hf.generate(prompt, max_new_tokens=40, do_sample=False, attention_mask=torch.ones_like(prompt),
                                 pad_token_id=264)[:, 4:]
    assert ours.tolist() == theirs.tolist()


def test_the_gelu_setting_changes_the_output_and_old_checkpoints_are_exact(hf_gpt2, trained, tmp_path):
    tanh, _ = converted(hf_gpt2.out_dir)
    exact, _ = converted(hf_gpt2.out_dir, gelu="exact")
    idx = torch.randint(265, (1, 16), generator=torch.Generator().manual_seed(1))
    x = torch.linspace(-5, 5, 1001)
    with torch.no_grad():
        assert not torch.equal(tanh(idx), exact(idx))
        gap = (tanh.transformer.h[0].mlp.gelu(x) - exact.transformer.h[0].mlp.gelu(x)).abs().max().item()
    assert 1e-4 < gap < 1e-3  # tanh's approximation is off by up to 0.0005
    old = torch.load(os.path.join(trained.out_dir, "best.pt"), weights_only=True)
    assert old["config"]["gelu"] == "exact"
    del old["config"]["gelu"]  # as a checkpoint from before the setting existed
    assert gpt.model_from(old, torch.device("cpu")).transformer.h[0].mlp.gelu.approximate == "none"
    torch.save(old, tmp_path / "best.pt")
    result = call_gpt("--sample", "--out_dir", str(tmp_path), "--max_new_tokens", "20")
    assert result.returncode == 0, result.stderr


def test_converted_gpt2_samples_from_the_command_line_and_fine_tunes(hf_gpt2, data_file, tmp_path, monkeypatch):
    result = call_gpt("--sample", "--out_dir", str(hf_gpt2.out_dir), "--prompt", "Hello there", "--max_new_tokens", "20",
                     "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("step | chosen |") and "Hello there" in result.stdout
    monkeypatch.setattr(__import__("tiktoken"), "get_encoding", lambda name: small_encoding(name))
    assert prepare.main([data_file, "--out", str(tmp_path / "data"), "--tokenizer", "gpt2"]) == 0
    tuned = call_gpt("--init_from", str(hf_gpt2.out_dir / "best.pt"), "--data", str(tmp_path / "data"), "--out_dir",
                    str(tmp_path / "tuned"), "--block_size", "64", "--batch_size", "4", "--max_iters", "4",
                    "--eval_interval", "2", "--eval_iters", "2", "--learning_rate", "1e-3", "--device", "cpu")
    assert tuned.returncode == 0, tuned.stderr
    losses = losses_in(tmp_path / "tuned")
    assert [r[0] for r in losses] == [0, 2, 4] and losses[-1][1] < losses[0][1]
    assert torch.load(tmp_path / "tuned" / "best.pt", weights_only=True)["config"]["gelu"] == "tanh"


def test_from_gpt2_never_replaces_a_trained_model(hf_gpt2, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained.out_dir, out)
    before = snapshot(out)
    script = [sys.executable, os.path.join(HERE, "scripts", "from_gpt2.py"), str(hf_gpt2.model_dir), "--out_dir", str(out)]
    refused = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "already holds a model" in refused.stderr and snapshot(out) == before
    replaced = subprocess.run([*script, "--overwrite"], capture_output=True, text=True, timeout=120)
    assert replaced.returncode == 0 and torch.load(out / "best.pt", weights_only=True)["config"]["gelu"] == "tanh"


def test_from_gpt2_explains_what_is_missing_in_one_line(tmp_path, monkeypatch, capsys):
    script = [sys.executable, os.path.join(HERE, "scripts", "from_gpt2.py")]
    import socket
    with socket.socket() as nobody:  # a port that refuses, as a machine without a network does: no Hub, no cache
        nobody.bind(("127.0.0.1", 0))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
        offline = subprocess.run([*script, "gpt2", "--out_dir", str(tmp_path / "a")], capture_output=True, text=True,
                                 timeout=120, env={**env, "HF_HOME": str(tmp_path / "hf"),
                                                   "HF_ENDPOINT": f"http://127.0.0.1:{nobody.getsockname()[1]}"})
    # one line, not half a minute of "Retrying in 8s" lines before it: the script asks the Hub first
    assert offline.returncode == 1 and len(offline.stderr.splitlines()) == 1, offline.stderr
    assert "network" in offline.stderr, offline.stderr
    (tmp_path / "empty").mkdir()
    foreign = subprocess.run([*script, str(tmp_path / "empty"), "--out_dir", str(tmp_path / "b")],
                             capture_output=True, text=True, timeout=120)
    assert foreign.returncode == 1 and str(tmp_path / "empty") in foreign.stderr.splitlines()[-1], foreign.stderr
    assert "Traceback" not in offline.stderr + foreign.stderr
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    assert from_gpt2.main(["gpt2", "--out_dir", str(tmp_path / "c")]) == 1
    assert 'pip install -e ".[gpt2]"' in capsys.readouterr().err


# ----------------------------------------------------------------------------- bench.py
def test_bench_prints_its_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), "--devices", "cpu", "--configs", "tiny",
                             "--iters", "2", "--batch_size", "2", "--sample_tokens", "10", "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("| device"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "device", "config", "dtype", "compile", "batch", "train ms/iter", "train tokens/s", "MFU", "peak mem MB",
        "attention", "other attention", "sample tok/s (KV)", "sample tok/s (no KV)", "KV speedup"]
    chosen = str(gpt.pick_device("cpu")[1])[6:]  # bfloat16 on a CPU with AMX or AVX-512 BF16, else float32
    assert f"| cpu | tiny | {chosen} |" in result.stdout and f"torch {torch.__version__}" in result.stdout
    records = __import__("json").loads(out.read_text(encoding="utf-8"))
    assert [r["dtype"] for r in records] == [chosen] + (["float32"] if chosen != "float32" else [])
    assert set(records[0]) == {
        "device", "config", "dtype", "train_ms_per_iter", "train_tokens_per_s", "mfu", "peak_mem_mb",
        "attention", "other_attention_ratio", "sample_tokens_per_s_kv", "sample_tokens_per_s_nokv"}
    assert records[0]["mfu"] is None and records[0]["train_tokens_per_s"] > 0
    # each row names the attention train() runs in its dtype, and times the other one against it
    assert [r["attention"] for r in records] == ["formula" if r["dtype"] == "bfloat16" else "fused kernel" for r in records]
    assert all(r["other_attention_ratio"] > 0 for r in records)


# ----------------------------------------------------------------------------- the CUDA switches, checked on the CPU
def fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers, too


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_bfloat16_only_where_the_gpu_computes_it_natively(monkeypatch, capability, dtype):
    fake_gpu(monkeypatch, capability)  # 7.5: Colab's T4, 7.0: V100, 8.0: A100, 9.0: H100
    assert gpt.pick_device("auto") == (torch.device("cuda:0"), dtype)
    assert gpt.pick_device("cuda", "float32")[1] == torch.float32  # --dtype overrides
    monkeypatch.setattr(gpt, "native_cpu_bf16", lambda: False)
    assert gpt.pick_device("cpu") == (torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("dtype, scaled", [(torch.float16, True), (torch.bfloat16, False), (torch.float32, False)])
def test_only_float16_gets_a_grad_scaler_and_autocast_follows_the_dtype(dtype, scaled):
    autocast, scaler = gpt.mixed_precision(CPU, dtype)
    assert scaler.is_enabled() == scaled
    with autocast:  # a matmul of float32 tensors comes out in the precision asked for
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])  # float16: with loss scaling
@pytest.mark.parametrize("clip", [0.0, 0.5, 2.0])  # grad_clip as a fraction of the true gradient norm; 0: off
def test_train_step_hands_the_optimizer_the_true_gradient_clipped_to_grad_clip(dtype, clip):
    model = tiny_model()
    windows = torch.randint(11, (4, 9), generator=torch.Generator().manual_seed(0))
    batches = gpt.my_share(windows[:, :-1], windows[:, 1:], 2, CPU)
    autocast, scaler = gpt.mixed_precision(CPU, dtype)
    reference = tiny_model()  # the same weights: the batch's mean loss, one backward, no scaling
    with autocast:
        loss = sum(gpt.next_token_loss(reference(x), y) for x, y in batches) / len(batches)
    loss.backward()
    true_grads = [p.grad.clone() for p in reference.parameters()]
    true_norm = torch.cat([g.flatten() for g in true_grads]).norm().item()
    optimizer = gpt.make_optimizer(model, SimpleNamespace(weight_decay=0.1, learning_rate=1.0), torch.device("cpu"))
    handed = []
    step = optimizer.step
    def record(*args, **kwargs):  # what the optimizer is given, after the scaler and the clipping
        handed.append([p.grad.clone() for p in model.parameters()])
        return step(*args, **kwargs)
    optimizer.step = record
    mean_loss = gpt.train_step(model, optimizer, scaler, autocast, batches, lr=3e-4, grad_clip=clip * true_norm,
                               n_targets=4 * 8)
    assert mean_loss.item() == pytest.approx(loss.item(), rel=1e-3)
    assert len(handed) == 1 and all(p.grad is None for p in model.parameters())
    assert [g["lr"] for g in optimizer.param_groups] == [3e-4, 3e-4]
    expected = [g * min(1.0, clip or 1.0) for g in true_grads]
    norm = torch.cat([g.flatten() for g in handed[0]]).norm().item()
    assert norm == pytest.approx(true_norm * min(1.0, clip or 1.0), rel=1e-2)
    cosine = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in handed[0]]),
                                                   torch.cat([g.flatten() for g in expected]), dim=0).item()
    assert cosine > 0.999


def test_torchrun_gives_each_process_its_own_gpu(monkeypatch):
    fake_gpu(monkeypatch, (9, 0))
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert gpt.pick_device("auto")[0] == torch.device("cuda:3")


def test_mps_trains_in_float32_unless_told_otherwise(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpt.pick_device("auto") == (torch.device("mps"), torch.float32)  # its half precision is no faster
    assert gpt.pick_device("mps", "bfloat16")[1] == torch.bfloat16


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", True),  # Sapphire Rapids
                                           ("fpu avx2 avx512f avx512_bf16", True),  # Zen 4, Cooper Lake: 1.5-1.7x faster
                                           ("fpu avx2 avx512f avx512bw", False),  # Skylake: would emulate bf16
                                           ("fpu avx2 fma", False)])  # AMD Zen 2/3, older Intel
def test_a_cpu_trains_in_bfloat16_only_where_it_computes_it_natively(tmp_path, monkeypatch, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert gpt.native_cpu_bf16(str(cpuinfo)) == native
    assert gpt.native_cpu_bf16(str(tmp_path / "not_linux")) is False  # no /proc/cpuinfo: float32
    monkeypatch.setattr(gpt, "native_cpu_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert gpt.pick_device("auto") == (torch.device("cpu"), torch.bfloat16 if native else torch.float32)
    assert gpt.pick_device("cpu", "float32")[1] == torch.float32  # --dtype float32 forces it

@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_cpu_trains_with_the_attention_formula_in_bfloat16_and_the_fused_kernel_in_float32(data_file, tmp_path,
                                                                                              monkeypatch, dtype):
    seen, real_step = [], gpt.train_step  # which attention each training step's model runs (bench.py: the faster)

    def spy(model, *args):
        seen.append({block.attn.by_hand for block in model.transformer.h})
        return real_step(model, *args)
    monkeypatch.setattr(gpt, "train_step", spy)
    result = call_gpt(*TINY_RUN, "--data", data_file, "--out_dir", str(tmp_path), "--dtype", dtype, "--max_iters", "3")
    assert result.returncode == 0, result.stderr
    assert seen == [{dtype == "bfloat16"}] * 3


def test_fused_adamw_only_on_cuda():
    cfg = SimpleNamespace(weight_decay=0.1, learning_rate=1e-3)
    assert gpt.make_optimizer(tiny_model(), cfg, torch.device("cuda")).defaults["fused"] is True
    assert not gpt.make_optimizer(tiny_model(), cfg, torch.device("cpu")).defaults["fused"]


ELEVENS = gpt.Data(None, dict(train=np.arange(100) % 11, val=np.arange(100) % 11), dict(train=None, val=None))
TRIAL_CFG = SimpleNamespace(batch_size=2, block_size=8, grad_accum=1)


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, capsys):
    def broken_compile(model):
        raise RuntimeError("Found Tesla P100 which is too old to be supported by the triton GPU compiler\nmore")
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = tiny_model().train()
    assert gpt.fast_model(model, True, CPU, ELEVENS, TRIAL_CFG, contextlib.nullcontext()) is model
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "warning: torch.compile failed" in out and "P100" in out
    assert all(p.grad is None for p in model.parameters())


def test_compiled_model_trains_and_saves_without_orig_mod_prefix(data_file, tmp_path):
    result = call_gpt(*TINY_RUN, "--data", data_file, "--out_dir", str(tmp_path), "--max_iters", "4",
                     "--eval_interval", "2", "--compile")
    if "torch.compile failed" in result.stdout:
        pytest.skip("torch.compile does not work on this machine")
    assert result.returncode == 0 and "compile on" in result.stdout, result.stderr[-2000:]
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])


# ----------------------------------------------------------------------------- SIGTERM, grad_accum and torchrun
def torchrun(*args, nproc=2, **popen):
    """gpt.py under `torchrun --standalone --nproc_per_node N` (gloo on the CPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               os.path.join(HERE, "gpt.py"), *args]
    if popen:  # the tests that signal it: SIGINT and SIGTERM at their defaults, whatever this process ignores
        return subprocess.Popen(signals_at_default(command), cwd=HERE, text=True, **popen)
    return subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=300)


# float32: bfloat16 (chosen on CPUs with AMX) rounds each micro-batch's matmuls differently, by more than 1e-4
DDP_RUN = [*TINY_RUN, "--max_iters", "20", "--eval_interval", "5", "--log_interval", "5", "--dropout", "0", "--dtype", "float32",
           "--max_new_tokens", "10"]


@pytest.fixture(scope="session")
def three_ways(tmp_path_factory, data_file):
    """The same 20 steps as one process, one process with --grad_accum 2, and two processes (torchrun)."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {"one": run_gpt(*DDP_RUN, "--data", data_file, "--out_dir", str(root / "one")),
            "accum": run_gpt(*DDP_RUN, "--data", data_file, "--out_dir", str(root / "accum"), "--grad_accum", "2"),
            "two": torchrun(*DDP_RUN, "--data", data_file, "--out_dir", str(root / "two"))}
    for name, result in runs.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
    return SimpleNamespace(root=root, **runs)


def test_one_process_grad_accum_and_two_processes_train_the_same_model(three_ways):
    reference = losses_in(three_ways.root / "one")
    weights = torch.load(three_ways.root / "one" / "ckpt.pt", weights_only=True)["model"]
    assert [r[0] for r in reference] == [0, 5, 10, 15, 20]
    for name in ("accum", "two"):
        other = losses_in(three_ways.root / name)
        assert [r[0] for r in other] == [r[0] for r in reference]
        diff = max(abs(a - b) for ra, rb in zip(reference, other) for a, b in zip(ra[1:], rb[1:]))
        assert diff <= 1.5e-4, f"{name}: log.csv losses differ by {diff}"  # 1e-4 plus log.csv's rounding to 4 places
        theirs = torch.load(three_ways.root / name / "ckpt.pt", weights_only=True)["model"]
        wdiff = max((weights[k] - theirs[k]).abs().max().item() for k in weights)
        assert wdiff < 1e-4, f"{name}: final weights differ by {wdiff}"


def test_the_progress_line_shows_the_whole_batch_loss_under_torchrun_too(three_ways):
    progress = {name: [float(x) for x in re.findall(r"^step \d+ / 20 \| loss ([0-9.]+)", run.stdout, re.M)]
                for name, run in (("one", three_ways.one), ("two", three_ways.two))}
    assert len(progress["one"]) == 5 and progress["one"] == pytest.approx(progress["two"], abs=2e-4)  # step 1 too

def test_two_processes_print_one_header_and_write_each_file_once(three_ways):
    out = three_ways.two.stdout
    assert out.count("device cpu x 2 processes") == 1 and out.count("eval at step 0:") == 1
    assert out.count("best val loss") == 1 and out.count("step 20 / 20") == 1
    assert sorted(os.listdir(three_ways.root / "two")) == ["best.pt", "ckpt.pt", "log.csv"]  # no temp files left
    assert "Traceback" not in three_ways.two.stderr


def test_batch_size_not_divisible_by_processes_times_grad_accum_names_the_three_numbers(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the check comes before any process group
    with pytest.raises(SystemExit) as exit_info:
        gpt.main(["--config", "tiny", "--batch_size", "10", "--grad_accum", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--batch_size 10" in err and "2 processes" in err and "--grad_accum 3" in err


def test_a_usage_error_under_torchrun_is_printed_once(data_file, tmp_path):
    result = torchrun("--config", "tiny", "--batch_size", "15", "--data", data_file, "--out_dir", str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.count("gpt.py: error: --batch_size 15 is not divisible by 2 processes") == 1, result.stderr
    assert "usage: gpt.py" not in result.stderr  # one line (torchrun adds its own report of the failed workers)
    assert "File \"" + os.path.join(HERE, "gpt.py") not in result.stderr  # and no worker's traceback


def test_the_process_group_ends_after_a_garbage_collection(data_file, tmp_path, monkeypatch):
    """Objects in reference cycles (DDP's) can hold the process group past destroy_process_group, its gloo
    threads then ending at the interpreter's exit, where 2 torchrun runs in 22 aborted ("terminate called
    without an active exception") and torchrun killed process 0 mid-taste. 0 in 40 with the collection first."""
    import gc, socket
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port)).items():
        monkeypatch.setenv(name, value)  # as torchrun sets them, for one process
    events, destroy, collect = [], gpt.dist.destroy_process_group, gc.collect
    monkeypatch.setattr(gpt.dist, "destroy_process_group", lambda: events.append("destroy") or destroy())
    monkeypatch.setattr(gc, "collect", lambda *a: events.append("collect") or collect(*a))
    result = call_gpt(*TINY_RUN, "--max_iters", "2", "--data", data_file, "--out_dir", str(tmp_path))
    assert result.returncode == 0 and "device cpu |" in result.stdout, result.stderr
    assert events[-2:] == ["collect", "destroy"] and not gpt.dist.is_initialized()


def processes_naming(text):  # the pids whose command line mentions text (Linux's /proc)
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                pids += [pid] if str(text).encode() in f.read() else []
        except OSError:  # gone meanwhile
            pass
    return pids


def test_sigterm_to_torchrun_stops_every_process_and_resume_under_torchrun_finishes(data_file, tmp_path):
    out_dir = tmp_path / "run"
    args = [*TINY_RUN, "--data", data_file, "--out_dir", str(out_dir), "--max_iters", "4000", "--eval_interval",
            "2000", "--log_interval", "50", "--max_new_tokens", "10"]
    proc = torchrun(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    for line in proc.stdout:  # some steps after the first eval, stop it as a scheduler would
        if line.startswith("step 100 "):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=60)  # torchrun returns: no process hangs
    assert rest.count("saved ") == 1 and "--resume" in rest, rest
    assert "File \"" + os.path.join(HERE, "gpt.py") not in rest  # no traceback from a worker (torchrun has its own)
    assert processes_naming(out_dir) == [], "worker processes outlived torchrun"
    stopped_at = torch.load(out_dir / "ckpt.pt", weights_only=True)["iter"]
    assert 100 <= stopped_at < 4000
    resumed = torchrun("--resume", "--out_dir", str(out_dir), "--max_iters", str(stopped_at + 20))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(out_dir / "ckpt.pt", weights_only=True)["iter"] == stopped_at + 20


def test_a_signal_to_one_process_stops_them_all_at_the_same_step(data_file, tmp_path):  # a scheduler's kill
    out_dir = tmp_path / "run"
    args = [*TINY_RUN, "--data", data_file, "--out_dir", str(out_dir), "--max_iters", "4000", "--eval_interval",
            "2000", "--log_interval", "50", "--max_new_tokens", "10"]
    proc = torchrun(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("step 100 "):
            for pid in processes_naming(out_dir):  # torchrun and both workers name it; only rank 1 is told
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if b"\0RANK=1\0" in b"\0" + f.read():
                        os.kill(int(pid), signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=60)
    assert rest.count("saved ") == 1 and proc.returncode != 0, rest  # process 0 saved for both, and stopped
    assert 100 <= torch.load(out_dir / "ckpt.pt", weights_only=True)["iter"] < 4000

def test_sigterm_alone_saves_like_ctrl_c_and_exits_143(data_file, tmp_path):
    proc = subprocess.Popen(signals_at_default([sys.executable, os.path.join(HERE, "gpt.py"), *TINY_RUN, "--data",
                                                data_file, "--out_dir", str(tmp_path), "--max_iters", "4000",
                                                "--eval_interval", "2000"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 40 "):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert "SIGTERM: finishing this step" in out and f"go on with --resume --out_dir {tmp_path}\n" in out, out
    assert 40 <= torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter"] < 4000


def test_nan_on_the_processes_stops_them_all_with_one_line(data_file, tmp_path):
    result = torchrun(*TINY_RUN, "--data", data_file, "--out_dir", str(tmp_path), "--eval_interval", "5",
                      "--log_interval", "1", "--learning_rate", "1e6", "--warmup_iters", "0", "--grad_clip", "0")
    assert result.returncode != 0
    assert result.stderr.count("error: loss became nan at step") == 1, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


# ----------------------------------------------------------------------------- looking inside: --verbose and plots
TABLE_ROW = re.compile(r"^ *(\d+) \| +('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") \| (.*)$")
CANDIDATE = re.compile(r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") ([0-9.e+-]+)(?:  |$)")


@pytest.mark.parametrize("sampling", [["--temperature", "0"], ["--top_k", "3"], ["--temperature", "1.2"]])
def test_verbose_shows_each_choice_and_then_the_same_text(trained, sampling):
    args = ["--sample", "--out_dir", trained.out_dir, "--max_new_tokens", "40", "--seed", "3", "--prompt", "KING",
            *sampling]
    plain, verbose = call_gpt(*args), call_gpt(*args, "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    lines = verbose.stdout.split("\n")
    assert lines[0].startswith("step | chosen |")
    rows = [TABLE_ROW.match(line) for line in lines[1:41]]
    assert all(rows), lines[1:41]
    for step, row in enumerate(rows, start=1):
        assert int(row.group(1)) == step
        candidates = [(ast.literal_eval(t), float(p)) for t, p in CANDIDATE.findall(row.group(3))]
        probs = [p for _, p in candidates]
        assert 1 <= len(candidates) <= 5 and all(0 < p <= 1 for p in probs)
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 5 * 0.0005  # printed to 3 digits
        if "--temperature" in sampling and "0" in sampling or "--top_k" in sampling:
            assert ast.literal_eval(row.group(2)) in [t for t, _ in candidates]
    assert "\n".join(lines[41:]) == plain.stdout  # the same seed, the same text


def test_verbose_probabilities_are_the_model_softmax_at_the_temperature(trained, capsys):
    args = ["--sample", "--verbose", "--out_dir", trained.out_dir, "--max_new_tokens", "1", "--prompt", "KING",
            "--temperature", "0.7"]
    assert gpt.main(args) == 0
    row = TABLE_ROW.match(capsys.readouterr().out.split("\n")[1])
    shown = [(ast.literal_eval(t), float(p)) for t, p in CANDIDATE.findall(row.group(3))]
    ckpt = torch.load(os.path.join(trained.out_dir, "best.pt"), weights_only=True)
    model = gpt.model_from(ckpt, torch.device("cpu"))
    with torch.no_grad():
        logits = model(torch.tensor([[ckpt["vocab"].index(ch) for ch in "KING"]]))[0, -1].tolist()
    expected = sorted(zip(hand_softmax(logits, 0.7), ckpt["vocab"]), reverse=True)[:5]
    assert [t for t, _ in shown] == [ch for _, ch in expected]
    assert [p for _, p in shown] == pytest.approx([p for p, _ in expected], rel=5e-3)  # printed to 3 digits


def test_plot_log_draws_two_runs_into_a_png(trained, three_ways, tmp_path):
    picture = tmp_path / "loss.png"
    result = subprocess.run([sys.executable, os.path.join(HERE, "scripts", "plot_log.py"), trained.out_dir,
                             str(three_ways.root / "one"), "-o", str(picture)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000


def test_plot_log_says_in_one_line_when_a_folder_has_no_log(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, "scripts", "plot_log.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == f"error: no log.csv in {tmp_path}; pass the " \
                                                               f"--out_dir of a gpt.py training run"


# ----------------------------------------------------------------------------- bench.py: MFU peaks and the KV check
def test_bench_finds_a_gpus_peak_by_its_exact_name_only():
    import bench
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989  # the SXM module
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756 and bench.peak_tflops("NVIDIA H100 PCIe",
                                                                                         "float32") == 378
    assert bench.peak_tflops("NVIDIA L40S", "bfloat16") == 362  # not the L4's 121, whose name it contains
    assert bench.peak_tflops("NVIDIA L4", "bfloat16") == 121 and bench.peak_tflops("Tesla T4", "bfloat16") is None
    for near_miss in ["NVIDIA L40", "NVIDIA H100", "NVIDIA H100 NVL", "NVIDIA A100", "NVIDIA L4 (fake)", "T4", ""]:
        assert bench.peak_tflops(near_miss, "bfloat16") is None, near_miss  # "MFU: unknown peak", not a guess


def test_bench_kv_check_ignores_a_near_tie_but_not_a_real_disagreement():
    import bench
    def run(ids, probs):  # what gpt.generate yields: ((1, 1) id, (1, vocab) probabilities) per step
        return [(torch.tensor([[i]]), torch.tensor([p])) for i, p in zip(ids, probs)]
    probs = [[0.2, 0.5, 0.3], [0.4, 0.30000001, 0.3]]
    full = run([1, 0], probs)
    assert not bench.kv_cache_disagrees(run([1, 0], probs), full)
    assert bench.kv_cache_disagrees(run([2, 0], probs), full)  # 0.3 where the full forward's best is 0.5
    near_tie = run([2, 2], [[0.2, 0.39999999, 0.4], [0.1, 0.1, 0.8]])
    assert not bench.kv_cache_disagrees(run([1, 0], probs), near_tie)  # 1 against 2 at 0.39999999 vs 0.4
    saved, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, True
    try:
        with bench.without_tf32():  # the check compares in full float32 (TF32 flips near ties on a GPU)
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32  # restored
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_signal_tests_start_gpt_py_with_the_signals_at_their_defaults_even_from_a_background_job():
    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
                                   " signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)"]
    as_a_job = ["bash", "-c", 'trap "" INT TERM; exec "$@"', "bash"]  # ignored, as `bash run_tests.sh &` has SIGINT
    assert subprocess.run([*as_a_job, *probe], capture_output=True, text=True,
                          timeout=60).stdout.split() == ["False", "False"]
    assert subprocess.run([*as_a_job, *signals_at_default(probe)], capture_output=True, text=True,
                          timeout=60).stdout.split() == ["True", "True"]


# ----------------------------------------------------------------------------- the two-part gpt.py: attention by hand,
# compile under DDP, precision and signals on every chip, and chats (issues 28-30)
import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import types  # noqa: E402


TEMPLATE = {"system": "System: ", "user": "User: ", "assistant": "Assistant: ", "end": "<end>"}


# ----------------------------------------------------------------------------- attention by hand
def by_hand(model, on):
    for block in model.transformer.h:
        block.attn.by_hand = on
    return model


def assert_causal_rows(att, cached):
    """Weights (B, nh, T, Tk): query i (position cached + i) puts none on a later key, and each row sums to 1."""
    T, Tk = att.shape[-2:]
    assert Tk == cached + T
    later = torch.ones(T, Tk, dtype=torch.bool).triu(cached + 1)  # key j > cached + i
    assert torch.all(att[..., later] == 0), "weight on a later token"
    sums = att.sum(-1)
    assert (sums - 1).abs().max().item() < 1e-6, sums


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("make", [tiny_model, peaked_model], ids=["init", "peaked"])
@pytest.mark.parametrize("cuts", [(0, 8), (0, 3, 4, 5, 6, 7, 8), (0, 3, 5, 8)])  # whole, 1 at a time, 2 and 3
def test_attention_by_hand_computes_what_the_fused_kernel_computes_and_keeps_causal_weights(dtype, tol, make, cuts):
    model = make().to(dtype)
    idx = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fused = by_hand(model, False)(idx)
        by_hand(model, True)
        if cuts == (0, 8):
            hand = model(idx)
            for block in model.transformer.h:
                assert_causal_rows(block.attn.att, 0)
        else:
            cache, chunks = [{} for _ in model.transformer.h], []
            for a, b in zip(cuts, cuts[1:]):
                chunks.append(model(idx[:, a:b], cache=cache))
                for block in model.transformer.h:
                    assert block.attn.att.shape == (2, 2, b - a, b)
                    assert_causal_rows(block.attn.att, a)
            hand = torch.cat(chunks, dim=1)
    assert hand.dtype == dtype
    diff = (hand - fused).abs().max().item()
    assert diff < tol, f"max |by hand - fused| = {diff}"


# ----------------------------------------------------------------------------- torchrun: DDP around the compiled model
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_process_group():  # torch.distributed as torchrun sets it up, in this process alone (gloo)
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        torch._dynamo.reset()


@pytest.mark.compile
def test_under_torchrun_the_model_is_compiled_inside_ddp_and_dynamo_splits_it_at_the_buckets(monkeypatch):
    if "aot_eager" not in torch._dynamo.list_backends(exclude_tags=()):
        pytest.skip("dynamo's aot_eager backend is not available")
    from torch._dynamo.backends.distributed import DDPOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP
    real, compiled, ddp_compiles = torch.compile, [], []
    monkeypatch.setattr(torch, "compile", lambda m, **k: compiled.append(real(m, backend="aot_eager")) or compiled[-1])
    compile_fn = DDPOptimizer.compile_fn
    def counted(self, *args, **kwargs):
        ddp_compiles.append(1)
        return compile_fn(self, *args, **kwargs)
    monkeypatch.setattr(DDPOptimizer, "compile_fn", counted)
    with one_process_group():
        model = tiny_model().train()
        step_model = gpt.fast_model(model, True, CPU, ELEVENS, TRIAL_CFG, contextlib.nullcontext())
        wrapped = isinstance(step_model, DDP) and step_model.module  # one process is DDP too
        del step_model  # before its process group goes: a DDP outliving it hangs in its destructor
    assert len(compiled) == 1 and wrapped is compiled[0] and compiled[0]._orig_mod is model
    # the DDPOptimizer splits the graph at DDP's buckets only when dynamo compiles inside DDP's forward
    assert len(ddp_compiles) >= 1, "dynamo never saw DDP's buckets"


def test_under_torchrun_a_failed_compile_leaves_the_one_ddp_around_the_plain_model(monkeypatch, capsys):
    from torch.nn.parallel import DistributedDataParallel as DDP
    def broken_compile(model, **kwargs):
        raise RuntimeError("backend compiler failed")
    monkeypatch.setattr(torch, "compile", broken_compile)
    made = []
    class CountedDDP(gpt.DDP):  # DDP, counting how many are made
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
    monkeypatch.setattr(gpt, "DDP", CountedDDP)
    with one_process_group():
        model = tiny_model().train()
        step_model = gpt.fast_model(model, True, CPU, ELEVENS, TRIAL_CFG, contextlib.nullcontext())
        x = torch.zeros(2, 8, dtype=torch.long)
        gpt.next_token_loss(step_model(x), x).backward()  # and it trains
        one_ddp = len(made) == 1 and step_model is made[0] and step_model.module is model  # no second DDP
        del step_model, made[:]  # before the process group goes: a DDP outliving it hangs
    assert one_ddp and all(p.grad is not None for p in model.parameters())
    assert "torch.compile failed" in capsys.readouterr().out


def test_compiling_starts_from_a_fresh_dynamo_and_not_compiling_leaves_it_alone(monkeypatch):
    events = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: events.append("reset"))
    monkeypatch.setattr(torch, "compile", lambda m, **k: events.append("compile") or m)
    for _ in range(2):  # a second model in one process (a notebook, bench.py)
        gpt.fast_model(tiny_model().train(), True, CPU, ELEVENS, TRIAL_CFG, contextlib.nullcontext())
    assert events == ["reset", "compile", "reset", "compile"]
    events.clear()
    gpt.fast_model(tiny_model().train(), False, CPU, ELEVENS, TRIAL_CFG, contextlib.nullcontext())
    assert events == []


# ----------------------------------------------------------------------------- precision
def test_a_float16_resume_keeps_the_loss_scale_it_had_found(data_file, tmp_path):
    out = str(tmp_path)
    first = call_gpt(*TINY_RUN, "--data", data_file, "--out_dir", out, "--dtype", "float16", "--max_iters", "6",
                     "--eval_interval", "6", "--max_new_tokens", "5")
    assert first.returncode == 0 and "dtype float16" in first.stdout, first.stderr[-2000:]
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert "scale" in ckpt["scaler"], ckpt.get("scaler")
    ckpt["scaler"]["scale"] = 1024.0  # as if overflows had brought it down from 65,536
    torch.save(ckpt, tmp_path / "ckpt.pt")
    resumed = call_gpt("--resume", "--out_dir", out, "--max_iters", "8", "--max_new_tokens", "5")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert after["iter"] == 8
    assert 0 < after["scaler"]["scale"] <= 2048, after["scaler"]  # 1024, halved on overflow or doubled: not 65,536


@pytest.mark.parametrize("saved_in", ["float32", "bfloat16"])
def test_a_run_saved_in_another_precision_resumes_in_float16_with_a_fresh_loss_scale(data_file, tmp_path, saved_in):
    out = str(tmp_path)
    first = call_gpt(*TINY_RUN, "--data", data_file, "--out_dir", out, "--dtype", saved_in, "--max_iters", "4",
                     "--eval_interval", "4", "--max_new_tokens", "5")
    assert first.returncode == 0, first.stderr[-2000:]
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["scaler"] == {}  # no loss scale to keep
    resumed = call_gpt("--resume", "--out_dir", out, "--dtype", "float16", "--max_iters", "6", "--max_new_tokens", "5")
    assert resumed.returncode == 0 and "dtype float16" in resumed.stdout, resumed.stderr[-2000:]
    after = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert after["iter"] == 6 and after["scaler"]["scale"] > 0


def test_a_cpu_checkpoint_resumed_on_a_gpu_steps_with_fused_adamw(trained):
    ckpt = torch.load(os.path.join(trained.out_dir, "ckpt.pt"), weights_only=True)
    assert not ckpt["optimizer"]["param_groups"][0]["fused"]  # saved by a CPU run
    model = gpt.model_from(ckpt, CPU).train()
    optimizer = gpt.make_optimizer(model, SimpleNamespace(**ckpt["config"]), torch.device("cuda"))  # a GPU's
    run = gpt.Run()
    gpt.restore(model, optimizer, gpt.mixed_precision(CPU, torch.float32)[1], torch.Generator(), run, ckpt, None)
    assert run.iter == ckpt["iter"] and optimizer.state_dict()["state"]  # the moments came back
    assert all(group["fused"] for group in optimizer.param_groups)  # the device's choice, not the saved one


# ----------------------------------------------------------------------------- signals and the output folder
def with_signals(command, sigint, sigterm):
    """command with SIGINT and SIGTERM set as given, whatever this process has (a small Python sets them and
    execs command: preexec_fn would be unsafe with torch's threads in this process)."""
    names = {signal.SIG_IGN: "signal.SIG_IGN", signal.SIG_DFL: "signal.SIG_DFL"}
    setup = (f"import os, signal, sys; signal.signal(signal.SIGINT, {names[sigint]}); "
             f"signal.signal(signal.SIGTERM, {names[sigterm]}); os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", setup, *command]


def test_a_sigint_ignored_when_gpt_py_started_stays_ignored_and_sigterm_still_saves(data_file, tmp_path):
    command = [sys.executable, os.path.join(HERE, "gpt.py"), *TINY_RUN, "--data", data_file, "--out_dir",
               str(tmp_path), "--max_iters", "4000", "--eval_interval", "2000"]
    proc = subprocess.Popen(with_signals(command, signal.SIG_IGN, signal.SIG_DFL), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("step 40 "):
                proc.send_signal(signal.SIGINT)  # a background job's Ctrl-C: ignored
                break
        later = []
        for line in proc.stdout:  # two more progress lines: 40 steps after the SIGINT, on any machine
            later.append(line)
            if sum(line.startswith("step ") for line in later) == 2:
                break
        assert proc.poll() is None, "SIGINT stopped a process that ignores it"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(later) + out
    assert proc.returncode == 143 and "Traceback" not in err, (proc.returncode, err[-2000:])
    assert "SIGINT" not in out and "SIGTERM: finishing this step" in out
    assert 40 < torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter"] < 4000


def test_a_run_that_fails_before_saving_removes_the_folder_it_made_but_never_one_that_was_there(tmp_path):
    missing = str(tmp_path / "no_such.txt")
    new = tmp_path / "new_run"
    assert_clean_failure(call_gpt(*TINY_RUN, "--data", missing, "--out_dir", str(new)), 1, missing, "not found")
    assert not new.exists()
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert_clean_failure(call_gpt(*TINY_RUN, "--data", missing, "--out_dir", str(empty)), 1, missing)
    assert empty.is_dir() and os.listdir(empty) == []


def test_a_stop_never_saves_a_nan(data_file, tmp_path, monkeypatch):
    @contextlib.contextmanager
    def sigint_at_step_4():
        calls = []
        def agreed_stop():
            calls.append(1)
            return 0 if len(calls) <= 3 else signal.SIGINT.value
        yield agreed_stop
    monkeypatch.setattr(gpt, "stop_signals", sigint_at_step_4)
    result = call_gpt(*TINY_RUN, "--data", data_file, "--out_dir", str(tmp_path), "--learning_rate", "1e6",
                      "--warmup_iters", "0", "--grad_clip", "0", "--log_interval", "1000", "--eval_interval", "1000")
    assert_clean_failure(result, 1, "loss became nan at step 4")
    assert "saved " not in result.stdout
    for name in ("ckpt.pt", "best.pt"):
        if os.path.exists(tmp_path / name):
            ckpt = torch.load(tmp_path / name, weights_only=True)
            assert ckpt["iter"] == 0 and all(torch.isfinite(t).all() for t in ckpt["model"].values()), name


# ----------------------------------------------------------------------------- chat fine-tuning
NOISE = "abcdefghijklmnop"  # 16 characters: a user turn of them carries ln 16 nats per character


def conversation(user, assistant):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def noise_chats(n, seed=0, length=16):
    rng = random.Random(seed)
    return [conversation("".join(rng.choice(NOISE) for _ in range(length)), "ok") for _ in range(n)]


def prepared_chats(folder, lines, vocab_from=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "in.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    prepare.prepare([str(path)], str(folder / "data"), vocab_from=vocab_from)
    return str(folder / "data")


def masked(tokens, mask):  # a prepared chat folder's train split, in memory
    return gpt.Data(None, dict(train=tokens, val=tokens), dict(train=mask, val=mask))


@pytest.mark.parametrize("batch_size", [6, 1])  # 1: x and y are both contiguous views of one window
def test_a_mask_turns_exactly_the_targets_it_marks_0_into_minus_1(batch_size):
    data = np.arange(500, dtype=np.uint16)  # each token is its own position
    mask = np.random.default_rng(0).integers(0, 2, 500).astype(np.uint8)
    x, y = gpt.get_batch(masked(data, None), "train", batch_size, 10, torch.Generator().manual_seed(3))
    xm, ym = gpt.get_batch(masked(data, mask), "train", batch_size, 10, torch.Generator().manual_seed(3))
    assert torch.equal(x, xm)
    assert torch.equal(ym, torch.where(torch.from_numpy(mask[y.numpy()]) == 0, -1, y))
    assert (ym == -1).any() and (ym != -1).any()


def test_batches_are_contiguous_so_that_a_pinned_copy_needs_no_second_copy():
    x, y = gpt.get_batch(masked(np.arange(500), None), "train", 4, 16, torch.Generator().manual_seed(0))
    assert x.is_contiguous() and y.is_contiguous()  # pin_memory keeps strides: a view would copy again


def test_the_loss_on_a_masked_batch_averages_only_over_the_answers():
    model = tiny_model().double()
    data = np.random.default_rng(1).integers(0, 11, 400).astype(np.uint16)
    mask = (np.arange(400) % 5 < 2).astype(np.uint8)  # two answer tokens in every five
    x, y = gpt.get_batch(masked(data, mask), "train", 4, 8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        loss = gpt.next_token_loss(logits, y)
    log_probs = F.log_softmax(logits.double(), dim=-1)
    picked = [-log_probs[b, t, y[b, t]].item() for b in range(4) for t in range(8) if y[b, t] != -1]
    assert 0 < len(picked) < 32
    assert abs(loss.item() - sum(picked) / len(picked)) < 1e-12


def test_a_micro_batch_without_answers_adds_nothing_to_the_steps_mean_over_its_answers():
    torch.manual_seed(0)
    x = torch.randint(11, (4, 8))
    y = torch.randint(11, (4, 8))
    y[:2] = -1  # the first micro-batch (two rows) has no answer at all: a long question
    y[2, :5] = -1
    reference = tiny_model().double()
    gpt.next_token_loss(reference(x), y).backward()  # the mean over the whole step's answers
    model = tiny_model().double()
    optimizer = gpt.make_optimizer(model, SimpleNamespace(weight_decay=0.0, learning_rate=1.0), CPU)
    handed = []
    step = optimizer.step
    def record(*args, **kwargs):
        handed.append([p.grad.clone() for p in model.parameters()])
        return step(*args, **kwargs)
    optimizer.step = record
    autocast, scaler = gpt.mixed_precision(CPU, torch.float32)
    loss = gpt.train_step(model, optimizer, scaler, autocast, gpt.my_share(x, y, 2, CPU), 1e-3, 0.0,
                          n_targets=(y != -1).sum().item())
    assert math.isfinite(loss.item())
    for got, want in zip(handed[0], (p.grad for p in reference.parameters())):
        assert (got - want).abs().max().item() < 1e-12


def test_an_eval_batch_without_answers_leaves_the_eval_the_mean_over_the_answers():
    tokens = np.arange(200) % 11
    mask = np.zeros(200, np.uint8)
    mask[150:] = 1  # answers only near the end: most windows have none
    cfg = SimpleNamespace(**{**vars(EVAL_CFG), "eval_iters": 6, "batch_size": 2, "grad_accum": 2})
    run, model = gpt.Run(), tiny_model().double()
    gpt.evaluate(model, masked(tokens, mask), cfg, contextlib.nullcontext(), CPU, run)
    total, count, generator = 0.0, 0, torch.Generator().manual_seed(cfg.seed + 1)  # the eval's own batches
    for _ in range(cfg.eval_iters):
        x, y = gpt.get_batch(masked(tokens, mask), "val", 2, 8, generator)
        with torch.no_grad():
            total += gpt.next_token_loss(model(x), y, reduction="sum").item()
        count += (y != -1).sum().item()
    assert 0 < count and math.isfinite(run.log[0][2]) and run.log[0][2] == round(total / count, 4)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A tiny model trained on conversations whose questions are noise and whose answer is always "ok"."""
    root = tmp_path_factory.mktemp("chat_run")
    lines = noise_chats(300)
    folder = prepared_chats(root, lines)
    out_dir = str(root / "out")
    result = call_gpt(*TINY_RUN, "--data", folder, "--out_dir", out_dir, "--block_size", "32", "--max_iters", "300",
                      "--eval_interval", "150", "--log_interval", "150", "--max_new_tokens", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    rendered = "".join(chat.chat_turn(dict(role="user", content="x" * 16), TEMPLATE)
                       + chat.chat_turn(dict(role="assistant", content="ok"), TEMPLATE)) + "\n\n"
    floor = 16 * math.log(len(NOISE)) / len(rendered)  # what noise costs a loss on every token, at least
    return SimpleNamespace(out_dir=out_dir, folder=folder, stdout=result.stdout, floor=floor)


def test_fine_tuning_on_conversations_learns_the_answers_whatever_noise_the_questions_are(chat_run):
    evals = [line for line in chat_run.stdout.splitlines() if line.startswith("eval at step")]
    assert evals and all(line.endswith("(on the answers' tokens)") for line in evals), evals
    train_loss = float(evals[-1].split("train loss ")[1].split()[0])
    assert chat_run.floor > 0.8 and train_loss < 0.5, (train_loss, chat_run.floor, evals)


def test_a_chat_runs_checkpoints_carry_its_template(chat_run):
    for name in ("best.pt", "ckpt.pt"):
        assert torch.load(os.path.join(chat_run.out_dir, name), weights_only=True)["chat"] == TEMPLATE


QUESTIONS = [conversation(f"What is {a} + {b}?", str(a + b)) for a in range(10) for b in range(5)]


@pytest.fixture(scope="module")
def grown(trained, tmp_path_factory):
    """Conversations prepared for the Shakespeare model: its characters, then the digits, + and <> after them."""
    folder = prepared_chats(tmp_path_factory.mktemp("grown"), QUESTIONS,
                            vocab_from=os.path.join(trained.out_dir, "best.pt"))
    return folder


def test_init_from_a_char_model_grows_its_embedding_for_the_new_characters(trained, grown, tmp_path):
    source = torch.load(os.path.join(trained.out_dir, "best.pt"), weights_only=True)
    with open(os.path.join(grown, "meta.json"), encoding="utf-8") as f:
        vocab = json.load(f)["tokenizer"]["vocab"]
    assert vocab.startswith(source["vocab"]) and len(vocab) > len(source["vocab"])
    out = tmp_path / "out"
    result = call_gpt(*TINY_RUN, "--init_from", os.path.join(trained.out_dir, "best.pt"), "--data", grown,
                      "--out_dir", str(out), "--max_iters", "0", "--max_new_tokens", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    old, new = source["model"]["transformer.wte.weight"], ckpt["model"]["transformer.wte.weight"]
    assert new.shape == (len(vocab), old.size(1)) and ckpt["vocab"] == vocab and ckpt["chat"] == TEMPLATE
    assert torch.equal(new[:len(old)], old)  # the old characters keep what they learned
    fresh = new[len(old):]
    assert 0.01 < fresh.std().item() < 0.03 and abs(fresh.mean().item()) < 0.01  # N(0, 0.02), as a new model's
    assert torch.equal(ckpt["model"]["lm_head.weight"], new)  # still tied
    for name, t in source["model"].items():  # every other weight is the source model's
        if name not in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(ckpt["model"][name], t), name
    more = call_gpt("--resume", "--out_dir", str(out), "--max_iters", "10", "--eval_interval", "10",
                    "--max_new_tokens", "5")
    assert more.returncode == 0 and "(on the answers' tokens)" in more.stdout, more.stderr[-2000:]
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter"] == 10


def test_init_from_refuses_a_chat_folder_prepared_with_another_vocabulary(trained, tmp_path):
    other = prepared_chats(tmp_path / "other", QUESTIONS)  # its own characters, sorted: not the model's ids
    out = tmp_path / "out"
    result = call_gpt(*TINY_RUN, "--init_from", os.path.join(trained.out_dir, "best.pt"), "--data", other,
                      "--out_dir", str(out))
    assert_clean_failure(result, 1, other, "another tokenizer")
    assert not out.exists()


def test_resume_onto_a_folder_whose_vocabulary_grew_is_refused_in_one_line(trained, grown, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained.out_dir, out)
    before = snapshot(out)
    result = call_gpt("--resume", "--out_dir", str(out), "--data", grown)
    assert_clean_failure(result, 1, "--resume", "--init_from")
    assert result.stderr.count("\n") == 1, result.stderr
    assert snapshot(out) == before


def chat_with(out_dir, lines, *flags):
    """python scripts/chat.py as a pipe feeds it: its exit code and both output streams."""
    return subprocess.run([sys.executable, os.path.join(HERE, "scripts", "chat.py"), "--out_dir", out_dir,
                           "--device", "cpu", *flags], input="".join(line + "\n" for line in lines),
                          cwd=HERE, capture_output=True, text=True, timeout=120)


def test_chat_through_a_pipe_answers_each_line_names_a_character_it_never_saw_and_exits_1(chat_run):
    result = chat_with(chat_run.out_dir, ["abcdefghijklmnop", "ponm€lkji", "", "aabbccddeeffgghh"],
                       "--temperature", "0", "--max_new_tokens", "20")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr  # a script can tell
    assert result.stdout.splitlines() == ["ok", "ok"], result.stdout  # the fine-tuned answer, to each line
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "€" in errors[0], result.stderr
    assert "never fine-tuned" not in result.stderr


def test_chat_with_a_model_never_fine_tuned_says_so_once_and_still_answers(trained):
    result = chat_with(trained.out_dir, ["What art thou?", "Speak."], "--max_new_tokens", "10")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("never fine-tuned") == 1, result.stderr
    assert "error" not in result.stderr, result.stderr  # the second turn too: "<end>" is the template's, not typed
    assert len(result.stdout) >= 20, result.stdout  # two answers of 10 characters
