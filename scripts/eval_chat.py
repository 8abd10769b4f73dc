"""
eval_chat.py: how often a chat model answers held-out questions exactly right, skill by skill.

    python scripts/eval_chat.py out_chat chats/test.jsonl
    python scripts/eval_chat.py out_chat chats/test.jsonl --device cpu --max_new_tokens 32

For every conversation of the test file (one a line, as scripts/prepare.py reads them; the
"skill" beside "messages" groups them), the model in OUT_DIR/best.pt writes the last assistant turn
from the turns before it, greedily (temperature 0), with scripts/chat.py's chat_reply and the chat template
its checkpoint keeps. An answer is right when it ends (the end marker) and equals the expected one
exactly, surrounding spaces aside. One cut off by --max_new_tokens is wrong, whatever its text: in a
chat it would have gone on (scripts/rl.py's reward counts it wrong too). Prints the accuracy of each
skill and overall, and a few wrong answers.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from chat import chat_reply  # noqa: E402  scripts/chat.py
import gpt  # noqa: E402  the model and its checkpoint
import prepare  # noqa: E402  scripts/prepare.py: the chat template, and the check of a conversation

SHOWN = 5  # wrong answers printed


def conversations(path):
    """(where, record, turns) for every conversation of a .jsonl file; a line that is not one is named."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (FileNotFoundError, IsADirectoryError):
        raise prepare.PrepareError(f"{path} not found (or not a file)") from None
    except UnicodeDecodeError:
        raise prepare.PrepareError(f"{path} is not UTF-8 text") from None
    found = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not {"messages", "prompt", "completion"} & record.keys():
            raise prepare.PrepareError(f'{where}: not a conversation ({{"messages": [...]}} or '
                                       '{"prompt": ..., "completion": ...})')
        found.append((where, record, prepare.conversation(record, where)))  # names "no assistant turn"
    if not found:
        raise prepare.PrepareError(f"{path} holds no conversations")
    return found


def read_tests(path):
    """(skill, turns) for every conversation of the file; its last turn, the assistant's, is the answer
    expected."""
    tests = []
    for where, record, turns in conversations(path):
        if turns[-1]["role"] != "assistant":
            raise prepare.PrepareError(f"{where}: the last turn is not the assistant's: no answer to "
                                       "compare with")
        tests.append((str(record.get("skill", "(none)")), turns))
    return tests


def answer_all(model, tokenizer, template, tests, max_new_tokens):
    """(skill, question, expected, answer, ended) for every test; answer None where the question has
    characters the model's vocabulary lacks; ended False where the answer never reached the end marker."""
    results = []
    for skill, turns in tests:
        reply = chat_reply(model, tokenizer, template, turns[:-1], max_new_tokens, 0, None, None)
        pieces, answer, ended = [], None, False
        try:
            while True:  # the pieces, then what chat_reply returns: whether the end marker came
                pieces.append(next(reply))
        except StopIteration as stop:
            answer, ended = "".join(pieces).strip(), stop.value
        except gpt.GPTError:  # a char model cannot read a character it never saw: answer None
            pass
        results.append((skill, turns[-2]["content"], turns[-1]["content"].strip(), answer, ended))
    return results


def right(result):  # the answer ended, and it is the one expected
    skill, question, expected, answer, ended = result
    return ended and answer == expected


def report(results):
    """The accuracy of each skill and overall, then a few wrong answers."""
    rows = [(skill, [r for r in results if r[0] == skill]) for skill in sorted({r[0] for r in results})]
    rows.append(("overall", results))
    width = max(len(name) for name, _ in rows)
    print(f"{'skill':<{width}}  right / total  accuracy")
    for name, group in rows:
        n_right = sum(map(right, group))
        print(f"{name:<{width}}  {n_right:5d} / {len(group):<5d}  {100 * n_right / len(group):6.1f}%")
    wrong = [r for r in results if not right(r)]
    if wrong:
        print(f"\nwrong answers ({min(SHOWN, len(wrong))} of {len(wrong)}):")
    for skill, question, expected, answer, ended in wrong[:SHOWN]:
        said = "(unreadable)" if answer is None else repr(answer)
        if answer is not None and not ended:
            said += " (cut off before the end marker)"
        print(f"  {skill}: {question!r} -> {said}, expected {expected!r}")
    unreadable = sum(r[3] is None for r in results)
    if unreadable:
        print(f"\n{unreadable} questions had characters the model's vocabulary lacks, and count as wrong: "
              "fine-tune it on chats prepared with scripts/prepare.py --vocab_from")
    cut_off = sum(r[3] is not None and not r[4] for r in results)
    if cut_off:
        print(f"\n{cut_off} answers never reached the end marker, and count as wrong: too small a "
              "--max_new_tokens, or a model that does not stop")


def main(argv=None):
    p = argparse.ArgumentParser(description="Exact-match accuracy of a chat model on held-out conversations.")
    p.add_argument("out_dir", help="the folder of a gpt.py run: its best.pt answers")
    p.add_argument("test_file", help="held-out conversations, one a line (scripts/make_chats.py writes "
                   "chats/test.jsonl)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--max_new_tokens", type=int, default=32, help="the longest answer in tokens (default 32)")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error(f"--max_new_tokens {args.max_new_tokens}: must be at least 1")
    threads = torch.get_num_threads()
    try:
        path = os.path.join(args.out_dir, "best.pt")
        ckpt = gpt.load_checkpoint(path, "fine-tune one on chats: python gpt.py --init_from out/best.pt "
                                   f"--data data/chats --out_dir {args.out_dir}")
        tests = read_tests(args.test_file)
        device, _ = gpt.pick_device(args.device)
        if device.type == "cpu":  # one question at a time is too little work to share out: on a busy
            torch.set_num_threads(1)  # CPU, threads wait for each other (20x slower on a busy 2-core VM)
        model, tokenizer = gpt.model_from(ckpt, device), gpt.tokenizer_of(ckpt)
        template = ckpt.get("chat")
        if template is None:
            print(f"warning: {path} was never fine-tuned on chats; asking in scripts/prepare.py's template",
                  file=sys.stderr)
            template = prepare.TEMPLATE
        started = time.perf_counter()
        results = answer_all(model, tokenizer, template, tests, args.max_new_tokens)
    except (gpt.GPTError, prepare.PrepareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:  # as they were, for a caller that goes on (the tests)
        torch.set_num_threads(threads)
    print(f"{path} (step {ckpt['iter']}) on {args.test_file}: {len(tests)} questions, answered greedily in "
          f"{time.perf_counter() - started:.1f}s on {device}")
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
