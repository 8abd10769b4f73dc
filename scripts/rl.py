"""
rl.py: learn from reward. A chat model answers each question several times, every answer is checked
against the reference, and the model moves towards the answers that scored.

    python scripts/make_chats.py --out chats_rl --seed 1 --fresh_words --exclude chats/test.jsonl
    python scripts/rl.py --init_from out_chat/best.pt --data chats_rl/train.jsonl --out_dir out_rl \\
        --eval_data chats_rl/test.jsonl --max_new_tokens 20 --max_iters 600
    python scripts/eval_chat.py out_rl chats/test.jsonl                   # greedy accuracy per skill
    python scripts/rl.py --init_from out_rl/ckpt.pt --eval_data chats/test.jsonl --eval_only \\
        --temperature 1                                                   # greedy and pass@8 per skill

Fine-tuning on conversations copies the reference answers. Here the model writes its own, and only a
score says how good each was. GRPO's form, as nanochat's chat_rl.py uses it:
- --data holds conversations, as scripts/prepare.py reads them: the last assistant turn of a line is
  the reference answer, the turns before it the question;
- each step asks --batch_size questions and samples --samples answers to each at --temperature, with
  gpt.py's sampler in the chat template the checkpoint keeps;
- reward: 1 if an answer ends (its end marker) and equals the reference exactly (surrounding spaces
  aside), else 0. One cut off by --max_new_tokens scores 0: in a chat it would have gone on, and
  eval_chat.py counts it wrong too;
- advantage: the reward minus the mean reward of the answers to the same question. A question whose
  answers all score alike teaches nothing: it is skipped, and counted;
- loss: -advantage x log p of each answer's own tokens and end marker; AdamW at a constant learning
  rate, the gradient clipped. p is the model's own (temperature 1), not the sampler's (at --temperature):
  the hot sampler only picks which answers get tried, and the loss moves the distribution that greedy
  answers and chats read. log p at --temperature (the exact gradient for the sampler) measured the same,
  over 150 steps without --sft_data (RESULTS.md); beside it, unmeasured, it would also halve the reward's
  pull against the anchor's;
- --sft_data and --sft_weight: each step also takes --batch_size conversations of --sft_data (the
  fine-tuning set, say: nothing new to learn) and adds --sft_weight x fine-tuning's loss on their
  answers (InstructGPT's "pretraining mix"): an anchor against the reward narrowing what the model
  samples (RESULTS.md: counting's pass@8 stayed 91%, not 59%). Without them: reward only.
Every --eval_interval steps the model answers --eval_data greedily, as scripts/eval_chat.py does.
best.pt (the best mean accuracy over the skills) and ckpt.pt (the latest: written at each eval, on
Ctrl-C, at --max_minutes and when a pipe reading stdout closes, and what --resume continues) are gpt.py's
checkpoints: gpt.py --sample, scripts/chat.py, serve.py and eval_chat.py read them. Their config is the
start's, unchanged; "made_by" holds this run's flags (see checkpoint). log.csv: a row per step, a column
per skill (acc_<skill>).
"""
import argparse
import csv
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from chat import chat_turn  # noqa: E402  scripts/chat.py: a turn as fine-tuning saw it
import eval_chat  # noqa: E402  scripts/eval_chat.py: greedy answers, as the held-out eval gives them
import gpt  # noqa: E402  the model, its sampler and its checkpoints
import prepare  # noqa: E402  scripts/prepare.py: the check of a conversation, and PrepareError

WEIGHT_DECAY = 0.0  # as nanochat's chat_rl: only the reward should move the weights


# ------------------------------------------------------------ questions and their reference answers
@dataclass
class Question:
    skill: str  # the line's "skill" field, to report accuracy per skill
    turns: list  # the conversation up to and including the reference answer
    answer: str  # the reference: the last assistant turn, surrounding spaces stripped
    prompt: list  # the token ids the model answers after: the turns before, then "Assistant: "
    reference: list  # the ids of the reference and its end marker, as fine-tuning learned them


def prompt_ids(tokenizer, template, turns, block_size):
    """The ids scripts/chat.py's chat_reply writes before an answer: the turns as chat_turn renders them,
    the oldest dropped while they overflow 3/4 of a block, then the assistant's prefix."""
    rendered = [[i for piece in chat_turn(t, template) for i in tokenizer.encode(piece)] for t in turns]
    ids = tokenizer.encode(template["assistant"])
    while len(rendered) > 1 and sum(map(len, rendered)) + len(ids) > block_size * 3 // 4:
        rendered.pop(0)
    return [i for turn in rendered for i in turn] + ids


def read_questions(path, tokenizer, template, block_size, max_new_tokens):
    """Every line of a .jsonl file of conversations as a Question; a line that cannot be one is named."""
    questions = []
    for where, record, turns in eval_chat.conversations(path):  # each line a conversation, or named
        last = max(i for i, turn in enumerate(turns) if turn["role"] == "assistant")
        turns, answer = turns[:last + 1], turns[last]["content"].strip()
        try:
            prompt = prompt_ids(tokenizer, template, turns[:-1], block_size)
        except gpt.GPTError as e:
            raise prepare.PrepareError(f"{where}: the question cannot be read by this model: {e}") from None
        try:  # apart, as prepare.py encodes them: a BPE merges 'Paris.<end>' into other tokens
            reference = tokenizer.encode(turns[-1]["content"]) + tokenizer.encode(template["end"])
        except gpt.GPTError as e:
            raise prepare.PrepareError(f"{where}: the answer {answer!r} cannot be written by this model: "
                                       f"{e}") from None
        if len(reference) > max_new_tokens:
            raise prepare.PrepareError(f"{where}: the answer and its end marker are {len(reference)} tokens, "
                                       f"more than --max_new_tokens {max_new_tokens}")
        if len(prompt) + max_new_tokens > block_size:
            raise prepare.PrepareError(f"{where}: the question is {len(prompt)} tokens; with "
                                       f"--max_new_tokens {max_new_tokens} it does not fit the model's "
                                       f"block_size {block_size}")
        questions.append(Question(str(record.get("skill", "(none)")), turns, answer, prompt, reference))
    return questions


# ------------------------------------------------------------ trying answers
def sample_answers(model, tokenizer, end, prompts, samples, temperature, max_new_tokens, generator):
    """samples answers to each prompt, as lists of token ids up to and including the end marker (or
    max_new_tokens of them, if it never came). The model knows no padding, so the rows of a batch must
    be equally long: the prompts of each length are answered together, in one batch."""
    device = next(model.parameters()).device
    answers = [None] * len(prompts)
    by_length = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    for group in by_length.values():
        idx = torch.tensor([prompts[i] for i in group for _ in range(samples)], device=device)  # (B, T)
        rows, done = [[] for _ in range(len(idx))], [False] * len(idx)
        for next_id, _ in gpt.generate(model, idx, max_new_tokens, temperature, None, generator):
            for row, token in enumerate(next_id[:, 0].tolist()):  # (B, 1) -> B ids
                if not done[row]:
                    rows[row].append(token)
                    # the marker lies in the last len(end) tokens at most: no need to decode more
                    done[row] = end in tokenizer.decode(rows[row][-len(end):])
            if all(done):  # rows that ended are sampled on (and ignored) until all have
                break
        for j, i in enumerate(group):
            answers[i] = rows[j * samples:(j + 1) * samples]
    return answers


def answer_text(tokenizer, end, ids):
    """What an answer says: its text before the end marker, surrounding spaces stripped, as eval_chat.py
    reads it. None if it never ended: a model must learn to stop, not to trail on until it is cut off."""
    text = tokenizer.decode(ids)
    return text[:text.index(end)].strip() if end in text else None


# ------------------------------------------------------------ the reward and the policy gradient
def advantages(rewards):
    """Each reward minus its group's mean: an answer better than its siblings is pushed up, a worse one
    down. nanochat (and Dr. GRPO) leave out GRPO's division by the group's std."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def policy_batch(prompt, answers, advantage, device):
    """One question's answers as inputs x and targets y (B, T), and their advantages (B,). A target is
    an answer token (the end marker's too) or -1: the prompt, and the padding after a short answer, get
    no loss, hence no gradient. A causal model's earlier positions never see the padding."""
    T = len(prompt) + max(map(len, answers)) - 1
    x = torch.zeros(len(answers), T, dtype=torch.long)
    y = torch.full((len(answers), T), -1, dtype=torch.long)
    for i, answer in enumerate(answers):
        tokens = torch.tensor(prompt + answer)
        x[i, :len(tokens) - 1] = tokens[:-1]
        y[i, len(prompt) - 1:len(tokens) - 1] = tokens[len(prompt):]  # each answer token where predicted
    return x.to(device), y.to(device), torch.tensor(advantage, dtype=torch.float32, device=device)


def policy_loss(logits, y, advantage, answers):
    """-advantage x log p(answer), summed over the answers' tokens and divided by the number of answers
    sampled in the step (skipped groups' too). Sampled at temperature 1, its gradient is on average that
    of the mean reward (REINFORCE); sampled hotter, it still raises the model's own probability of the
    answers that beat their group (logits at temperature 1: see the docstring). Dividing by all answers,
    not only those that teach, makes a step whose groups were mostly skipped a small one: one lucky
    mixed group does not get a whole AdamW step to itself."""
    logp = -gpt.next_token_loss(logits.float(), y, reduction="none").view_as(y)  # (B, T); 0 where y is -1
    return -(advantage[:, None] * logp).sum() / answers


def reference_loss(model, questions, device):
    """Fine-tuning's loss on the questions' reference answers and end markers: -log p summed over
    their tokens, divided by the number of questions. One batch, padded on the right: a causal model's
    earlier positions never see the padding, and its targets are -1."""
    rows = [q.prompt + q.reference for q in questions]
    x = torch.zeros(len(rows), max(map(len, rows)) - 1, dtype=torch.long)
    y = torch.full_like(x, -1)
    for i, (q, row) in enumerate(zip(questions, rows)):
        x[i, :len(row) - 1] = torch.tensor(row[:-1])
        y[i, len(q.prompt) - 1:len(row) - 1] = torch.tensor(row[len(q.prompt):])
    x, y = x.to(device), y.to(device)
    return gpt.next_token_loss(model(x).float(), y, reduction="sum") / len(questions)


def rl_step(model, optimizer, questions, tokenizer, end, args, generator, anchor=()):
    """One step: try, score, move towards what scored. The model stays in eval mode (no dropout): the
    log-probabilities are those of the weights that sampled. Returns (mean reward, mixed groups,
    skipped groups, answer tokens sampled), or raises GPTError naming the flag to lower if the loss or
    the model's scores stop being numbers. anchor: questions whose reference answers' loss, x
    args.sft_weight, is added."""
    device, answers_sampled = next(model.parameters()).device, len(questions) * args.samples
    tries = sample_answers(model, tokenizer, end, [q.prompt for q in questions], args.samples,
                           args.temperature, args.max_new_tokens, generator)
    rewards_seen, skipped, tokens, total = [], 0, 0, 0.0
    for q, answers in zip(questions, tries):
        rewards = [float(answer_text(tokenizer, end, a) == q.answer) for a in answers]
        rewards_seen += rewards
        tokens += sum(map(len, answers))
        if len(set(rewards)) == 1:  # all right or all wrong: every advantage is 0
            skipped += 1
            continue
        # A backward pass per question: its answers share its prompt, so a batch of them is hardly
        # padded (a batch of all the step's answers was 2x the work, its prompts being of all lengths)
        x, y, advantage = policy_batch(q.prompt, answers, advantages(rewards), device)
        loss = policy_loss(model(x), y, advantage, answers_sampled)
        loss.backward()  # the gradients add up over the questions
        total += loss.item()
    if not math.isfinite(total):
        raise gpt.GPTError(f"the loss became {total}; lower --learning_rate ({args.learning_rate})")
    if anchor:
        loss = args.sft_weight * reference_loss(model, anchor, device)
        if not math.isfinite(loss.item()):
            raise gpt.GPTError(f"--sft_data's loss x --sft_weight became {loss.item()}; lower --sft_weight "
                               f"({args.sft_weight})")
        loss.backward()
    if skipped < len(questions) or anchor:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # A step too large can leave the weights finite yet so large that the scores overflow (NaN):
        # the next step's sampler would fail, and an eval save them. One prompt's scores tell.
        with torch.no_grad():
            scores = model(torch.tensor([questions[0].prompt], device=device))  # (1, T, vocab_size)
        if not scores.isfinite().all():
            also = f" or --sft_weight ({args.sft_weight})" if anchor else ""
            raise gpt.GPTError(f"the step made the model's scores NaN or inf; lower --learning_rate "
                               f"({args.learning_rate}){also}")
    return sum(rewards_seen) / len(rewards_seen), len(questions) - skipped, skipped, tokens


# ------------------------------------------------------------ measuring: greedy accuracy and pass@k
def greedy_accuracy(model, tokenizer, template, questions, max_new_tokens):
    """{skill: percent right}, answering greedily exactly as scripts/eval_chat.py does."""
    tests = [(q.skill, q.turns) for q in questions]
    results = eval_chat.answer_all(model, tokenizer, template, tests, max_new_tokens)
    return per_skill([(result[0], eval_chat.right(result)) for result in results])


def pass_at_k(model, tokenizer, template, questions, k, temperature, max_new_tokens, generator):
    """{skill: percent of questions with at least one right answer among k sampled}."""
    end = template["end"]
    tries = sample_answers(model, tokenizer, end, [q.prompt for q in questions], k, temperature,
                           max_new_tokens, generator)
    return per_skill([(q.skill, any(answer_text(tokenizer, end, a) == q.answer for a in answers))
                      for q, answers in zip(questions, tries)])


def per_skill(right):
    """(skill, bool) pairs as {skill: percent}, skills sorted."""
    skills = sorted({skill for skill, _ in right})
    return {s: 100 * sum(ok for skill, ok in right if skill == s) / sum(skill == s for skill, _ in right)
            for s in skills}


def mean(accuracy):  # over the skills, each counted once however many questions it has
    return sum(accuracy.values()) / len(accuracy)


def shown(accuracy):
    return " | ".join(f"{skill} {percent:.0f}%" for skill, percent in accuracy.items())


# ------------------------------------------------------------ checkpoints and log.csv
SCRIPT = "scripts/rl.py"  # made_by's name for this tool; gpt.py --resume names it
RUN_COLUMNS = ["iter", "reward", "mixed", "skipped", "tokens_per_s", "train_s", "elapsed_s", "accuracy"]


def checkpoint(model, init, args, step, accuracy, run=None):
    """gpt.py's checkpoint format, so every tool that reads best.pt reads this one.
    - config: the start's, unchanged (its shape, and the gpt.py settings it was trained with). RL changes
      the weights, not the model, and its settings (questions, answers, a constant learning rate) are
      not gpt.py's: gpt.py --init_from from here gets what it would from the start, never RL's batch
      or learning rate.
    - made_by: this run, {"script": "scripts/rl.py", "args": its flags}: gpt.py --resume sends the
      user here, and rl.py --resume reads the flags back.
    No loss is measured here: best_val_loss is NaN, and "accuracy" the mean greedy accuracy.
    run: for ckpt.pt, what --resume needs (the optimizer, the generators' states, the log and the best
    accuracy so far)."""
    flags = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite", "eval_only")}
    state = dict(model=model.state_dict(), config=init["config"], vocab=init["vocab"], chat=init["chat"],
                 iter=step, best_val_loss=float("nan"), accuracy=accuracy,
                 made_by=dict(script=SCRIPT, args=flags))
    if "tokenizer" in init:  # a BPE model's tokenizer; a char model's is its vocab
        state["tokenizer"] = init["tokenizer"]
    if run is not None:
        state.update(run)
    return state


def read_run(out_dir):
    """--resume: the ckpt.pt an rl.py run left in out_dir."""
    path = os.path.join(out_dir, "ckpt.pt")
    ckpt = gpt.load_checkpoint(path, "--resume continues a run of rl.py: start one without --resume first")
    made_by = ckpt.get("made_by")
    if not (isinstance(made_by, dict) and made_by.get("script") == SCRIPT and "best_accuracy" in ckpt):
        raise gpt.GPTError(f"{path} is not the ckpt.pt of an rl.py run (a gpt.py run's?): start from it "
                           f"with --init_from {path}")
    return ckpt


def claim_out_dir(out_dir, fresh):
    """gpt.py's claim (never replace a model, be writable), naming an rl.py run by its accuracy, not by
    the val loss it never measured."""
    if fresh and os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        try:
            run = read_run(out_dir)
        except gpt.GPTError:
            run = None  # not an rl.py run's: gpt.py says what it is
        if run:
            best = run["best_accuracy"]  # -1 without --eval_data: nothing measured
            measured = f", best mean greedy accuracy {best:.1f}%" if best >= 0 else ""
            raise gpt.GPTError(f"{out_dir} already holds a run of rl.py (step {run['iter']}{measured}); "
                               "continue it with --resume, train into another --out_dir, or replace it "
                               "with --overwrite")
    gpt.claim_out_dir(out_dir, fresh)


def write_log(rows, out_dir):
    """A row per step: iter, reward, mixed (share of the groups), skipped (groups), tokens_per_s
    (answer tokens sampled), train_s (seconds in steps), elapsed_s (evals too); on eval steps the mean
    accuracy and acc_<skill> for each skill, in percent. The prefix keeps a skill named "iter" or
    "accuracy" from taking a column of the run's; csv quotes a name with a comma or a newline."""
    path = os.path.join(out_dir, "log.csv")
    skills = sorted({column for row in rows for column in row} - set(RUN_COLUMNS))
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, RUN_COLUMNS + skills)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------ the loop
def train(args, init, model, tokenizer, questions, held_out, device, anchors=(), resume=None):
    """Steps of learning from reward until --max_iters (or --max_minutes); returns the exit code (130
    after Ctrl-C). resume: the ckpt.pt to go on from, with its optimizer, generators and log."""
    template, skills = init["chat"], sorted({q.skill for q in held_out})
    optimizer = gpt.make_optimizer(model, argparse.Namespace(learning_rate=args.learning_rate,
                                                             weight_decay=WEIGHT_DECAY), device)
    picker = torch.Generator().manual_seed(args.seed)  # which questions each step asks
    sampler = torch.Generator().manual_seed(args.seed + 1)  # the answers' tokens
    anchor_picker = torch.Generator().manual_seed(args.seed + 2)  # apart: --sft_data changes no question
    generators = (picker, sampler, anchor_picker)
    # stdout read by a pipe that closes (`rl.py ... | head -1`): __main__ gives SIGPIPE its default, as
    # gpt.py does, which ends a process at its next write, unsaved. Here, with work to save, a write
    # fails instead (Python's own default), and the run stops as after Ctrl-C: the step ends, all is saved.
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    unread = []  # [13], SIGPIPE's number, once stdout's reader has gone: exit 141, as the shell's

    def say(line):
        try:
            print(line, flush=True)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # later lines go nowhere
            unread[:] = [13]

    mix = f"; fine-tuning's loss on {args.sft_data} x {args.sft_weight} mixed in" if anchors else ""
    say(f"{len(questions):,} questions from {args.data}: {args.batch_size} a step, {args.samples} "
        f"answers each at temperature {args.temperature}; learning rate {args.learning_rate}{mix}; "
        f"{device}")
    log, best, train_s, started, first = [], -1.0, 0.0, time.perf_counter(), 0
    if resume:  # bit-exact on a CPU: the same weights as a run never stopped
        optimizer.load_state_dict(resume["optimizer"])
        for group in optimizer.param_groups:  # the saved state brings the saved rate: the flag's wins
            group["lr"] = args.learning_rate
        for generator, state in zip(generators, resume["rng"]):
            generator.set_state(state)
        log, first, best = resume["log"], resume["iter"], resume["best_accuracy"]
        train_s, started = log[-1]["train_s"], started - log[-1]["elapsed_s"]  # the clock goes on
        say(f"resuming {args.out_dir}/ckpt.pt at step {first}")

    def evaluate(step, row):  # True if this is the best model so far
        nonlocal best
        if not held_out:
            return True  # nothing to measure by: the latest model is the best known
        accuracy = greedy_accuracy(model, tokenizer, template, held_out, args.max_new_tokens)
        row["accuracy"] = round(mean(accuracy), 2)
        row.update({f"acc_{s}": round(accuracy[s], 2) for s in skills})
        better, best = mean(accuracy) > best, max(best, mean(accuracy))
        say(f"eval at step {step}: greedy {shown(accuracy)} | mean {mean(accuracy):.1f}%"
            f"{' (best so far: best.pt)' if better else ''}")
        return better

    def save(step, accuracy, better):
        if better:
            gpt.save_atomic(checkpoint(model, init, args, step, accuracy),
                            os.path.join(args.out_dir, "best.pt"))
        run = dict(optimizer=optimizer.state_dict(), rng=[g.get_state() for g in generators], log=log,
                   best_accuracy=best)  # unrounded: log.csv's 33.33 would lose to a later 33.333...
        gpt.save_atomic(checkpoint(model, init, args, step, accuracy, run),
                        os.path.join(args.out_dir, "ckpt.pt"))
        write_log(log, args.out_dir)

    if not resume:
        row = dict(iter=0, train_s=0.0, elapsed_s=0.0)
        better = evaluate(0, row)
        log.append(row)
        save(0, row.get("accuracy"), better)
    budget = math.inf if args.max_minutes is None else 60 * args.max_minutes  # seconds, evals included
    # Ctrl-C or SIGTERM: the step finishes, then all is saved (a second Ctrl-C: at once). gpt.py's
    # handler, which leaves alone a signal the run was started to ignore (a background job's Ctrl-C).
    with gpt.stop_signals() as stop_requested:
        for step in range(first + 1, args.max_iters + 1):
            t0 = time.perf_counter()
            picked = torch.randint(len(questions), (args.batch_size,), generator=picker).tolist()
            anchor = []  # --sft_data's conversations, their reference answers' loss mixed in
            if anchors:
                drawn = torch.randint(len(anchors), (args.batch_size,), generator=anchor_picker)
                anchor = [anchors[i] for i in drawn.tolist()]
            try:
                reward, mixed, skipped, tokens = rl_step(model, optimizer, [questions[i] for i in picked],
                                                         tokenizer, template["end"], args, sampler, anchor)
            except gpt.GPTError as e:  # it diverged: nothing of this step is saved
                raise gpt.GPTError(f"step {step}: {e}; {args.out_dir}/ckpt.pt keeps the last state saved, "
                                   "and --resume with a flag lowered goes on from it") from None
            step_s = time.perf_counter() - t0
            train_s += step_s
            left = min((args.max_iters - step) * train_s / step, budget - (time.perf_counter() - started))
            minutes, seconds = divmod(round(max(left, 0)), 60)
            say(f"step {step} / {args.max_iters} | reward {reward:.3f} | "
                f"mixed {mixed / args.batch_size:.0%} ({skipped} skipped) | {step_s * 1000:.0f} ms/step | "
                f"{tokens / step_s:,.0f} tok/s | eta {minutes}m{seconds:02d}s")
            row = dict(iter=step, reward=round(reward, 4), mixed=round(mixed / args.batch_size, 4),
                       skipped=skipped, tokens_per_s=round(tokens / step_s),
                       train_s=round(train_s, 2))
            evaluating = step % args.eval_interval == 0 or step == args.max_iters
            better = evaluate(step, row) if evaluating else False
            row["elapsed_s"] = round(time.perf_counter() - started, 2)
            log.append(row)
            stop = stop_requested() or sum(unread)  # the signal's number, or 0
            out_of_time = row["elapsed_s"] >= budget and step < args.max_iters
            if evaluating or stop or out_of_time:
                save(step, row.get("accuracy"), better)
            if stop:
                say(f"saved {args.out_dir}/ckpt.pt at step {step}; best.pt holds the best model measured; "
                    f"go on with --resume --out_dir {args.out_dir}")
                return 128 + stop  # the shell's way: 130 after Ctrl-C (SIGINT), 143 after SIGTERM
            if out_of_time:  # the budget was the plan, not an interruption: exit 0
                say(f"--max_minutes {args.max_minutes}: stopped after step {step} ({row['elapsed_s']:.0f}s, "
                    f"evals included); saved {args.out_dir}/ckpt.pt, best.pt holds the best model measured")
                return 0
    measured = f": {best:.1f}% mean greedy accuracy" if held_out else ""
    say(f"done: {args.max_iters} steps in {train_s:.0f}s of training "
        f"({time.perf_counter() - started:.0f}s with the evals); {args.out_dir}/best.pt{measured}")
    return 0


def eval_only(args, model, tokenizer, template, held_out):
    """Greedy accuracy and pass@--samples per skill on --eval_data: the table the README shows."""
    started = time.perf_counter()
    greedy = greedy_accuracy(model, tokenizer, template, held_out, args.max_new_tokens)
    sampled = pass_at_k(model, tokenizer, template, held_out, args.samples, args.temperature,
                        args.max_new_tokens, torch.Generator().manual_seed(args.seed))
    print(f"{args.init_from} on {args.eval_data}: {len(held_out)} questions, "
          f"{time.perf_counter() - started:.0f}s")
    print(f"{'skill':<10} {'greedy':>7} {f'pass@{args.samples}':>8}  (sampled at temperature "
          f"{args.temperature})")
    for skill in greedy:
        print(f"{skill:<10} {greedy[skill]:6.1f}% {sampled[skill]:7.1f}%")
    print(f"{'mean':<10} {mean(greedy):6.1f}% {mean(sampled):7.1f}%")
    return 0


# ------------------------------------------------------------ command line
def main(argv=None):
    p = argparse.ArgumentParser(prog="rl.py", description="Make a chat model better at checkable "
                                "questions: it tries answers, and keeps what scores.")
    def usage_error(message):  # one line, exit 2, as gpt.py's (argparse would print its usage first)
        print(f"rl.py: error: {message}", file=sys.stderr)
        sys.exit(2)
    p.error = usage_error
    p.add_argument("--init_from", help="a chat model's best.pt or ckpt.pt to start from")
    p.add_argument("--data", help="conversations to ask (.jsonl); each line's last answer is the reference")
    p.add_argument("--out_dir", default="out_rl", help="for best.pt, ckpt.pt, log.csv (default out_rl)")
    p.add_argument("--eval_data", help="held-out conversations: greedy accuracy per skill; best.pt by it")
    p.add_argument("--max_iters", type=int, default=500, help="steps (default 500)")
    p.add_argument("--max_minutes", type=float, help="stop after this many minutes of wall clock, evals "
                   "included (a resumed run's earlier ones too: to go on after the stop, give a larger one), "
                   "and save as Ctrl-C does, but exit 0")
    p.add_argument("--batch_size", type=int, default=64, help="questions per step (default 64)")
    p.add_argument("--samples", type=int, default=8, help="answers tried per question (default 8)")
    p.add_argument("--temperature", type=float, default=2.0, help="to sample them at (default 2.0)")
    p.add_argument("--learning_rate", type=float, default=2e-4, help="AdamW's (default 2e-4)")
    p.add_argument("--sft_data", help="conversations to mix fine-tuning's loss on into each step (.jsonl, "
                   "say chats/train.jsonl, what the model was fine-tuned on), --batch_size of them")
    p.add_argument("--sft_weight", type=float, default=0.0, help="that loss's weight (default 0: learn "
                   "from reward only)")
    p.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient's norm (default 1.0)")
    p.add_argument("--max_new_tokens", type=int, default=32, help="the longest answer (default 32; the "
                   "sampling of a batch stops when all its answers ended, or after this many tokens)")
    p.add_argument("--eval_interval", type=int, default=50, help="steps between evals (default 50)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--resume", action="store_true", help="continue the run in --out_dir from its ckpt.pt, "
                   "with its flags (those given override them: a larger --max_iters, a lower --learning_rate; "
                   "not --seed, whose generators go on where they stopped)")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out_dir")
    p.add_argument("--eval_only", action="store_true",
                   help="only measure --init_from on --eval_data: greedy and pass@--samples per skill")
    args = p.parse_args(argv)
    try:
        resume = None
        if args.resume:  # the run's own flags become the defaults; the flags given win
            if args.eval_only or args.overwrite or args.init_from:
                p.error("--resume continues the run in --out_dir, from its ckpt.pt: not with --init_from, "
                        "--eval_only or --overwrite")
            resume = read_run(args.out_dir)
            saved = resume["made_by"]["args"]
            p.set_defaults(**saved)
            args = p.parse_args(argv)
            if args.seed != saved["seed"]:  # its generators go on from their saved states, not a seed
                p.error(f"--resume goes on with the run's own --seed {saved['seed']}; another seed is "
                        "another run: start it in another --out_dir")
        for name in ("max_iters", "batch_size", "samples", "max_new_tokens", "eval_interval"):
            if getattr(args, name) < 1:
                p.error(f"argument --{name}: must be at least 1, got {getattr(args, name)}")
        if args.samples < 2 and not args.eval_only:
            p.error("argument --samples: must be at least 2 (the answers to a question are scored against "
                    "each other: one alone always scores alike, and teaches nothing)")
        for name in ("temperature", "learning_rate", "grad_clip", "max_minutes"):
            if getattr(args, name) is not None and not 0 < getattr(args, name) < math.inf:  # and not nan
                p.error(f"argument --{name}: must be a number above 0, got {getattr(args, name)}")
        if not 0 <= args.sft_weight < math.inf:
            p.error(f"argument --sft_weight: must be a number, 0 or more, got {args.sft_weight}")
        if bool(args.sft_data) != bool(args.sft_weight):
            p.error("--sft_data and --sft_weight go together: the conversations, and how much of their loss")
        spent = resume["log"][-1]["elapsed_s"] / 60 if resume else 0  # minutes, evals included
        if args.max_minutes is not None and spent >= args.max_minutes:
            p.error(f"--resume: the run has spent its --max_minutes {args.max_minutes} ({spent:.1f} minutes); "
                    "give a larger --max_minutes (it counts the run's earlier minutes, as --max_iters counts "
                    "its steps)")
        if not args.init_from and not resume:
            p.error("--init_from is needed: the chat model to start from (or --resume a run in --out_dir)")
        if args.eval_only and not args.eval_data:
            p.error("--eval_only needs --eval_data")
        if not args.eval_only and not args.data:
            p.error("--data is needed: the conversations to ask (for example chats/train.jsonl)")
        init = resume or gpt.load_checkpoint(args.init_from, "fine-tune one on chats first (README: Teach "
                                             "it to answer)")
        if not init.get("chat"):
            raise gpt.GPTError(f"{args.init_from} was never fine-tuned on conversations: it has no chat "
                               "template, no end marker to stop at (README: Teach it to answer)")
        device, _ = gpt.pick_device(args.device)
        model, tokenizer = gpt.model_from(init, device), gpt.tokenizer_of(init)
        template, block_size = init["chat"], model.config.block_size
        held_out = []  # read before anything is written: a bad line leaves no half-made run behind
        if args.eval_data:
            held_out = read_questions(args.eval_data, tokenizer, template, block_size, args.max_new_tokens)
        if args.eval_only:
            return eval_only(args, model, tokenizer, template, held_out)
        questions = read_questions(args.data, tokenizer, template, block_size, args.max_new_tokens)
        anchors = []
        if args.sft_data:
            anchors = read_questions(args.sft_data, tokenizer, template, block_size, args.max_new_tokens)
        claim_out_dir(args.out_dir, fresh=not args.overwrite and not resume)
        return train(args, init, model, tokenizer, questions, held_out, device, anchors, resume)
    except (gpt.GPTError, prepare.PrepareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (RuntimeError, MemoryError) as e:  # out of memory, on any device: ckpt.pt is whole
        if isinstance(e, RuntimeError) and "alloc" not in str(e):
            raise
        if args.eval_only:  # pass@k samples --samples answers to all the questions of a prompt length
            print("error: out of memory: lower --samples or --max_new_tokens, or split --eval_data (pass@k "
                  "samples every question of a length at once)", file=sys.stderr)
        else:
            print("error: out of memory: lower --samples or --batch_size (a step samples their product of "
                  "answers at once) or --max_new_tokens", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):  # `| head`: end quietly (a run in train() saves first, see there)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
