"""
chat.py: talk to a model fine-tuned on conversations; each line you type is a turn.

    python scripts/chat.py --out_dir out_chat                    # a REPL: type, read the answer
    printf 'What is 12 + 30?\\n' | python scripts/chat.py --out_dir out_chat --temperature 0

The model in OUT_DIR/best.pt answers with gpt.py's own sampler, in the chat template its checkpoint
keeps (scripts/prepare.py wrote it): each answer streams until the template's end marker, or
--max_new_tokens. Earlier turns stay in the context until they no longer fit the block; then the
oldest go first. A model never fine-tuned on conversations answers too, as its text goes on, one line
at a time. Stdin may be a terminal or a pipe; the end of it (Ctrl-D) ends the chat. A line with a
character a char model never saw is refused in one line and the chat goes on; the exit code is then 1.

chat_turn, chat_reply and reply_text are what scripts/serve.py and scripts/eval_chat.py use too.
"""
import argparse
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt  # noqa: E402  the model, its checkpoint and its sampler

UNTUNED_CHAT = dict(system="System: ", user="User: ", assistant="Assistant: ", end="\n")  # prepare.py's, but
# a model never fine-tuned on it has no end marker: its answers end at a newline, which it can write


def chat_turn(message, template):
    """One turn as the text pieces training saw: the role's prefix, the content, for the assistant the
    end marker, then a newline (scripts/prepare.py renders conversations the same way)."""
    end = [template["end"]] if message["role"] == "assistant" else []
    return [template[message["role"]], message["content"], *end, "\n"]


def prompt_ids(tokenizer, template, messages, block_size):
    """The ids the model answers after: each turn as chat_turn renders it, then the assistant's prefix. The
    oldest turns go while the conversation overflows 3/4 of a block (a quarter is left for the answer)."""
    turns = [[i for piece in chat_turn(m, template) for i in tokenizer.encode(piece)] for m in messages]
    ids = tokenizer.encode(template["assistant"])
    while len(turns) > 1 and sum(map(len, turns)) + len(ids) > block_size * 3 // 4:
        turns.pop(0)
    return [i for turn in turns for i in turn] + ids


def reply_text(model, tokenizer, ids, stops, max_new_tokens, temperature, top_k, generator, report=None):
    """Stream the text the model writes after ids, as pieces, until it writes one of the stop strings (which
    is not sent) or max_new_tokens are drawn. The text is checked, not the tokens: a stop string may span
    tokens, or end inside one. A piece never ends in what may be the start of a stop string, nor in half a
    character, so no piece sent is ever taken back. report, a dict if given, is told how many tokens were
    drawn and whether a stop string ended the text (scripts/serve.py's usage and finish_reason); the same
    True or False is the generator's return value (StopIteration's)."""
    report = {} if report is None else report
    report.update(tokens=0, stopped=False)
    device = next(model.parameters()).device
    idx = torch.tensor([ids], device=device)
    new, shown = [], 0  # shown: how many characters of the text were sent
    for next_id, _ in gpt.generate(model, idx, max_new_tokens, temperature, top_k, generator):
        new.append(next_id.item())
        report["tokens"] = len(new)
        text = tokenizer.decode(new)
        found = [text.index(stop) for stop in stops if stop in text]
        if found:
            report["stopped"] = True
            yield text[shown:min(found)]
            return True
        # hold back what may be the start of a stop string, or a character cut across tokens
        keep = max((k for stop in stops for k in range(len(stop) - 1, 0, -1) if text.endswith(stop[:k])),
                   default=0)
        if len(text) - keep > shown and not text.endswith("\ufffd"):
            yield text[shown:len(text) - keep]
            shown = len(text) - keep
    if new:
        yield tokenizer.decode(new)[shown:]
    return False  # cut off: eval_chat.py counts the answer wrong, and rl.py's reward is 0


def chat_reply(model, tokenizer, template, messages, max_new_tokens, temperature, top_k, generator):
    """Stream the assistant's answer to messages, as text pieces, until the end marker; then return True,
    or False if max_new_tokens ran out first (a generator's return value: StopIteration's)."""
    ids = prompt_ids(tokenizer, template, messages, model.config.block_size)
    stops = [template["end"]]
    return (yield from reply_text(model, tokenizer, ids, stops, max_new_tokens, temperature, top_k, generator))


def lines_typed():
    """stdin's lines, from a terminal (with a prompt) or a pipe; blank ones skipped."""
    while True:
        try:
            line = input("> " if sys.stdin.isatty() else "")
        except EOFError:
            return
        if line.strip():
            yield line


def chat(args):
    """Each line read is a user turn; the answer streams to stdout. Returns 1 if any line was refused."""
    path = os.path.join(args.out_dir, "best.pt")
    ckpt = gpt.load_checkpoint(path, "fine-tune one on conversations (README: Teach it to answer)")
    device, _ = gpt.pick_device(args.device)
    model, tokenizer = gpt.model_from(ckpt, device), gpt.tokenizer_of(ckpt)
    template = ckpt.get("chat") or UNTUNED_CHAT
    if not ckpt.get("chat"):
        print(f"note: {path} was never fine-tuned on conversations: it answers as its text goes on",
              file=sys.stderr)
    generator, messages, refused = torch.Generator().manual_seed(args.seed), [], 0
    for line in lines_typed():
        messages.append(dict(role="user", content=line))
        answer = []
        try:
            for piece in chat_reply(model, tokenizer, template, messages, args.max_new_tokens,
                                    args.temperature, args.top_k, generator):
                print(piece, end="", flush=True)
                answer.append(piece)
        except gpt.GPTError as e:  # a character the model never saw: say so, and go on
            print(f"error: {e}", file=sys.stderr)
            messages.pop()
            refused += 1
            continue
        print(flush=True)
        messages.append(dict(role="assistant", content="".join(answer)))
    return 1 if refused else 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="chat.py", description="Talk to a gpt.py model: each line is a turn.")
    p.add_argument("--out_dir", default="out", help="the folder of the best.pt to talk to (default: out)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--max_new_tokens", type=int, default=gpt.DEFAULTS["max_new_tokens"],
                   help="the longest answer, in tokens")
    p.add_argument("--temperature", type=float, default=gpt.DEFAULTS["temperature"],
                   help="below 1 safer, above 1 wilder, 0 greedy")
    p.add_argument("--top_k", type=int, default=None, help="draw from the k likeliest only")
    p.add_argument("--seed", type=int, default=gpt.DEFAULTS["seed"])
    args = p.parse_args(argv)
    for name in ("max_new_tokens", "top_k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"argument --{name}: must be > 0, got {value}")
    if not args.temperature >= 0:  # also refuses nan
        p.error(f"argument --temperature: must be >= 0, got {args.temperature}")
    try:
        return chat(args)
    except gpt.GPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C ends it quietly
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):  # `| head`: end quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
