"""test_rl.py: learning from reward (scripts/rl.py), one behaviour per test, offline, on tiny models.

    python -m pytest test_rl.py

The toy task: a model with six characters ("\\n", "A", "U", "a", "b", "|") and a one-character chat
template is asked "b" and must answer "a", then its end marker "|". Fresh from its random init it
writes that one time in 36; a few steps of rl.py make it the answer it gives.
"""
import argparse
import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import gpt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
from chat import chat_reply  # noqa: E402  scripts/chat.py
import eval_chat  # noqa: E402  scripts/eval_chat.py: greedy answers, right or wrong
import make_chats  # noqa: E402  scripts/make_chats.py: fresh questions to learn from
import prepare  # noqa: E402  scripts/prepare.py: how fine-tuning encodes an answer
import rl  # noqa: E402  scripts/rl.py

VOCAB = "\nAUab|"
TEMPLATE = dict(system="S", user="U", assistant="A", end="|")


def chat(*turns):
    return json.dumps({"messages": [{"role": role, "content": content} for role, content in turns]})


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def toy(tmp_path, seed=0):
    """A fresh toy chat model's checkpoint and the one question it must learn to answer."""
    torch.manual_seed(seed)
    config = dict(n_layer=1, n_head=1, n_embd=16, block_size=16, vocab_size=len(VOCAB), dropout=0.0,
                  gelu="exact")
    model = gpt.GPT(gpt.GPTConfig(**config))
    path = str(tmp_path / "toy.pt")
    gpt.save_atomic(dict(model=model.state_dict(), config=config, vocab=VOCAB, chat=TEMPLATE, iter=0,
                         best_val_loss=float("nan")), path)
    return path, write_lines(tmp_path / "questions.jsonl", [chat(("user", "b"), ("assistant", "a"))])


def loaded(path):
    ckpt = gpt.load_checkpoint(path, "")
    return ckpt, gpt.model_from(ckpt, torch.device("cpu")), gpt.tokenizer_of(ckpt)


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.csv"), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


TOY_RUN = ["--max_new_tokens", "2", "--batch_size", "8", "--samples", "16", "--learning_rate", "1e-2",
           "--device", "cpu"]


# ----------------------------------------------------------------------------- the arithmetic
def test_an_advantage_is_the_reward_minus_its_group_mean():
    assert rl.advantages([1, 0, 0, 1]) == [0.5, -0.5, -0.5, 0.5]
    assert rl.advantages([1, 0, 0, 0]) == [0.75, -0.25, -0.25, -0.25]
    assert rl.advantages([1, 1, 1, 1]) == [0, 0, 0, 0]


def test_the_loss_falls_on_the_answer_tokens_and_end_markers_only():
    prompt, answers, advantage = [1, 2, 3, 2], [[4, 5], [4, 4, 4, 5], [5]], [0.5, -0.5, 0.25]
    x, y, advantage = rl.policy_batch(prompt, answers, advantage, torch.device("cpu"))
    logits = torch.zeros(*x.shape, 6, requires_grad=True)  # every token equally likely: log p = -ln 6
    loss = rl.policy_loss(logits, y, advantage, answers=4)
    assert loss.item() == pytest.approx((0.5 * 2 - 0.5 * 4 + 0.25 * 1) * math.log(6) / 4)
    loss.backward()
    touched = logits.grad.abs().sum(-1) > 0  # (B, T): positions whose scores the loss moves
    for i, (answer, a) in enumerate(zip(answers, advantage.tolist())):
        at = range(len(prompt) - 1, len(prompt) + len(answer) - 1)  # where each answer token is predicted
        assert x[i, :len(prompt)].tolist() == prompt and [y[i, t].item() for t in at] == answer
        assert touched[i].tolist() == [t in at for t in range(x.size(1))]  # no prompt, no padding
        for t, token in zip(at, answer):  # raised if better than the group's mean, lowered if worse
            assert (logits.grad[i, t, token] < 0) == (a > 0)


def test_answers_are_sampled_per_prompt_in_batches_of_equal_length(tmp_path):
    path, _ = toy(tmp_path)
    ckpt, model, tokenizer = loaded(path)
    prompts = [tokenizer.encode(text) for text in ("Ub\nA", "Uab\nA", "Ua\nA", "Ubba\nA")]
    tries = rl.sample_answers(model, tokenizer, "|", prompts, 3, 1e-30, 6, None)  # near-greedy
    for prompt, answers in zip(prompts, tries):  # as if each prompt had been answered alone
        alone = [t.item() for t, _ in gpt.generate(model, torch.tensor([prompt]), 6, 0)]
        assert len(answers) == 3
        for answer in answers:  # up to and including the end marker, or all 6 tokens
            assert answer == alone[:len(answer)]
            assert answer[-1] == tokenizer.encode("|")[0] or len(answer) == 6


def test_pass_at_k_counts_a_question_right_when_any_of_its_answers_is(tmp_path, monkeypatch):
    path, questions_file = toy(tmp_path)
    ckpt, model, tokenizer = loaded(path)
    questions = rl.read_questions(questions_file, tokenizer, TEMPLATE, 16, 2)
    tries = {"one right": ["b|", "a|", "|", "aa"], "none right": ["b|", "a", "aa", "|"]}  # "a": never ended
    for name, answers in tries.items():
        monkeypatch.setattr(rl, "sample_answers", lambda model, tokenizer, end, prompts, *rest:
                            [[tokenizer.encode(a) for a in answers] for _ in prompts])
        assert rl.pass_at_k(model, tokenizer, TEMPLATE, questions, 4, 1.0, 2, None) == \
            {"(none)": 100.0 if name == "one right" else 0.0}


# ----------------------------------------------------------------------------- a step
@pytest.mark.parametrize("answers, skipped", [(["a|"] * 4, True), (["b|"] * 4, True),
                                              (["a|", "b|", "b|", "a|"], False)])
def test_a_group_whose_answers_all_score_alike_is_skipped_and_counted(tmp_path, monkeypatch, answers,
                                                                      skipped):
    path, questions_file = toy(tmp_path)
    ckpt, model, tokenizer = loaded(path)
    questions = rl.read_questions(questions_file, tokenizer, TEMPLATE, 16, 2) * 3
    monkeypatch.setattr(rl, "sample_answers", lambda model, tokenizer, end, prompts, *rest:
                        [[tokenizer.encode(a) for a in answers] for _ in prompts])
    args = argparse.Namespace(samples=4, temperature=1.0, max_new_tokens=2, learning_rate=1e-2, grad_clip=1.0)
    optimizer = gpt.make_optimizer(model, argparse.Namespace(learning_rate=1e-2, weight_decay=0.0),
                                   torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reward, mixed, skips, tokens = rl.rl_step(model, optimizer, questions, tokenizer, "|", args, None)
    assert (mixed, skips) == ((0, 3) if skipped else (3, 0))
    assert reward == sum(a == "a|" for a in answers) / 4 and tokens == 3 * 8
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert unchanged == skipped


def test_the_loss_takes_log_p_at_temperature_1_whatever_the_answers_were_sampled_at(tmp_path, monkeypatch):
    path, questions_file = toy(tmp_path)  # no worse than at the sampler's, without --sft_data (RESULTS.md)
    monkeypatch.setattr(rl, "sample_answers", lambda model, tokenizer, end, prompts, *rest:
                        [[tokenizer.encode(a) for a in ("a|", "b|", "b|", "a|")] for _ in prompts])
    weights = []
    for temperature in (1.0, 2.0):
        ckpt, model, tokenizer = loaded(path)
        questions = rl.read_questions(questions_file, tokenizer, TEMPLATE, 16, 2)
        args = argparse.Namespace(samples=4, temperature=temperature, max_new_tokens=2, learning_rate=1e-2,
                                  grad_clip=1e9)  # unclipped: a loss / T would show in the step
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        rl.rl_step(model, optimizer, questions, tokenizer, "|", args, None)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_an_anchor_mixes_in_its_reference_answers_loss_even_where_every_group_is_skipped(tmp_path,
                                                                                        monkeypatch):
    path, questions_file = toy(tmp_path)
    ckpt, model, tokenizer = loaded(path)
    questions = rl.read_questions(questions_file, tokenizer, TEMPLATE, 16, 2) * 3
    monkeypatch.setattr(rl, "sample_answers", lambda model, tokenizer, end, prompts, *rest:
                        [[tokenizer.encode("b|")] * 4 for _ in prompts])  # all wrong: no reward to learn from
    x, y, _ = rl.policy_batch(questions[0].prompt, [tokenizer.encode("a|")], [0.0], torch.device("cpu"))
    def log_p_reference():  # of "a|", the reference and its end marker
        with torch.no_grad():
            return -gpt.next_token_loss(model(x), y, reduction="sum").item()
    before = log_p_reference()
    assert rl.reference_loss(model, questions, torch.device("cpu")).item() == \
        pytest.approx(-before, rel=1e-5)  # summed over the answer's tokens, averaged over the questions
    optimizer = gpt.make_optimizer(model, argparse.Namespace(learning_rate=1e-2, weight_decay=0.0),
                                   torch.device("cpu"))
    args = argparse.Namespace(samples=4, temperature=1.0, max_new_tokens=2, learning_rate=1e-2,
                              grad_clip=1.0, sft_weight=1.0)
    for _ in range(5):  # --sft_data's conversations: here the same question
        step = rl.rl_step(model, optimizer, questions, tokenizer, "|", args, None, questions[:2])
        assert step[1:3] == (0, 3)
    assert log_p_reference() > before + 0.1


def test_sft_data_is_read_checked_and_used_by_a_run(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    out = str(tmp_path / "out")
    run = ["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "2", *TOY_RUN]
    assert rl.main([*run, "--sft_data", questions_file, "--sft_weight", "0.5"]) == 0
    assert "questions.jsonl x 0.5 mixed in" in capsys.readouterr().out
    bad = write_lines(tmp_path / "anchor.jsonl", [GOOD, chat(("user", "b"), ("assistant", "z"))])
    assert rl.main([*run, "--overwrite", "--sft_data", bad, "--sft_weight", "0.5"]) == 1
    assert "anchor.jsonl, line 2: the answer 'z' cannot be written" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        rl.main([*run, "--overwrite", "--sft_data", questions_file])  # no weight
    assert usage.value.code == 2 and "go together" in capsys.readouterr().err


# ----------------------------------------------------------------------------- learning, end to end
def test_a_few_steps_teach_the_toy_model_its_answer(tmp_path):
    path, questions_file = toy(tmp_path)
    out = str(tmp_path / "out")
    assert rl.main(["--init_from", path, "--data", questions_file, "--eval_data", questions_file,
                    "--out_dir", out, "--max_iters", "40", "--eval_interval", "20", *TOY_RUN]) == 0
    log = read_log(out)
    rewards = [float(row["reward"]) for row in log[1:]]
    # Right by chance one time in 36: of the last 5 steps' 640 answers, about 18. Seeds 0-5 all give
    # 0.95 and up; 0.9 (576 right) by chance alone is less likely than one in 10^500.
    assert sum(rewards[:5]) / 5 < 0.1 and sum(rewards[-5:]) / 5 > 0.9, rewards
    assert [row["accuracy"] for row in log if row["accuracy"]][0] == "0.0" and log[-1]["accuracy"] == "100.0"
    ckpt, model, tokenizer = loaded(os.path.join(out, "best.pt"))  # as chat.py and eval_chat.py read it
    assert {"model", "config", "vocab", "chat", "iter", "best_val_loss"} <= ckpt.keys()
    assert ckpt["accuracy"] == 100.0
    answer = chat_reply(model, tokenizer, ckpt["chat"], [dict(role="user", content="b")], 2, 0, None, None)
    assert "".join(answer) == "a"


def test_ctrl_c_finishes_the_step_saves_and_exits_130(tmp_path, monkeypatch):
    path, questions_file = toy(tmp_path)
    out, step = str(tmp_path / "out"), rl.rl_step
    def interrupted_at_step_3(*args):
        result = step(*args)
        if len(interrupted_at_step_3.calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        interrupted_at_step_3.calls.append(1)
        return result
    interrupted_at_step_3.calls = []
    monkeypatch.setattr(rl, "rl_step", interrupted_at_step_3)
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "50",
                    *TOY_RUN]) == 130
    assert gpt.load_checkpoint(os.path.join(out, "ckpt.pt"), "")["iter"] == 3
    assert [row["iter"] for row in read_log(out)] == ["0", "1", "2", "3"]


def test_a_fresh_run_will_not_replace_a_model_in_out_dir_and_names_it_by_its_accuracy(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    run = ["--init_from", path, "--data", questions_file, "--eval_data", questions_file, "--out_dir",
           str(tmp_path / "out"), "--max_iters", "1", *TOY_RUN]
    assert rl.main(run) == 0
    capsys.readouterr()
    assert rl.main(run) == 1
    err = capsys.readouterr().err.strip()
    assert "holds a run of rl.py (step 1, best mean greedy accuracy 0.0%)" in err, err  # not "val loss nan"
    assert "--resume" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert rl.main([*run, "--overwrite"]) == 0


# ----------------------------------------------------------------------------- bad input
GOOD = chat(("user", "b"), ("assistant", "a"))


@pytest.mark.parametrize("lines, expected", [
    ([GOOD, chat(("user", "b"))], "questions.jsonl, line 2: no assistant turn"),
    ([chat(("user", "b"), ("assistant", "z"))], "questions.jsonl, line 1: the answer 'z' cannot be written"),
    ([chat(("user", "z"), ("assistant", "a"))], "questions.jsonl, line 1: the question cannot be read"),
    ([chat(("user", "b"), ("assistant", "aa"))], "questions.jsonl, line 1: the answer and its end marker are 3"),
    ([GOOD, "a line that is not json"], "questions.jsonl, line 2: not a conversation"),
    (['{"text": "a story"}'], "questions.jsonl, line 1: not a conversation"),
    ([], "questions.jsonl holds no conversations")])
def test_bad_input_is_one_line_naming_the_file_and_line_and_exit_1(tmp_path, capsys, lines, expected):
    path, _ = toy(tmp_path)
    questions_file = write_lines(tmp_path / "questions.jsonl", lines)
    out = tmp_path / "out"
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", str(out), *TOY_RUN]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing left that looks like a run


def test_a_model_never_fine_tuned_on_chats_is_refused_in_one_line(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    ckpt = gpt.load_checkpoint(path, "")
    gpt.save_atomic({**ckpt, "chat": None}, path)
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", str(tmp_path / "out")]) == 1
    assert "never fine-tuned on conversations" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_negative_or_non_finite_sft_weight_is_a_usage_error(tmp_path, capsys, value):
    path, questions_file = toy(tmp_path)
    with pytest.raises(SystemExit) as usage:
        rl.main(["--init_from", path, "--data", questions_file, "--out_dir", str(tmp_path / "out"),
                 *TOY_RUN, "--sft_data", questions_file, "--sft_weight", value])
    assert usage.value.code == 2 and "--sft_weight" in capsys.readouterr().err


@pytest.mark.parametrize("flags, expected", [
    (["--samples", "1"], "--samples: must be at least 2"),
    (["--max_minutes", "0"], "--max_minutes: must be a number above 0"),
    (["--learning_rate", "inf"], "--learning_rate: must be a number above 0, got inf"),  # gpt.py's refusal too
    (["--temperature", "inf"], "--temperature: must be a number above 0, got inf"),
    (["--grad_clip", "inf"], "--grad_clip: must be a number above 0, got inf"),
    (["--resume"], "not with --init_from"), (["--max_iters", "x"], "--max_iters: invalid int")])
def test_usage_errors_are_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys, flags, expected):
    path, questions_file = toy(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as usage:
        rl.main(["--init_from", path, "--data", questions_file, "--out_dir", str(out), *TOY_RUN, *flags])
    err = capsys.readouterr().err
    assert usage.value.code == 2 and err.startswith("rl.py: error: ") and expected in err, err
    assert err.count("\n") == 1 and not out.exists()


def test_eval_only_takes_one_sample_a_question_pass_at_1(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    assert rl.main(["--init_from", path, "--eval_data", questions_file, "--eval_only", "--samples", "1",
                    "--max_new_tokens", "2", "--device", "cpu"]) == 0
    assert "pass@1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- fresh questions to learn from
def asked(path):
    """The question of every user turn of a make_chats.py file, as make_chats.key gives it."""
    keys = set()
    for line in open(path, encoding="utf-8"):
        for turn in json.loads(line)["messages"]:
            if turn["role"] == "user":
                keys.add(make_chats.question_of(turn["content"]))
    assert None not in keys  # every question is read back
    return keys


def test_make_chats_reads_back_the_question_of_every_wording():
    rng = random.Random(0)
    questions = make_chats.all_questions(rng)
    for skill in make_chats.SKILLS:
        for question in questions[skill][:50]:
            for _ in range(10):  # the wordings, and both orders of the numbers
                text = make_chats.ask(skill, question, rng)[0]["content"]
                assert make_chats.question_of(text) == make_chats.key(skill, question), text
    assert make_chats.question_of("What is the capital of France?") is None


def test_fresh_words_and_exclude_give_questions_the_chat_model_was_never_tested_on(tmp_path):
    chats, fresh = tmp_path / "chats", tmp_path / "chats_rl"
    assert make_chats.main(["--out", str(chats), "--train", "400", "--test", "400"]) == 0
    assert make_chats.main(["--out", str(fresh), "--seed", "1", "--train", "8000", "--test", "400",
                            "--fresh_words", "--exclude", str(chats / "test.jsonl")]) == 0
    assert not set(make_chats.FRESH_WORDS) & set(make_chats.WORDS)
    tested = asked(chats / "test.jsonl")
    for name in "train.jsonl", "test.jsonl":
        keys = asked(fresh / name)
        assert not keys & tested  # 2,000 sums of ~4,000 pairs: without --exclude ~50 of the 100 tested
        assert {k[0] for k in keys} == set(make_chats.SKILLS)
        assert {k[1] for k in keys if k[0] in ("count", "reverse")} <= set(make_chats.FRESH_WORDS)
    assert not asked(fresh / "train.jsonl") & asked(fresh / "test.jsonl")  # its test: a validation set


@pytest.mark.parametrize("lines, expected", [
    (['{"messages": [{"role": "user", "content": "What is 12 + 30?"}]}', "not json"],
     "x.jsonl, line 2: not a"),
    (['{"messages": [{"role": "user", "content": "Hi there"}]}'], "x.jsonl, line 1: its last question is"),
    (['{"text": "What is 12 + 30?"}'], "x.jsonl, line 1: not a conversation"),
    (None, "--exclude "),
])
def test_a_bad_file_to_exclude_is_one_line_naming_it_and_its_line_and_nothing_is_written(tmp_path, capsys,
                                                                                        lines, expected):
    bad = tmp_path / "x.jsonl"
    if lines is not None:
        write_lines(bad, lines)
    out = tmp_path / "out"
    assert make_chats.main(["--out", str(out), "--train", "40", "--test", "40", "--exclude", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1, err
    assert not out.exists()


# ----------------------------------------------------------------------------- what a run leaves: checkpoints, log.csv
def with_training_settings(path):
    """The toy checkpoint, given the training settings a gpt.py run's config holds (a chat model's)."""
    ckpt = gpt.load_checkpoint(path, "")
    settings = {**gpt.DEFAULTS, **gpt.PRESETS["tiny"], "learning_rate": 3e-3, "min_lr": 3e-4}
    gpt.save_atomic({**ckpt, "config": {**settings, **ckpt["config"]}}, path)
    return gpt.load_checkpoint(path, "")["config"]


def test_checkpoints_keep_the_start_config_and_name_the_run_in_made_by(tmp_path):
    path, questions_file = toy(tmp_path)
    start = with_training_settings(path)
    out = str(tmp_path / "out")
    assert rl.main(["--init_from", path, "--data", questions_file, "--eval_data", questions_file, "--out_dir", out,
                    "--max_iters", "1", *TOY_RUN]) == 0
    for name in ("best.pt", "ckpt.pt"):
        ckpt = torch.load(os.path.join(out, name), map_location="cpu", weights_only=True)  # plain data only
        assert ckpt["config"] == start  # the model's shape and gpt.py's settings: RL's are not gpt.py's
        assert ckpt["made_by"]["script"] == "scripts/rl.py"
        flags = ckpt["made_by"]["args"]
        assert (flags["init_from"], flags["samples"], flags["learning_rate"], flags["max_iters"]) == (path, 16, 1e-2, 1)
        assert all(type(v) in (str, int, float, bool, type(None)) for v in flags.values())


def test_gpt_py_init_from_an_rl_checkpoint_gets_the_start_settings_not_rl_s(tmp_path):
    path, questions_file = toy(tmp_path)
    with_training_settings(path)
    out = str(tmp_path / "out")
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "1",
                    *TOY_RUN]) == 0
    cfg, _, init = gpt.settings(gpt.parse_args(["--init_from", os.path.join(out, "best.pt")]))
    assert (cfg.learning_rate, cfg.min_lr, cfg.batch_size) == (3e-3, 3e-4, 16)  # RL's: 1e-2, and 8 questions
    assert gpt.get_lr(cfg.max_iters, cfg) <= gpt.get_lr(cfg.warmup_iters, cfg)  # it falls, never rises


def test_gpt_py_resume_on_an_rl_run_says_rl_py_continues_it(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    out = str(tmp_path / "out")
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "1",
                    *TOY_RUN]) == 0
    capsys.readouterr()
    assert gpt.main(["--resume", "--out_dir", out]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "made by scripts/rl.py" in err, err
    assert f"python scripts/rl.py --resume --out_dir {out}" in err and "--init_from" in err


@pytest.mark.parametrize("names", [["accuracy", "iter"], ["reward", "elapsed_s", "a,b", "two\nlines"]])
def test_skills_of_any_name_get_columns_of_their_own_in_log_csv(tmp_path, names):
    path, questions_file = toy(tmp_path)
    held_out = write_lines(tmp_path / "held_out.jsonl", [json.dumps({**json.loads(GOOD), "skill": name})
                                                         for name in names])
    out = str(tmp_path / "out")
    assert rl.main(["--init_from", path, "--data", questions_file, "--eval_data", held_out, "--out_dir", out,
                    "--max_iters", "2", *TOY_RUN]) == 0
    log = read_log(out)  # csv's own reading: a comma or a newline in a name is quoted
    assert [row["iter"] for row in log] == ["0", "1", "2"]
    for row in log[::2]:  # steps 0 and 2 are evaluated
        skills = [float(row[f"acc_{name}"]) for name in names]
        assert float(row["accuracy"]) == pytest.approx(sum(skills) / len(skills), abs=0.01)


# ----------------------------------------------------------------------------- stopping and going on
def interrupt_at(monkeypatch, step, signum=signal.SIGINT):
    """rl_step, sending this process signum during the given step (1, 2, ...)."""
    calls, real_step = [], rl.rl_step
    def interrupted(*args):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return real_step(*args)
    monkeypatch.setattr(rl, "rl_step", interrupted)


def test_resume_after_ctrl_c_ends_with_the_weights_and_log_of_a_run_never_stopped(tmp_path, monkeypatch, capsys):
    path, questions_file = toy(tmp_path)
    run = ["--init_from", path, "--data", questions_file, "--eval_data", questions_file, "--max_iters", "6",
           "--eval_interval", "3", *TOY_RUN]
    whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
    assert rl.main([*run, "--out_dir", whole]) == 0
    interrupt_at(monkeypatch, 4)
    capsys.readouterr()
    assert rl.main([*run, "--out_dir", halves]) == 130
    assert f"go on with --resume --out_dir {halves}\n" in capsys.readouterr().out  # the folder named
    assert gpt.load_checkpoint(os.path.join(halves, "ckpt.pt"), "")["iter"] == 4
    monkeypatch.undo()
    assert rl.main(["--resume", "--out_dir", halves]) == 0  # its flags from its ckpt.pt
    for name in ("ckpt.pt", "best.pt"):
        a, b = (gpt.load_checkpoint(os.path.join(out, name), "") for out in (whole, halves))
        assert a["iter"] == b["iter"] and a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name  # bit-exact
    timeless = [[{k: v for k, v in row.items() if not k.endswith("_s")} for row in read_log(out)]
                for out in (whole, halves)]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 7


def test_resume_takes_a_changed_learning_rate_and_refuses_a_changed_seed(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    out = str(tmp_path / "out")
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "1",
                    *TOY_RUN]) == 0
    assert rl.main(["--resume", "--out_dir", out, "--max_iters", "2", "--learning_rate", "3e-3"]) == 0
    ckpt = gpt.load_checkpoint(os.path.join(out, "ckpt.pt"), "")
    assert ckpt["made_by"]["args"]["learning_rate"] == 3e-3
    assert {group["lr"] for group in ckpt["optimizer"]["param_groups"]} == {3e-3}  # what step 2 used
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:  # the generators go on from their states, not from a seed
        rl.main(["--resume", "--out_dir", out, "--max_iters", "3", "--seed", "7"])
    err = capsys.readouterr().err
    assert usage.value.code == 2 and "--seed 1337" in err and err.count("\n") == 1, err
    assert rl.main(["--resume", "--out_dir", out, "--max_iters", "3", "--seed", "1337"]) == 0  # the same: fine


def test_resume_after_ties_keeps_the_best_pt_of_a_run_never_stopped(tmp_path, monkeypatch):
    path, questions_file = toy(tmp_path)  # one question of three answered right: 33.333...%, shown 33.33
    third = write_lines(tmp_path / "third.jsonl", [GOOD, chat(("user", "a"), ("assistant", "b")),
                                                   chat(("user", "ab"), ("assistant", "b"))])
    run = ["--init_from", path, "--data", questions_file, "--eval_data", third, "--max_iters", "4",
           "--eval_interval", "2", *TOY_RUN]
    whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
    assert rl.main([*run, "--out_dir", whole]) == 0
    assert [row["accuracy"] for row in read_log(whole) if row["accuracy"]] == ["0.0", "33.33", "33.33"]
    interrupt_at(monkeypatch, 3)
    assert rl.main([*run, "--out_dir", halves]) == 130
    monkeypatch.undo()
    assert rl.main(["--resume", "--out_dir", halves]) == 0
    a, b = (gpt.load_checkpoint(os.path.join(out, "best.pt"), "") for out in (whole, halves))
    assert a["iter"] == b["iter"] == 2  # step 4's tie is no better
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_after_max_minutes_needs_a_larger_budget(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    out = str(tmp_path / "out")
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "3",
                    "--max_minutes", "1e-6", *TOY_RUN]) == 0  # stopped after step 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:  # not one more step, and a stop, every time
        rl.main(["--resume", "--out_dir", out])
    err = capsys.readouterr().err
    assert usage.value.code == 2 and "give a larger --max_minutes" in err and err.count("\n") == 1, err
    assert rl.main(["--resume", "--out_dir", out, "--max_minutes", "60"]) == 0
    assert [row["iter"] for row in read_log(out)] == ["0", "1", "2", "3"]


def test_resume_needs_an_rl_run_in_out_dir(tmp_path, capsys):
    path, _ = toy(tmp_path)
    assert rl.main(["--resume", "--out_dir", str(tmp_path / "nothing")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    (tmp_path / "gpt_run").mkdir()
    shutil.copy(path, tmp_path / "gpt_run" / "ckpt.pt")  # a gpt.py checkpoint, no rl.py run
    assert rl.main(["--resume", "--out_dir", str(tmp_path / "gpt_run")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not the ckpt.pt of an rl.py run" in err and "--init_from" in err


def test_a_run_started_ignoring_ctrl_c_keeps_ignoring_it(tmp_path, monkeypatch):
    path, questions_file = toy(tmp_path)  # `python scripts/rl.py ... &` from a script: SIGINT is ignored
    out = str(tmp_path / "out")
    interrupt_at(monkeypatch, 2)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "3",
                        *TOY_RUN]) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # and left as it found it
    finally:
        signal.signal(signal.SIGINT, old)
    assert gpt.load_checkpoint(os.path.join(out, "ckpt.pt"), "")["iter"] == 3


def test_max_minutes_stops_saves_and_exits_0(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    out = str(tmp_path / "out")
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "50",
                    "--max_minutes", "1e-6", *TOY_RUN]) == 0  # 60 microseconds: the first step is over it
    assert "--max_minutes 1e-06: stopped after step 1" in capsys.readouterr().out
    assert gpt.load_checkpoint(os.path.join(out, "ckpt.pt"), "")["iter"] == 1
    assert [row["iter"] for row in read_log(out)] == ["0", "1"]


def test_a_pipe_that_closes_stops_the_run_quietly_and_saves_it(tmp_path):
    path, questions_file = toy(tmp_path)  # `python scripts/rl.py ... | head -1`
    out = tmp_path / "out"
    command = [sys.executable, os.path.join(HERE, "scripts", "rl.py"), "--init_from", path, "--data",
               questions_file, "--out_dir", str(out), "--max_iters", "500", *TOY_RUN]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.stdout.readline().startswith(b"1 questions from ")
    run.stdout.close()  # head has its line, and goes
    err = run.stderr.read().decode()
    assert run.wait(timeout=60) == 141 and err == "", err  # 128 + SIGPIPE, as the shell's; no traceback
    steps = [int(row["iter"]) for row in read_log(out)]
    assert gpt.load_checkpoint(str(out / "ckpt.pt"), "")["iter"] == steps[-1] < 500  # saved where it stopped


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 68719476736 bytes"),
                                   MemoryError()])
def test_running_out_of_memory_is_one_line_that_names_the_flags_to_lower(tmp_path, monkeypatch, capsys, error):
    path, questions_file = toy(tmp_path)
    def allocates_too_much(*args):
        raise error
    monkeypatch.setattr(rl, "sample_answers", allocates_too_much)
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", str(tmp_path / "out"),
                    *TOY_RUN, "--samples", "100000000"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory") and "--samples" in err and len(err.splitlines()) == 1, err


def test_out_of_memory_in_eval_only_names_its_own_flags(tmp_path, monkeypatch, capsys):
    path, questions_file = toy(tmp_path)  # pass@k samples all of a prompt length at once: no --batch_size
    def allocates_too_much(*args):
        raise MemoryError()
    monkeypatch.setattr(rl, "sample_answers", allocates_too_much)
    assert rl.main(["--init_from", path, "--eval_data", questions_file, "--eval_only", "--max_new_tokens", "2",
                    "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory") and len(err.splitlines()) == 1, err
    assert "--samples" in err and "--eval_data" in err and "--batch_size" not in err


# ----------------------------------------------------------------------------- a run that diverges
def finite_scores(path, prompt):
    ckpt, model, tokenizer = loaded(path)
    with torch.no_grad():
        return bool(model(torch.tensor([tokenizer.encode(prompt)])).isfinite().all())


def test_a_learning_rate_too_large_stops_at_the_step_and_keeps_the_last_good_ckpt(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    out = str(tmp_path / "out")
    # At 1e6 one step leaves the weights finite but so large that the scores overflow: unchecked, that
    # step's eval saved them, and the next step's sampler failed in a traceback (NaN probabilities)
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "20",
                    "--eval_interval", "1", *TOY_RUN, "--learning_rate", "1e6"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lower --learning_rate (1000000.0)" in err, err
    step = int(err.split("error: step ")[1].split(":")[0])
    ckpt = gpt.load_checkpoint(os.path.join(out, "ckpt.pt"), "")
    assert ckpt["iter"] == step - 1 and all(v.isfinite().all() for v in ckpt["model"].values())
    assert finite_scores(os.path.join(out, "ckpt.pt"), "Ub\nA")  # a model that can go on
    assert [int(row["iter"]) for row in read_log(out)] == list(range(step))


def test_an_anchor_weight_too_large_is_named(tmp_path, capsys):
    path, questions_file = toy(tmp_path)
    out = str(tmp_path / "out")  # its loss, about 3.6 x 3e38, overflows float32
    assert rl.main(["--init_from", path, "--data", questions_file, "--out_dir", out, "--max_iters", "2",
                    *TOY_RUN, "--sft_data", questions_file, "--sft_weight", "3e38"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: step 1: "), err
    assert "lower --sft_weight (3e+38)" in err
    assert gpt.load_checkpoint(os.path.join(out, "ckpt.pt"), "")["iter"] == 0


# ----------------------------------------------------------------------------- a cut-off answer, and BPE answers
def whole_reply(reply):
    """A chat_reply's pieces joined, and what it returned: whether the end marker came."""
    pieces = []
    try:
        while True:
            pieces.append(next(reply))
    except StopIteration as stop:
        return "".join(pieces), stop.value


def test_chat_reply_returns_whether_the_end_marker_came(tmp_path):
    path, _ = toy(tmp_path)
    ckpt, model, tokenizer = loaded(path)
    first = tokenizer.decode([next(gpt.generate(model, torch.tensor([tokenizer.encode("Ub\nA")]), 1, 0))[0].item()])
    asked = [dict(role="user", content="b")]
    for end, ended in ((first, True), (next(c for c in VOCAB if c != first), False)):
        text, came = whole_reply(chat_reply(model, tokenizer, {**TEMPLATE, "end": end}, asked, 1, 0, None, None))
        assert came is ended and text == ("" if ended else first)


def test_an_answer_cut_off_before_its_end_marker_is_wrong_in_training_and_in_eval(tmp_path, monkeypatch, capsys):
    path, questions_file = toy(tmp_path)
    ckpt, model, tokenizer = loaded(path)
    questions = rl.read_questions(questions_file, tokenizer, TEMPLATE, 16, 2)
    assert rl.answer_text(tokenizer, "|", tokenizer.encode("a")) is None  # the reward: 0
    for ended in (True, False):
        def stand_in(*args):  # the right text, "a", then the end marker or not
            yield "a"
            return ended
        monkeypatch.setattr(eval_chat, "chat_reply", stand_in)
        results = eval_chat.answer_all(model, tokenizer, TEMPLATE, [("(none)", questions[0].turns)], 2)
        assert eval_chat.right(results[0]) is ended
        eval_chat.report(results)
        shown = capsys.readouterr().out
        assert ("100.0%" in shown) is ended and ("1 answers never reached the end marker" in shown) is not ended
        assert rl.greedy_accuracy(model, tokenizer, TEMPLATE, questions, 2) == {"(none)": 100.0 * ended}


def test_bpe_answers_and_end_markers_are_encoded_apart_as_prepare_py_encodes_them(tmp_path):
    pytest.importorskip("rustbpe")
    lines = [chat(("user", f"Where is {town}?"), ("assistant", f"{town}."))
             for town in ("Paris", "Rome", "Oslo", "Lima", "Bern") * 4]
    data = write_lines(tmp_path / "chats.jsonl", lines)
    meta = prepare.prepare([data], str(tmp_path / "prepared"), "bpe", 300)
    tokenizer = gpt.BPETokenizer(meta["tokenizer"])
    ids = np.fromfile(tmp_path / "prepared" / "train.bin", dtype=meta["dtype"])
    mask = np.fromfile(tmp_path / "prepared" / "train_mask.bin", dtype=np.uint8)
    edges = np.flatnonzero(np.diff(mask)) + 1  # where the mask turns on or off
    learned = [run.tolist() for run, on in zip(np.split(ids, edges), np.split(mask, edges)) if on[0]]
    questions = rl.read_questions(data, tokenizer, prepare.TEMPLATE, 64, 16)
    assert [q.reference for q in questions[:len(learned)]] == learned  # the answers' ids that fine-tuning learned
    paris = questions[0].reference
    assert paris == tokenizer.encode("Paris.") + tokenizer.encode("<end>") != tokenizer.encode("Paris.<end>")
    torch.manual_seed(0)
    config = dict(n_layer=1, n_head=1, n_embd=16, block_size=64, vocab_size=tokenizer.vocab_size, dropout=0.0)
    model = gpt.GPT(gpt.GPTConfig(**config))
    x, y, _ = rl.policy_batch(questions[0].prompt, [paris], [0.0], torch.device("cpu"))
    with torch.no_grad():  # --sft_data's loss is on those ids too
        assert rl.reference_loss(model, questions[:1], torch.device("cpu")).item() == \
            pytest.approx(gpt.next_token_loss(model(x), y, reduction="sum").item(), rel=1e-5)
