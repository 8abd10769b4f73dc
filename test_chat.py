"""test_chat.py: the data side of chat fine-tuning, one behaviour per test, offline and small: conversations
prepared into tokens and answer masks (scripts/prepare.py), the synthetic chats (scripts/make_chats.py) and
their exact-match evaluation (scripts/eval_chat.py).

    python -m pytest test_chat.py
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import gpt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
import chat as chat_py  # noqa: E402  scripts/chat.py
import eval_chat  # noqa: E402  scripts/eval_chat.py
import make_chats  # noqa: E402  scripts/make_chats.py
import prepare  # noqa: E402  scripts/prepare.py

# A loaded machine makes hypothesis's data generation slow, which is not what these tests are about
settings.register_profile("patient", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("patient")
TEMPLATE = {"system": "System: ", "user": "User: ", "assistant": "Assistant: ", "end": "<end>"}
SEPARATOR = {"char": "\n\n", "bpe": "<|endoftext|>"}  # between two conversations of a split


def chat(*turns, **extra):
    """A .jsonl line: chat(("user", "hi"), ("assistant", "hello"))."""
    return json.dumps({"messages": [{"role": role, "content": content} for role, content in turns], **extra})


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def prepared(folder):
    """meta.json, and each split's ids and mask as lists."""
    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    ids = {s: np.fromfile(os.path.join(folder, f"{s}.bin"), dtype=meta["dtype"]).tolist() for s in ("train", "val")}
    masks = {s: np.fromfile(os.path.join(folder, f"{s}_mask.bin"), dtype=np.uint8).tolist() for s in ("train", "val")}
    return meta, ids, masks


def rendered(turns):
    """A conversation as chat.py's chat_turn writes it at chat time, piece by piece."""
    return [piece for turn in turns for piece in chat_py.chat_turn(turn, TEMPLATE)]


def turns_of(line):
    return json.loads(line)["messages"]


# ----------------------------------------------------------------------------- rendering and its mask
contents = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and "<end>" not in s)


@st.composite
def conversations(draw):
    """An optional system turn, then user and assistant by turns, at least one assistant turn."""
    turns = [("system", draw(contents))] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        turns += [("user", draw(contents)), ("assistant", draw(contents))]
    if draw(st.booleans()):  # a last question left unanswered is a conversation too
        turns.append(("user", draw(contents)))
    return chat(*turns)


@settings(max_examples=20, deadline=None)
@given(lines=st.lists(conversations(), min_size=2, max_size=4), kind=st.sampled_from(["char", "bpe"]))
def test_the_masked_tokens_are_exactly_the_answers_and_their_end_markers(tmp_path_factory, lines, kind):
    folder = tmp_path_factory.mktemp("chat")
    meta = prepare.prepare([write_lines(folder / "in.jsonl", lines)], str(folder / "out"), kind, 300)
    _, ids, masks = prepared(folder / "out")
    tokenizer = gpt.make_tokenizer(meta["tokenizer"])
    train, val = lines[:-1], lines[-1:]  # the last 10%, at least one conversation, validates
    for split, part in ("train", train), ("val", val):
        learned = [i for i, m in zip(ids[split], masks[split]) if m == 1]
        answers = [t["content"] + "<end>" for line in part for t in turns_of(line) if t["role"] == "assistant"]
        assert tokenizer.decode(learned) == "".join(answers)
        # and every token is the one chat_py.chat_reply feeds the model: each piece of chat_py.chat_turn encoded alone
        expected = []
        for number, line in enumerate(part):
            if number:
                expected += tokenizer.encode("\n\n") if kind == "char" else [tokenizer.vocab_size - 1]
            expected += [i for piece in rendered(turns_of(line)) for i in tokenizer.encode(piece)]
        assert ids[split] == expected and len(masks[split]) == len(ids[split])


def test_a_conversation_renders_as_the_template_says(tmp_path):
    line = chat(("system", "Be brief."), ("user", "What is 12 + 30?"), ("assistant", "42"),
                ("user", "And 1 + 1?"), ("assistant", "2"))
    meta = prepare.prepare([write_lines(tmp_path / "in.jsonl", [line, line])], str(tmp_path / "out"))
    _, ids, masks = prepared(tmp_path / "out")
    vocab = meta["tokenizer"]["vocab"]
    text = "".join(vocab[i] for i in ids["val"])
    assert text == "System: Be brief.\nUser: What is 12 + 30?\nAssistant: 42<end>\nUser: And 1 + 1?\nAssistant: 2<end>\n"
    learned = "".join(vocab[i] if m else "_" for i, m in zip(ids["val"], masks["val"]))
    before_42, before_2 = "System: Be brief.\nUser: What is 12 + 30?\nAssistant: ", "\nUser: And 1 + 1?\nAssistant: "
    assert learned == "_" * len(before_42) + "42<end>" + "_" * len(before_2) + "2<end>" + "_"


def test_prompt_and_completion_is_one_user_turn_and_one_assistant_turn_and_extra_keys_are_ignored(tmp_path):
    plain = [chat(("user", "Spell cat backwards."), ("assistant", "tac"))] * 3
    other = [json.dumps({"prompt": "Spell cat backwards.", "completion": "tac", "id": 1})] * 2
    other.append(chat(("user", "Spell cat backwards."), ("assistant", "tac"), skill="reverse"))
    prepare.prepare([write_lines(tmp_path / "a.jsonl", plain)], str(tmp_path / "a"))
    prepare.prepare([write_lines(tmp_path / "b.jsonl", other)], str(tmp_path / "b"))
    assert prepared(tmp_path / "a") == prepared(tmp_path / "b")


def test_conversations_split_by_count_the_last_tenth_validates_and_none_is_cut(tmp_path):
    lines = [chat(("user", f"question {i}?"), ("assistant", f"answer {i}")) for i in range(25)]
    meta = prepare.prepare([write_lines(tmp_path / "in.jsonl", lines)], str(tmp_path / "out"))
    _, ids, _ = prepared(tmp_path / "out")
    vocab = meta["tokenizer"]["vocab"]
    texts = {s: "".join(vocab[i] for i in ids[s]) for s in ("train", "val")}
    whole = ["".join(rendered(turns_of(line))) for line in lines]
    assert texts["train"] == "\n\n".join(whole[:23]) and texts["val"] == "\n\n".join(whole[23:])  # 25 // 10 = 2
    for s, n in ("train", 23), ("val", 2):
        assert meta[s] == dict(documents=n, characters=len(texts[s]), tokens=len(texts[s]))


def test_meta_json_keeps_the_template_and_each_mask_has_a_byte_per_token(tmp_path):
    lines = [chat(("user", "hi"), ("assistant", "hello"))] * 10
    prepare.prepare([write_lines(tmp_path / "in.jsonl", lines)], str(tmp_path / "out"))
    meta, ids, masks = prepared(tmp_path / "out")
    assert meta["chat"] == TEMPLATE == prepare.TEMPLATE
    for s in ("train", "val"):
        assert os.path.getsize(tmp_path / "out" / f"{s}_mask.bin") == meta[s]["tokens"] == len(ids[s]) > 0
        assert set(masks[s]) == {0, 1}


def test_plain_texts_get_no_masks_and_no_template_even_where_chats_were_prepared(tmp_path):
    prepare.prepare([write_lines(tmp_path / "in.jsonl", [chat(("user", "hi"), ("assistant", "yo"))] * 10)],
                    str(tmp_path / "out"))
    (tmp_path / "in.txt").write_text("just some text\n" * 20, encoding="utf-8")
    meta = prepare.prepare([str(tmp_path / "in.txt")], str(tmp_path / "out"))
    assert "chat" not in meta and sorted(os.listdir(tmp_path / "out")) == ["meta.json", "train.bin", "val.bin"]


# ----------------------------------------------------------------------------- bad conversations: one line, nothing written
GOOD = chat(("user", "What is 1 + 1?"), ("assistant", "2"))


@pytest.mark.parametrize("line, expected", [
    (chat(("user", "hi"), ("bot", "hello")), "message 2: unknown role 'bot'"),
    (json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}), "message 1: no content"),
    (chat(("user", "hi"), ("assistant", "")), "message 2: the content is empty"),
    (chat(("user", "hi"), ("assistant", "   ")), "message 2: the content is empty"),
    (json.dumps({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "x"}]}),
     "message 1: the content is not a string"),
    (json.dumps({"prompt": "hi", "completion": ["x"]}), '"completion": the content is not a string'),
    (json.dumps({"prompt": "hi"}), '"completion": no content'),
    (chat(("system", "be kind"), ("user", "hi")), "no assistant turn"),
    (chat(("assistant", "hello"), ("user", "hi")), "message 1: 'assistant' where 'user' belongs"),
    (chat(("user", "hi"), ("user", "hi?"), ("assistant", "x")), "message 2: 'user' where 'assistant' belongs"),
    (chat(("user", "hi"), ("system", "be kind"), ("assistant", "x")), "message 2: 'system' where 'assistant'"),
    (json.dumps({"messages": "hi"}), '"messages" is not a list'),
    (json.dumps({"messages": ["hi"]}), 'message 1: not an object with a "role" and a "content"'),
    (chat(("user", "hi"), ("assistant", "a <end> b")), "message 2: the answer holds the end marker"),
    (json.dumps({"messages": [{"role": "user", "content": "half an emoji \ud83d"}]}), "lone surrogate"),
    ('{"messages": [', 'not a JSON object with a "text" field')])
def test_a_bad_conversation_is_named_by_file_and_line_and_nothing_is_written(tmp_path, capsys, line, expected):
    path = write_lines(tmp_path / "in.jsonl", [GOOD, "", line, GOOD])
    assert prepare.main([path, "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {path}, line 3") and expected in error, error
    assert not (tmp_path / "out").exists()


def test_a_bad_conversation_leaves_the_folder_prepared_before_as_it_was(tmp_path):
    prepare.prepare([write_lines(tmp_path / "good.jsonl", [GOOD] * 10)], str(tmp_path / "out"))
    before = {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")}
    bad = write_lines(tmp_path / "bad.jsonl", [GOOD] * 10 + [chat(("user", "hi"))])
    assert prepare.main([bad, "--out", str(tmp_path / "out")]) == 1
    assert {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")} == before


def test_cut_short_between_the_masks_and_meta_json_the_folder_does_not_look_complete(tmp_path, monkeypatch):
    prepare.prepare([write_lines(tmp_path / "in.jsonl", [GOOD] * 10)], str(tmp_path / "out"))
    real = os.replace
    def dies_at_meta_json(source, target):  # as if killed just before the last rename
        if target.endswith("meta.json"):
            raise KeyboardInterrupt
        real(source, target)
    monkeypatch.setattr(prepare.os, "replace", dies_at_meta_json)
    assert prepare.main([str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out")]) == 130
    assert sorted(os.listdir(tmp_path / "out")) == ["train.bin", "train_mask.bin", "val.bin", "val_mask.bin"]


@pytest.mark.parametrize("files, culprit", [
    ({"in.jsonl": ['{"text": "a story"}', GOOD]}, "in.jsonl, line 2: a conversation among plain texts"),
    ({"in.jsonl": [GOOD, '{"text": "a story"}']}, "in.jsonl, line 2: a plain text among conversations"),
    ({"a.jsonl": [GOOD], "b.txt": ["a story"]}, "b.txt: a plain text among conversations")])
def test_conversations_mixed_with_plain_texts_are_refused_in_one_line(tmp_path, capsys, files, culprit):
    (tmp_path / "in").mkdir()
    for name, lines in files.items():
        write_lines(tmp_path / "in" / name, lines)
    assert prepare.main([str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and culprit in error and error.count("error") == 1, error
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- --vocab_from: a model's own tokenizer
SHAKESPEARE_LIKE = "\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # no digits, no +


def checkpoint(path, vocab=SHAKESPEARE_LIKE, tokenizer=None, chat_template=None):
    """A gpt.py checkpoint of a tiny random model, as save_run writes best.pt."""
    vocab_size = len(vocab) if tokenizer is None else len(tokenizer["tokens"]) + 1
    config = dict(n_layer=1, n_head=2, n_embd=16, block_size=128, vocab_size=vocab_size, gelu="exact")
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(**config, dropout=0.0))
    ckpt = dict(model=model.state_dict(), config=config, iter=0, best_val_loss=1.0, vocab=vocab)
    if tokenizer is not None:
        ckpt.update(vocab=None, tokenizer=tokenizer)
    if chat_template is not None:
        ckpt["chat"] = chat_template
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return str(path)


def test_vocab_from_a_char_model_keeps_its_ids_and_appends_the_new_characters_sorted(tmp_path, capsys):
    model = checkpoint(tmp_path / "model" / "best.pt")
    lines = [chat(("user", "What is 12 + 30?"), ("assistant", "42")), chat(("user", "Hi!"), ("assistant", "Hello."))]
    assert prepare.main([write_lines(tmp_path / "in.jsonl", lines), "--out", str(tmp_path / "out"),
                         "--vocab_from", model]) == 0
    meta, ids, _ = prepared(tmp_path / "out")
    assert meta["tokenizer"] == {"name": "char", "vocab": SHAKESPEARE_LIKE + "+01234<>"}
    assert "+01234<>" in capsys.readouterr().out  # the added characters are named
    text = "".join(rendered(turns_of(lines[0])))
    assert ids["train"] == gpt.CharTokenizer(meta["tokenizer"]["vocab"]).encode(text)
    known = [i for i in ids["train"] if i < len(SHAKESPEARE_LIKE)]
    assert "".join(SHAKESPEARE_LIKE[i] for i in known) == re.sub("[+01234<>]", "", text)  # the model's ids


def test_vocab_from_a_bpe_model_encodes_with_its_tokenizer_unchanged(tmp_path):
    (tmp_path / "text.txt").write_text("What is the sum of twelve and thirty? " * 40, encoding="utf-8")
    spec = prepare.prepare([str(tmp_path / "text.txt")], str(tmp_path / "bpe"), "bpe", 300)["tokenizer"]
    model = checkpoint(tmp_path / "model" / "best.pt", tokenizer=spec)
    lines = [chat(("user", "What is 12 + 30?"), ("assistant", "42"))] * 10
    assert prepare.main([write_lines(tmp_path / "in.jsonl", lines), "--out", str(tmp_path / "out"),
                         "--vocab_from", model]) == 0
    meta, ids, _ = prepared(tmp_path / "out")
    tokenizer = gpt.BPETokenizer(spec)
    assert meta["tokenizer"] == spec
    assert ids["val"] == [i for piece in rendered(turns_of(lines[0])) for i in tokenizer.encode(piece)]


def test_vocab_from_refuses_tokenizer_flags_and_names_a_missing_checkpoint(tmp_path, capsys):
    path = write_lines(tmp_path / "in.jsonl", [GOOD] * 10)
    with pytest.raises(SystemExit) as usage:
        prepare.main([path, "--out", str(tmp_path / "out"), "--vocab_from", "x.pt", "--tokenizer", "bpe"])
    assert usage.value.code == 2 and "--vocab_from" in capsys.readouterr().err
    assert prepare.main([path, "--out", str(tmp_path / "out"), "--vocab_from", str(tmp_path / "none.pt")]) == 1
    assert f"error: --vocab_from {tmp_path / 'none.pt'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_prepare_imports_no_torch_without_vocab_from():
    code = "import sys; sys.path.insert(0, 'scripts'); import prepare; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# ----------------------------------------------------------------------------- make_chats.py: the synthetic skills
def question_key(question):
    """(skill, values): what a question asks, whatever its wording and the order of its values."""
    for skill in make_chats.SKILLS:
        for wording in make_chats.WORDINGS[skill]:
            pattern = re.escape(wording)
            for name, values in ("a", r"\d+"), ("b", r"\d+"), ("word", "[a-z]+"), ("letter", "[a-z]"):
                pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{values})")
            found = re.fullmatch(pattern, question)
            if found:
                return skill, tuple(sorted(found.groupdict().values()))
    raise AssertionError(f"{question!r} is in no skill's wording")


def right_answer(skill, values):
    if skill == "add":
        return str(sum(map(int, values)))
    if skill == "max":
        return str(max(map(int, values)))
    if skill == "reverse":
        return values[0][::-1]
    letter, word = sorted(values, key=len)
    return str(word.count(letter))


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    out = tmp_path_factory.mktemp("chats")
    assert make_chats.main(["--out", str(out), "--train", "2000", "--test", "200", "--seed", "3"]) == 0
    return {name: [json.loads(line) for line in open(out / f"{name}.jsonl", encoding="utf-8")]
            for name in ("train", "test")}


def test_make_chats_is_the_same_for_a_seed_and_differs_for_another(tmp_path):
    for name, seed in ("a", "1"), ("b", "1"), ("c", "2"):
        assert make_chats.main(["--out", str(tmp_path / name), "--train", "200", "--test", "40", "--seed", seed]) == 0
    read = {name: [(tmp_path / name / f).read_bytes() for f in ("train.jsonl", "test.jsonl")] for name in "abc"}
    assert read["a"] == read["b"] and read["a"][0] != read["c"][0] and read["a"][1] != read["c"][1]


def test_make_chats_names_the_next_command_with_a_prepared_folder_named_after_its_own(tmp_path, capsys):
    for out in ("chats_rl", "chats_rl/"):  # a second set must not be prepared over data/chats
        assert make_chats.main(["--out", str(tmp_path / out), "--train", "200", "--test", "40"]) == 0
        assert f"prepare.py {tmp_path / 'chats_rl' / 'train.jsonl'} --out data/chats_rl " in capsys.readouterr().out
    first = ["--out", str(tmp_path / "chats"), "--train", "200", "--test", "40"]
    assert make_chats.main(first) == 0 and "--vocab_from out/best.pt" in capsys.readouterr().out
    second = ["--out", str(tmp_path / "chats_rl"), "--train", "200", "--test", "40", "--seed", "1",
              "--exclude", str(tmp_path / "chats" / "test.jsonl")]  # the README's set for RL: the chat model's
    assert make_chats.main(second) == 0 and "--vocab_from out_chat/best.pt" in capsys.readouterr().out


def test_make_chats_writes_balanced_checked_answers_and_no_test_question_is_in_train(chats):
    keys = {}
    for name, lines in chats.items():
        keys[name] = set()
        for line in lines:
            turns = prepare.conversation(line, name)  # a valid conversation, or this raises
            assert turns[-1]["role"] == "assistant" and question_key(turns[-2]["content"])[0] == line["skill"]
            for question, reply in zip(turns, turns[1:]):  # every round, the first of two too
                if question["role"] == "user":
                    key = question_key(question["content"])
                    assert reply["content"] == right_answer(*key), (question, reply)
                    keys[name].add(key)
        skills = [line["skill"] for line in lines]
        assert {skills.count(s) for s in make_chats.SKILLS} == {len(lines) // 4}
    assert not keys["train"] & keys["test"]
    assert any(len(line["messages"]) >= 4 for line in chats["train"])  # some have two rounds


def test_make_chats_refuses_a_test_set_that_leaves_too_little_to_train_on(tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        make_chats.main(["--out", str(tmp_path), "--test", "100000"])
    assert usage.value.code == 2 and "--test 100000" in capsys.readouterr().err


# ----------------------------------------------------------------------------- eval_chat.py: exact match per skill
def accuracy_table(output):
    """{skill: (right, total, percent)} from eval_chat's table."""
    rows = re.findall(r"^(\S+)\s+(\d+) / (\d+)\s+([\d.]+)%$", output, re.M)
    return {name: (int(right), int(total), float(percent)) for name, right, total, percent in rows}


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("chats")
    assert make_chats.main(["--out", str(out), "--train", "40", "--test", "40"]) == 0
    return str(out / "test.jsonl")


@pytest.mark.parametrize("right", [True, False])
def test_eval_chat_counts_right_and_wrong_answers_per_skill(tmp_path, monkeypatch, capsys, held_out, right):
    checkpoint(tmp_path / "run" / "best.pt", vocab=SHAKESPEARE_LIKE + "()+0123456789<=>", chat_template=TEMPLATE)
    answers = {}
    for line in open(held_out, encoding="utf-8"):
        turns = turns_of(line)
        answers[turns[-2]["content"]] = turns[-1]["content"]
    def stand_in(model, tokenizer, template, messages, max_new_tokens, temperature, top_k, generator):
        assert messages[-1]["role"] == "user" and temperature == 0 and template == TEMPLATE
        reply = answers[messages[-1]["content"]] if right else "wrong"
        yield from [" ", reply[:1], reply[1:], "  "]  # pieces, with spaces around
        return True  # the end marker came
    monkeypatch.setattr(eval_chat, "chat_reply", stand_in)
    assert eval_chat.main([str(tmp_path / "run"), held_out, "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    table = accuracy_table(output)
    assert sorted(table) == sorted([*make_chats.SKILLS, "overall"])
    for name, (correct, total, percent) in table.items():
        assert total == (40 if name == "overall" else 10)
        assert (correct, percent) == ((total, 100.0) if right else (0, 0.0))
    assert ("wrong answers" in output) != right


def test_eval_chat_counts_questions_a_char_model_cannot_read_as_wrong_and_says_how_many(tmp_path, capsys, held_out):
    checkpoint(tmp_path / "run" / "best.pt")  # no digits, and no chat template: never fine-tuned on chats
    assert eval_chat.main([str(tmp_path / "run"), held_out, "--device", "cpu", "--max_new_tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert "never fine-tuned on chats" in captured.err
    asked = ["".join(rendered(turns_of(line)[:-1])) for line in open(held_out, encoding="utf-8")]
    unreadable = [text for text in asked if set(text) - set(SHAKESPEARE_LIKE)]
    assert 0 < len(unreadable) < len(asked)
    assert f"{len(unreadable)} questions had characters" in captured.out and accuracy_table(captured.out)["add"][0] == 0


@pytest.mark.parametrize("lines, expected", [
    (None, "no checkpoint at"),
    ([GOOD, '{"text": "a story"}'], "test.jsonl, line 2: not a conversation"),
    ([GOOD, chat(("user", "hi"), ("assistant", "yo"), ("user", "?"))], "test.jsonl, line 2: the last turn is not"),
    ([chat(("user", "hi"), ("robot", "yo"))], "test.jsonl, line 1, message 2: unknown role"),
    ("a folder", "test.jsonl not found (or not a file)")])
def test_eval_chat_bad_input_is_one_line_and_exit_1(tmp_path, capsys, lines, expected):
    if lines is not None:  # None: not even a checkpoint
        checkpoint(tmp_path / "run" / "best.pt")
    if lines == "a folder":
        (tmp_path / "test.jsonl").mkdir()
    elif lines is not None:
        write_lines(tmp_path / "test.jsonl", lines)
    assert eval_chat.main([str(tmp_path / "run"), str(tmp_path / "test.jsonl"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1, err
