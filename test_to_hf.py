"""test_to_hf.py: scripts/to_hf.py, a gpt.py checkpoint as a Hugging Face transformers folder, and
scripts/from_gpt2.py reading it back. One behaviour per test, on tiny random models made here, offline:
char, BPE and GPT-2 checkpoints, chat models of each, and a char chat model of sums (digits, no letters).

    python -m pytest test_to_hf.py
"""
import contextlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st
import safetensors.torch
from safetensors import SafetensorError

import gpt

transformers = pytest.importorskip("transformers")
pytest.importorskip("rustbpe")
pytest.importorskip("tiktoken")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
import chat as chat_py  # noqa: E402  scripts/chat.py
import from_gpt2  # noqa: E402  scripts/from_gpt2.py
import prepare  # noqa: E402  scripts/prepare.py
import to_hf  # noqa: E402  scripts/to_hf.py

# A loaded machine makes hypothesis's data generation slow, which is not what these tests are about
settings.register_profile("patient", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("patient")
TEXT = open(os.path.join(HERE, "shakespeare.txt"), encoding="utf-8").read()[:20_000]
KOREAN = "동해 물과 백두산이 마르고 닳도록\n하느님이 보우하사 우리나라 만세.\n"  # a Korean text trains here too
TEMPLATE = {"system": "System: ", "user": "User: ", "assistant": "Assistant: ", "end": "<end>"}  # prepare.py's
VOCAB = "".join(sorted(set(TEXT + KOREAN + "<>\t\r\u2028🙂")))  # <>: the chat template's end marker
BLOCK = 32
KINDS = ("char", "bpe", "gpt2")


def make_checkpoint(path, tokenizer=None, vocab=None, chat=None, gelu="exact", steps=120, loss=1.2345):
    """A tiny random gpt.py model saved as save_run writes best.pt. Its gains and biases are off their init
    values, so a mix-up in the export would show, and its matrices larger than at init: greedy sampling
    then writes varied tokens, not one token over and over."""
    vocab_size = len(vocab) if tokenizer is None else len(tokenizer["tokens"]) + 1
    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=vocab_size, gelu=gelu)
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(**shape, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    config = {**gpt.DEFAULTS, **shape, "config": "tiny", "data": "data/korean", "dropout": 0.0, "max_iters": steps}
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = dict(model=model.state_dict(), config=config, vocab=vocab, chat=chat, iter=steps, best_val_loss=loss)
    if tokenizer is not None:  # a char model's checkpoint has none
        ckpt["tokenizer"] = tokenizer
    torch.save(ckpt, path)
    return str(path)


def export(ckpt_path, out, *flags):
    """to_hf.py's main in this process: its exit code and both output streams."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = to_hf.main([str(ckpt_path), "--out", str(out), *flags])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run folder (best.pt) and its exported Hugging Face folder for each kind of tokenizer."""
    root = tmp_path_factory.mktemp("to_hf")
    learner = __import__("rustbpe").Tokenizer()  # GPT-2's split pattern, tokens learned here (GPT-2's are a download)
    learner.train_from_iterator(iter([TEXT]), 320, pattern=from_gpt2.GPT2_PATTERN)
    gpt2_tokens = [bytes(t).decode("latin-1") for t, _ in sorted(learner.get_mergeable_ranks(), key=lambda p: p[1])]
    made = dict(
        char=make_checkpoint(root / "char" / "best.pt", vocab=VOCAB),
        bpe=make_checkpoint(root / "bpe" / "best.pt", tokenizer=prepare.make_tokenizer(
            "bpe", 400, None, iter([TEXT, KOREAN * 20]))),
        gpt2=make_checkpoint(root / "gpt2" / "best.pt", gelu="tanh", steps=0, loss=float("nan"), tokenizer=dict(
            name="gpt2", pattern=from_gpt2.GPT2_PATTERN, tokens=gpt2_tokens)))
    for kind, path in made.items():
        code, out, err = export(path, root / kind / "hf")
        assert code == 0, err
    return {kind: (root / kind, root / kind / "hf", torch.load(path, weights_only=True)) for kind, path in made.items()}


@pytest.fixture(scope="module")
def loaded(runs):
    """Each folder through transformers' Auto classes, as a user loads it."""
    return {kind: (transformers.AutoModelForCausalLM.from_pretrained(hf).eval(),
                   transformers.AutoTokenizer.from_pretrained(hf)) for kind, (_, hf, _) in runs.items()}


def prompt_for(kind):
    return KOREAN[:12] if kind == "char" else "ROMEO: Is it so? 만세"


# ----------------------------------------------------------------------------- the folder
@pytest.mark.parametrize("kind", KINDS)
def test_the_folder_is_a_gpt2_in_gpt_py_s_shape(runs, kind):
    _, hf, ckpt = runs[kind]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md"} <= set(os.listdir(hf))
    with open(hf / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_positions"] == config["n_ctx"] == BLOCK  # n_ctx: llama.cpp's converter reads it
    assert config["vocab_size"] == ckpt["config"]["vocab_size"]
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (2, 2, 32)
    assert config["activation_function"] == {"char": "gelu", "bpe": "gelu", "gpt2": "gelu_new"}[kind]
    assert config["layer_norm_epsilon"] == 1e-5 and config["tie_word_embeddings"] is True
    assert "trust_remote_code" not in json.dumps(config) and "auto_map" not in config


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_computes_the_logits_gpt_py_computes(runs, loaded, kind):
    _, _, ckpt = runs[kind]
    ours, (theirs, _) = gpt.model_from(ckpt, torch.device("cpu")), loaded[kind]
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    assert theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()  # tied
    idx = torch.randint(ckpt["config"]["vocab_size"], (3, BLOCK), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(idx) - theirs(idx).logits).abs().max().item()
    assert diff < 1e-5, f"max |gpt.py - transformers| = {diff:.2e}"


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generate_writes_what_gpt_py_samples_at_temperature_0(runs, loaded, kind):
    run, _, ckpt = runs[kind]
    model, tokenizer = loaded[kind]
    prompt = prompt_for(kind)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    new = BLOCK - ids.size(1)  # within one block: transformers' GPT-2 has no sliding window
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert gpt.main(["--sample", "--out_dir", str(run), "--prompt", prompt, "--temperature", "0",
                         "--max_new_tokens", str(new), "--device", "cpu"]) == 0
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new)
    ours = [next_id.item() for next_id, _ in gpt.generate(gpt.model_from(ckpt, torch.device("cpu")), ids, new,
                                                        temperature=0)]
    assert theirs[0, ids.size(1):].tolist() == ours and len(ours) == new
    assert out.getvalue() == tokenizer.decode(theirs[0]) + "\n"  # --sample's stdout: the prompt, the text


@pytest.mark.parametrize("kind", KINDS)
def test_the_text_generation_pipeline_runs_on_the_folder(runs, kind):
    _, hf, _ = runs[kind]
    generator = transformers.pipeline("text-generation", model=str(hf))
    prompt = prompt_for(kind)
    text = generator(prompt, max_new_tokens=5)[0]["generated_text"]
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_the_model_card_says_what_it_was_trained_on_its_steps_its_loss_and_the_command(runs):
    run, hf, _ = runs["char"]
    card = (hf / "README.md").read_text(encoding="utf-8")
    assert "data/korean" in card and "120 steps" in card and "1.2345" in card
    assert "python gpt.py --config tiny --data data/korean" in card
    assert f"python scripts/to_hf.py {run / 'best.pt'} --out {hf}`" in card and card.startswith("---\n")
    gpt2_card = (runs["gpt2"][1] / "README.md").read_text(encoding="utf-8")
    assert "not measured" in gpt2_card and "step 0" in gpt2_card


# ----------------------------------------------------------------------------- tokenizers: gpt.py's ids
def assert_same_ids(kind, loaded, runs, text):
    tokenizer, ours = loaded[kind][1], gpt.tokenizer_of(runs[kind][2])
    ids = tokenizer(text).input_ids
    assert ids == ours.encode(text), f"{text!r}"
    assert tokenizer.decode(ids) == text


@given(st.text(alphabet=VOCAB))
@example("\n\n  동해 물과  A\n")
def test_a_char_model_s_tokenizer_gives_each_character_gpt_py_s_id(loaded, runs, text):
    assert_same_ids("char", loaded, runs, text)


@settings(max_examples=150)
@given(st.text() | st.text(alphabet=TEXT + KOREAN))
@example("<|endoftext|> is text here, as in gpt.py")
@example("  leading spaces,\n\n\nnewlines,  trailing  ")
def test_a_bpe_model_s_tokenizer_gives_tiktoken_s_ids(loaded, runs, text):
    assert_same_ids("bpe", loaded, runs, text)


@settings(max_examples=150)
@given(st.text() | st.text(alphabet=TEXT + KOREAN))
@example("I'll say it's   'tis  \n\n 1234 he")
def test_a_gpt2_model_s_tokenizer_gives_tiktoken_s_ids(loaded, runs, text):
    assert_same_ids("gpt2", loaded, runs, text)


def test_bpe_merges_that_make_one_token_tie_as_in_tiktoken_whichever_comes_first():
    """tiktoken ranks a pair by the token it makes: "aaa" from (aa, a) and from (a, aa) tie, and the leftmost
    goes first. A tokenizers BPE ranks every merge apart, by its place in the list. Tokens cut many ways,
    with overlapping repeats and ranks out of order ("abaa" before "aba"), on every text of a and b up to
    10 letters: the exported tokenizer gives tiktoken's ids, and so does it with each token's cuts reversed."""
    extra = ["aa", "ab", "ba", "abaa", "aaa", "aba", "bab", "aaaa", "abab", "baba", "ababa", "aabaa", "babab"]
    spec = dict(name="bpe", pattern=from_gpt2.GPT2_PATTERN, tokens=[chr(b) for b in range(256)] + extra)
    ours, theirs = gpt.BPETokenizer(spec), to_hf.bpe_tokenizer(spec)[0]
    saved = json.loads(theirs.to_str())
    merges = saved["model"]["merges"]  # [left, right] pairs, ranked by place: each token's cuts together
    groups = [list(cuts) for _, cuts in itertools.groupby(merges, key=lambda pair: pair[0] + pair[1])]
    assert max(map(len, groups)) >= 3  # some tokens can be made three ways
    saved["model"]["merges"] = [pair for cuts in groups for pair in reversed(cuts)]
    reversed_cuts = type(theirs).from_str(json.dumps(saved))
    texts = ["".join(letters) for n in range(1, 11) for letters in itertools.product("ab", repeat=n)]
    want = [ours.encode(text) for text in texts]
    assert [encoding.ids for encoding in theirs.encode_batch(texts)] == want
    assert [encoding.ids for encoding in reversed_cuts.encode_batch(texts)] == want


def test_a_char_tokenizer_refuses_a_character_the_model_never_saw(loaded):
    with pytest.raises(Exception, match="UNK"):  # not a silent id, as gpt.py refuses it too
        loaded["char"][1]("ROMEO €")


# ----------------------------------------------------------------------------- chat models
MESSAGES = [dict(role="system", content="Be brief."), dict(role="user", content="What is twelve and thirty?"),
            dict(role="assistant", content="Forty two."), dict(role="user", content="And 동해?")]
SUMS = "".join(sorted(set("0123456789+= \n" + "".join(TEMPLATE.values()))))  # no b, c, f: transformers' "abcdef"


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory, runs):
    """The char and BPE checkpoints fine-tuned on conversations (as far as the files tell): prepare.py's
    template; and a char model of sums, whose characters lack some of a-f."""
    root, made = tmp_path_factory.mktemp("chat"), {}
    for kind in ("char", "bpe"):
        ckpt = {**runs[kind][2], "chat": TEMPLATE}
        (root / kind).mkdir()
        torch.save(ckpt, root / kind / "best.pt")
    make_checkpoint(root / "sums" / "best.pt", vocab=SUMS, chat=TEMPLATE)
    for kind in ("char", "bpe", "sums"):
        assert export(root / kind / "best.pt", root / kind / "hf")[0] == 0
        ckpt = torch.load(root / kind / "best.pt", weights_only=True)
        made[kind] = ckpt, transformers.AutoTokenizer.from_pretrained(root / kind / "hf"), root / kind
    return made


@pytest.fixture(scope="module")
def every_model(runs, chat_models):
    """Every kind of model: its run folder (best.pt) and its exported folder (hf)."""
    return {**{kind: (run, hf, ckpt) for kind, (run, hf, ckpt) in runs.items()},
            **{f"chat-{kind}": (run, run / "hf", ckpt) for kind, (ckpt, _, run) in chat_models.items()}}


EVERY = (*KINDS, "chat-char", "chat-bpe", "chat-sums")


@pytest.mark.parametrize("kind", ("char", "bpe"))
def test_the_chat_template_renders_the_text_and_the_ids_training_saw(chat_models, kind):
    ckpt, tokenizer, _ = chat_models[kind]
    pieces = [piece for message in MESSAGES for piece in chat_py.chat_turn(message, TEMPLATE)]
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == "".join(pieces)
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == text + "Assistant: "
    # prepare.py and chat.py encode each piece on its own: no token spans a prefix and a content
    ours = gpt.tokenizer_of(ckpt)
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == [i for piece in [*pieces, "Assistant: "] for i in ours.encode(piece)]


@pytest.mark.parametrize("kind", ("char", "bpe"))
def test_the_card_says_where_a_bpe_template_s_ids_differ_from_chat_py_s(chat_models, kind):
    """A BPE chat tokenizer cuts the text where the pieces of a turn meet, and so within a message holding a
    role's prefix: its ids then differ from scripts/chat.py's, which encodes the message whole. The card says
    so for BPE models; a char model's ids are the same."""
    ckpt, tokenizer, run = chat_models[kind]
    messages = [dict(role="user", content="Tell the User: yes")]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    differ = ids != chat_py.prompt_ids(gpt.tokenizer_of(ckpt), TEMPLATE, messages, 10**6)
    said = "A message holding a role's prefix or the end marker ('User: ') is cut there too, so its ids may " \
        "differ from scripts/chat.py's" in (run / "hf" / "README.md").read_text(encoding="utf-8")
    assert differ == said == (kind == "bpe")


@pytest.mark.parametrize("kind", EVERY)
def test_generate_works_on_every_model_without_its_tokenizer_and_with_it(every_model, kind):
    _, hf, ckpt = every_model[kind]
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    ids = torch.tensor([gpt.tokenizer_of(ckpt).encode("1 + 2" if kind == "chat-sums" else prompt_for(kind))])
    alone = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=4)
    given = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=4,
                           tokenizer=tokenizer)
    assert alone.size(1) == ids.size(1) + 4 and torch.equal(alone, given)
    assert "stop_strings" not in (hf / "generation_config.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", EVERY)
def test_the_model_card_s_snippets_run_as_they_are(every_model, kind, capsys):
    _, hf, ckpt = every_model[kind]
    card = (hf / "README.md").read_text(encoding="utf-8")
    snippets = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    assert len(snippets) == 2  # the pipeline, and generate with the tokenizer
    for code in snippets:
        exec(compile(code, str(hf / "README.md"), "exec"), {})  # as a user pastes it
        printed = capsys.readouterr().out
        assert printed.strip(), code
    if ckpt.get("chat"):
        assert "stop_strings=['<end>']" in card and ".removesuffix('<end>')" in card


def end_marker_it_writes(ckpt, prompt, one_token=False):
    """An end marker that this random model writes in its greedy answer to prompt, where a marker it never
    writes lets it go on: two characters from the middle (a chat REPL's stop string), or one token."""
    model, ours = gpt.model_from(ckpt, torch.device("cpu")), gpt.tokenizer_of(ckpt)
    if not one_token:
        free = "".join(chat_py.chat_reply(model, ours, {**TEMPLATE, "end": "\0never"}, prompt, 16, 0, None, None))
        return next(free[i:i + 2] for i in range(4, len(free)) if "\ufffd" not in free[i:i + 2]), free
    idx = torch.tensor([[i for m in prompt for p in chat_py.chat_turn(m, TEMPLATE) for i in ours.encode(p)]
                        + ours.encode(TEMPLATE["assistant"])])
    ids = [next_id.item() for next_id, _ in gpt.generate(model, idx, 16, temperature=0)]
    for i in range(2, len(ids)):  # a token that is its own text, met there first
        before, piece = ours.decode(ids[:i]), ours.decode(ids[i:i + 1])
        if "\ufffd" not in piece and ours.encode(piece) == [ids[i]] and piece not in before + piece[:-1]:
            return piece, ours.decode(ids)
    raise AssertionError("no token of the greedy answer can be an end marker")


@pytest.mark.parametrize("kind", ("char", "bpe", "sums"))
def test_generate_stops_at_the_end_marker_given_as_the_card_shows(tmp_path, chat_models, kind):
    ckpt = chat_models[kind][0]
    prompt = [dict(role="user", content="1+2" if kind == "sums" else "Hi")]
    end, free = end_marker_it_writes(ckpt, prompt)
    chat = {**TEMPLATE, "end": end}
    torch.save({**ckpt, "chat": chat}, tmp_path / "best.pt")
    assert export(tmp_path / "best.pt", tmp_path / "hf")[0] == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf.generation_config.stop_strings is None  # generate() without a tokenizer works
    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = hf.generate(**inputs, do_sample=False, max_new_tokens=16, stop_strings=[end], tokenizer=tokenizer)
    model, ours = gpt.model_from(ckpt, torch.device("cpu")), gpt.tokenizer_of(ckpt)
    reply = "".join(chat_py.chat_reply(model, ours, chat, prompt, 16, 0, None, None))
    assert tokenizer.decode(out[0, inputs["input_ids"].size(1):]) == reply + end
    assert len(reply) < len(free) - 2
    # the pipeline too, as the model card shows it
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    answer = pipe(prompt, stop_strings=[end], tokenizer=pipe.tokenizer, do_sample=False, max_new_tokens=16)
    assert answer[0]["generated_text"][-1] == dict(role="assistant", content=reply + end)
    if kind == "sums":  # the one token more for transformers' stop strings is no character to the model
        with pytest.raises(Exception, match="UNK"):
            tokenizer("1+b")


@pytest.mark.parametrize("kind", ("char", "bpe"))
def test_a_pipeline_reply_appended_to_the_conversation_renders_as_chat_py_renders_it(tmp_path, chat_models, kind):
    """The pipeline returns an answer with the end marker it stopped at, and a conversation goes on with it:
    apply_chat_template renders that turn with one marker, the text and ids scripts/chat.py's next prompt has."""
    ckpt = chat_models[kind][0]
    prompt = [dict(role="user", content="Hi")]
    end, _ = end_marker_it_writes(ckpt, prompt)
    chat = {**TEMPLATE, "end": end}
    torch.save({**ckpt, "chat": chat}, tmp_path / "best.pt")
    assert export(tmp_path / "best.pt", tmp_path / "hf")[0] == 0
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    conversation = pipe(prompt, stop_strings=[end], tokenizer=pipe.tokenizer, do_sample=False,
                        max_new_tokens=16)[0]["generated_text"]
    question = next(q for q in ("And then?", "Why?", "Go on.") if end not in q)
    conversation.append(dict(role="user", content=question))
    model, ours = gpt.model_from(ckpt, torch.device("cpu")), gpt.tokenizer_of(ckpt)
    reply = "".join(chat_py.chat_reply(model, ours, chat, prompt, 16, 0, None, None))  # without the marker
    assert conversation[1] == dict(role="assistant", content=reply + end)
    said = [*prompt, dict(role="assistant", content=reply), dict(role="user", content=question)]
    text = "".join(piece for message in said for piece in chat_py.chat_turn(message, chat)) + chat["assistant"]
    assert pipe.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) == text
    ids = pipe.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == chat_py.prompt_ids(ours, chat, said, 10**6)


def test_a_char_model_lacking_a_letter_of_abcdef_has_a_token_more_for_that_word_alone_and_says_so(chat_models):
    """transformers encodes "abcdef" to set up stop strings, so a model of sums gets it as a token more, at id
    vocab_size, which the model cannot read. Only that word gives it: its letters within a text are refused,
    as gpt.py refuses them. The model card says it; a model whose characters hold a-f has no token more."""
    ckpt, tokenizer, run = chat_models["sums"]
    size = ckpt["config"]["vocab_size"]
    assert tokenizer("abcdef").input_ids == [size] and len(tokenizer) == size + 1
    for text in ("12abcdef3", "abcdefg", "1 abcdefabcdef"):
        with pytest.raises(Exception, match="UNK"):
            tokenizer(text)
    card = (run / "hf" / "README.md").read_text(encoding="utf-8")
    assert f"- Tokenizer: one token more than the model's, 'abcdef' (id {size}), which transformers' stop strings " \
        "need; the model never writes it and cannot read it: a text with the word 'abcdef' fails in `generate`" in card
    _, char_tokenizer, char_run = chat_models["char"]
    assert len(char_tokenizer) == len(VOCAB) and "- Tokenizer:" not in (char_run / "hf" / "README.md").read_text(
        encoding="utf-8")


def test_an_end_marker_of_one_token_stops_generate_by_itself(tmp_path, chat_models):
    ckpt = chat_models["bpe"][0]
    prompt = [dict(role="user", content="Hi")]
    end, free = end_marker_it_writes(ckpt, prompt, one_token=True)
    chat = {**TEMPLATE, "end": end}
    torch.save({**ckpt, "chat": chat}, tmp_path / "best.pt")
    assert export(tmp_path / "best.pt", tmp_path / "hf")[0] == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    eot, marker = len(ckpt["tokenizer"]["tokens"]), gpt.tokenizer_of(ckpt).encode(end)
    assert hf.generation_config.eos_token_id == [eot, *marker] and len(marker) == 1
    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = hf.generate(**inputs, do_sample=False, max_new_tokens=16)  # no tokenizer, no stop string
    model, ours = gpt.model_from(ckpt, torch.device("cpu")), gpt.tokenizer_of(ckpt)
    reply = "".join(chat_py.chat_reply(model, ours, chat, prompt, 16, 0, None, None))
    assert tokenizer.decode(out[0, inputs["input_ids"].size(1):]) == reply + end and len(reply + end) < len(free)
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    assert pipe(prompt, do_sample=False, max_new_tokens=16)[0]["generated_text"][-1]["content"] == reply + end
    assert f"stop_strings" not in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- from_gpt2.py reads it back
@pytest.mark.parametrize("kind", EVERY)
def test_from_gpt2_reads_every_folder_back_and_gpt_py_samples_the_same_text(every_model, kind, tmp_path):
    run, hf, ckpt = every_model[kind]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert from_gpt2.main([str(hf), "--out_dir", str(tmp_path)]) == 0
    back = torch.load(tmp_path / "best.pt", weights_only=True)
    assert gpt.tokenizer_of(back).spec == gpt.tokenizer_of(ckpt).spec  # a char model's vocab, a BPE's spec
    assert back.get("tokenizer") == ckpt.get("tokenizer") and back["vocab"] == ckpt["vocab"]
    assert back["chat"] == ckpt.get("chat") and back["config"]["gelu"] == ckpt["config"]["gelu"]
    assert back["model"].keys() == ckpt["model"].keys()
    assert all(torch.equal(back["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    texts = []
    for folder in (run, tmp_path):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert gpt.main(["--sample", "--out_dir", str(folder), "--max_new_tokens", "24", "--seed", "7",
                             "--device", "cpu"]) == 0
        texts.append(out.getvalue())
    assert texts[0] == texts[1] and len(texts[0]) > 24 // 4


def test_from_gpt2_refuses_a_tokenizer_it_cannot_read_in_one_line(runs, tmp_path):
    for kind, name, text in (("char", "tokenizer.json", "{not json"), ("bpe", "tokenizer_config.json",
                             json.dumps({"gpt_py": {"tokenizer": "bpe", "chat": {"end": 3}}}))):
        shutil.copytree(runs[kind][1], tmp_path / kind)
        (tmp_path / kind / name).write_text(text, encoding="utf-8")
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            assert from_gpt2.main([str(tmp_path / kind), "--out_dir", str(tmp_path / f"{kind}_back")]) == 1
        lines = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "is not one gpt.py reads" in lines[0] and "Traceback" not in err.getvalue()
        assert not (tmp_path / f"{kind}_back").exists()


@pytest.mark.parametrize("kind", ("char", "bpe"))
def test_from_gpt2_reads_the_weights_of_every_folder_back(runs, kind):
    _, hf, ckpt = runs[kind]
    model, config = from_gpt2.convert(transformers.GPT2LMHeadModel.from_pretrained(hf))
    assert all(config[k] == ckpt["config"][k] for k in gpt.MODEL_KEYS)
    assert all(torch.equal(t, ckpt["model"][k]) for k, t in model.state_dict().items())


# ----------------------------------------------------------------------------- the model card tells the truth
def card_of(tmp_path, ckpt, name="best.pt", **changes):
    """README.md of ckpt, with changes, as to_hf.py writes it."""
    torch.save({**ckpt, **changes}, tmp_path / name)
    assert export(tmp_path / name, tmp_path / "hf", "--overwrite")[0] == 0
    return (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


FROM_GPT2 = "as scripts/from_gpt2.py writes them"
RL_FLAGS = {"init_from": "out_chat/best.pt", "data": "chats_rl/train.jsonl", "out_dir": "out_rl", "eval_data":
            "chats_rl/test.jsonl", "max_iters": 600, "samples": 8, "temperature": 2.0, "sft_data": None,
            "overwrite": False, "eval_only": False}  # rl.py's flags, as its checkpoints record them


def test_the_card_of_a_step_0_checkpoint_never_says_from_gpt2_unless_from_gpt2_wrote_it(runs, tmp_path):
    ckpt = runs["char"][2]
    card = card_of(tmp_path, ckpt, iter=0)  # gpt.py's first eval: step 0, a val loss measured
    assert FROM_GPT2 not in card and "step 0: its random initial weights" in card and "python gpt.py" in card
    card = card_of(tmp_path, ckpt, iter=0, best_val_loss=float("nan"))  # no run recorded anything
    assert FROM_GPT2 not in card and "not recorded" in card and "python gpt.py" not in card
    card = card_of(tmp_path, ckpt, iter=0, made_by=dict(script="scripts/rl.py", args=RL_FLAGS),
                   best_val_loss=float("nan"))  # an rl.py best.pt no step measured better
    assert FROM_GPT2 not in card and "no step of scripts/rl.py (step 0: the weights of `out_chat/best.pt`, " \
        "unchanged)" in card
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # from_gpt2.py's
        assert from_gpt2.main([str(runs["gpt2"][1]), "--out_dir", str(tmp_path / "gpt2")]) == 0
    card = card_of(tmp_path, torch.load(tmp_path / "gpt2" / "best.pt", weights_only=True))
    assert FROM_GPT2 in card and "python gpt.py" not in card


def test_the_card_of_an_rl_py_checkpoint_gives_rl_py_s_command(runs, tmp_path):
    ckpt = {**runs["char"][2], "chat": TEMPLATE}  # config: gpt.py's terms, as rl.py writes it
    card = card_of(tmp_path, ckpt, "rl.pt", iter=600, best_val_loss=float("nan"), accuracy=84.625,
                   made_by=dict(script="scripts/rl.py", args=RL_FLAGS))
    assert ("- Made by: `python scripts/rl.py --init_from out_chat/best.pt --data chats_rl/train.jsonl --out_dir "
            "out_rl --eval_data chats_rl/test.jsonl --max_iters 600 --samples 8 --temperature 2.0`, then "
            f"`python scripts/to_hf.py {tmp_path / 'rl.pt'} --out {tmp_path / 'hf'}`") in card
    assert "python gpt.py" not in card and "--overwrite" not in card.split("then")[0]
    assert "`chats_rl/train.jsonl`, 600 steps of scripts/rl.py, starting from `out_chat/best.pt`" in card
    assert "Accuracy: 84.6% (mean greedy exact match over the skills of `chats_rl/test.jsonl`)" in card
    assert "Val loss: not measured" in card


def test_the_card_of_an_older_rl_py_checkpoint_gives_rl_py_s_command(runs, tmp_path):
    """rl.py from before "made_by" wrote its flags over the config, and "accuracy" beside it: still rl.py's run,
    not a gpt.py command with rl.py's flags."""
    flags = dict(init_from="out_chat/best.pt", data="chats_rl/train.jsonl", out_dir="out_rl",
                 eval_data="chats_rl/test.jsonl", max_iters=600, batch_size=64, samples=8, temperature=2.0,
                 learning_rate=2e-4, sft_data=None, sft_weight=0.0, grad_clip=1.0, max_new_tokens=32, eval_interval=50,
                 seed=1337, device="auto", overwrite=False)  # all its flags, as vars(args) gave them
    ckpt = {**runs["char"][2], "chat": TEMPLATE}
    card = card_of(tmp_path, ckpt, "rl.pt", config={**ckpt["config"], **flags}, iter=600, accuracy=84.625,
                   best_val_loss=float("nan"))
    assert ("- Made by: `python scripts/rl.py --init_from out_chat/best.pt --data chats_rl/train.jsonl --out_dir "
            "out_rl --eval_data chats_rl/test.jsonl --max_iters 600 --batch_size 64 --samples 8 --temperature 2.0 "
            "--learning_rate 0.0002 --sft_weight 0.0 --grad_clip 1.0 --max_new_tokens 32 --eval_interval 50 "
            "--seed 1337`, then") in card and "python gpt.py" not in card
    assert "Accuracy: 84.6% (mean greedy exact match over the skills of `chats_rl/test.jsonl`)" in card
    card = card_of(tmp_path, ckpt, "rl.pt", config={**ckpt["config"], **flags, "eval_data": None}, iter=0,
                   accuracy=None, best_val_loss=float("nan"))  # no held-out data: no accuracy, no step kept
    assert "no step of scripts/rl.py (step 0: the weights of `out_chat/best.pt`, unchanged)" in card


# ----------------------------------------------------------------------------- bad input: one line each
def test_a_file_that_is_not_a_gpt_py_checkpoint_is_refused_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint", encoding="utf-8")
    script = subprocess.run([sys.executable, os.path.join(HERE, "scripts", "to_hf.py"), str(tmp_path / "notes.txt"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert script.returncode == 1 and script.stderr.startswith("error: ") and len(script.stderr.splitlines()) == 1
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    for path in (tmp_path / "notes.txt", tmp_path / "foreign.pt", tmp_path / "missing.pt"):
        code, _, err = export(path, tmp_path / "out")
        assert code == 1 and err.startswith("error: ") and str(path) in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    code, _, err = export(tmp_path / "notes.txt", tmp_path / "out", "--bogus")
    assert code == 2 and "--bogus" in err


@pytest.mark.parametrize("missing", ("transformers", "safetensors"))
def test_without_transformers_or_safetensors_it_names_the_pip_install(runs, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # as if it were not installed
    code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "out")
    assert code == 1 and 'pip install -e ".[gpt2]"' in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the user's files are safe
def snapshot(folder):
    """Every path below folder: a file's bytes, a link's target, a folder's name. Links are not followed."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                found[os.path.relpath(path, folder)] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    found[os.path.relpath(path, folder)] = f.read()
            else:
                found[os.path.relpath(path, folder)] = "folder"
    return found


def a_folder_of_files(folder):
    """What a user keeps in a folder: GPT-2's tokenizer files, notes, a README, a folder of its own."""
    (folder / "notes").mkdir(parents=True)
    for name, text in {"vocab.json": '{"a": 0}', "merges.txt": "#version: 0.2\n", "README.md": "# My project\n",
                       "special_tokens_map.json": "{}", "notes/todo.txt": "keep me"}.items():
        (folder / name).write_text(text, encoding="utf-8")
    return snapshot(folder)


def refused(code, err, *words):
    return code == 1 and err.startswith("error: ") and len(err.splitlines()) == 1 and all(w in err for w in words)


@pytest.mark.parametrize("kind", ("char", "gpt2"))
def test_a_folder_holding_other_files_is_refused_and_left_as_it_was(runs, tmp_path, kind):
    before = a_folder_of_files(tmp_path / "mine")
    code, out, err = export(runs[kind][0] / "best.pt", tmp_path / "mine")
    assert refused(code, err, "is not empty", "--overwrite") and not out, err
    # what --overwrite would replace: GPT-2's vocab.json and merges.txt only where it writes them
    replaced = {"char": "README.md", "gpt2": "README.md, vocab.json, merges.txt"}[kind]
    assert err.endswith(f"keep the rest, replacing {replaced}\n"), err
    assert snapshot(tmp_path / "mine") == before


def test_out_dot_in_a_project_is_refused_and_left_as_it_was(runs, tmp_path, monkeypatch):
    before = a_folder_of_files(tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    code, _, err = export(runs["char"][0] / "best.pt", ".")
    assert refused(code, err, "--out . is not empty"), err
    assert snapshot(tmp_path / "project") == before


def test_an_earlier_export_is_replaced_only_with_overwrite(runs, tmp_path):
    shutil.copytree(runs["gpt2"][1], tmp_path / "hf")  # with GPT-2's vocab.json and merges.txt
    before = snapshot(tmp_path / "hf")
    code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "hf")
    assert refused(code, err, "already holds a model", "replace it with --overwrite"), err
    assert snapshot(tmp_path / "hf") == before
    code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "hf", "--overwrite")
    assert code == 0 and err == f"note: kept vocab.json, merges.txt in {tmp_path / 'hf'}, which transformers " \
        "reads too; remove them if they belong to another model\n", err
    after = snapshot(tmp_path / "hf")
    assert sorted(after) == sorted([*to_hf.FILES, *to_hf.GPT2_FILES])  # nothing deleted, the rest replaced
    assert {k: after[k] for k in to_hf.GPT2_FILES} == {k: before[k] for k in to_hf.GPT2_FILES}
    fresh = snapshot(runs["char"][1])
    assert all(after[k] == fresh[k] for k in to_hf.FILES if k != "README.md")  # the card names its folder
    assert transformers.AutoConfig.from_pretrained(tmp_path / "hf").vocab_size == len(VOCAB)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("ROMEO").input_ids == [
        VOCAB.index(ch) for ch in "ROMEO"]


def test_overwrite_replaces_only_the_files_to_hf_writes(runs, tmp_path):
    before = a_folder_of_files(tmp_path / "mine")
    (tmp_path / "elsewhere.md").write_text("not the folder's", encoding="utf-8")
    (tmp_path / "mine" / "config.json").symlink_to(tmp_path / "elsewhere.md")  # a link: replaced, its file kept
    code, out, err = export(runs["char"][0] / "best.pt", tmp_path / "mine", "--overwrite")
    assert code == 0 and out.startswith("wrote "), err
    assert err.startswith("note: kept vocab.json, merges.txt, special_tokens_map.json") and len(err.splitlines()) == 1
    after = snapshot(tmp_path / "mine")
    assert {k: v for k, v in after.items() if k not in to_hf.FILES} == {k: v for k, v in before.items()
                                                                        if k not in to_hf.FILES}
    assert after["README.md"].startswith(b"---\nlibrary_name: transformers") and not os.path.islink(
        tmp_path / "mine" / "config.json")
    assert (tmp_path / "elsewhere.md").read_text(encoding="utf-8") == "not the folder's"
    assert transformers.AutoConfig.from_pretrained(tmp_path / "mine").vocab_size == len(VOCAB)


def test_a_file_or_a_link_to_nothing_as_out_is_refused_even_with_overwrite(runs, tmp_path):
    (tmp_path / "model.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    (tmp_path / "to_file").symlink_to(tmp_path / "model.txt")
    for flags in ((), ("--overwrite",)):
        code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "to_file", *flags)
        assert refused(code, err, "is a file, not a folder"), err
        code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "model.txt", *flags)
        assert refused(code, err, f"--out {tmp_path / 'model.txt'} is a file, not a folder") and "--out_dir" not in err
        code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "gone", *flags)
        assert refused(code, err, "is a link to nothing"), err
        code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "model.txt" / "hf", *flags)
        assert refused(code, err, "--out", "is not a folder that can be written") and "--out_dir" not in err, err
    assert (tmp_path / "model.txt").read_text(encoding="utf-8") == "mine" and sorted(os.listdir(tmp_path)) == [
        "gone", "model.txt", "to_file"]


def test_a_folder_where_to_hf_writes_a_file_is_refused_even_with_overwrite(runs, tmp_path):
    (tmp_path / "hf" / "README.md").mkdir(parents=True)
    (tmp_path / "hf" / "README.md" / "mine.txt").write_text("mine", encoding="utf-8")
    before = snapshot(tmp_path / "hf")
    code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "hf", "--overwrite")
    assert refused(code, err, "holds a folder named README.md"), err
    assert snapshot(tmp_path / "hf") == before


def test_a_link_to_an_empty_folder_is_written_through(runs, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert export(runs["char"][0] / "best.pt", tmp_path / "link")[0] == 0
    assert sorted(os.listdir(tmp_path / "real")) == sorted(to_hf.FILES)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_in_one_line(runs, tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "locked")
    assert refused(code, err, "--out", "is not a folder that can be written"), err
    assert os.listdir(tmp_path / "locked") == []


def test_an_export_that_fails_leaves_no_new_folder_and_no_files(runs, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):  # what safetensors raises on a full disk: its own error, not an OSError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "new" / "hf")
    assert refused(code, err, "No space left on device"), err
    assert not (tmp_path / "new").exists()
    before = a_folder_of_files(tmp_path / "mine")
    code, _, err = export(runs["char"][0] / "best.pt", tmp_path / "mine", "--overwrite")
    assert refused(code, err, "No space left on device"), err
    assert snapshot(tmp_path / "mine") == before  # the files aside were never moved in


@pytest.mark.skipif(sys.platform == "win32", reason="no file-size limit (ulimit -f) on Windows")
def test_a_file_too_large_for_the_disk_is_one_line_whichever_file_it_is(runs, tmp_path):
    """A file-size limit (ulimit -f) fails the real writers as a full disk does: transformers' (config.json),
    this script's (tokenizer.json, README.md), safetensors' (model.safetensors). Each file of an export in turn
    is made one byte too big: every time one line naming --out, exit 1, and no folder left."""
    hf, out = runs["bpe"][1], tmp_path / "new" / "hf"
    limits = sorted({os.path.getsize(hf / name) - 1 for name in to_hf.FILES})
    driver = ("import contextlib, io, json, resource, sys\n"
              "sys.path.insert(0, sys.argv[1])\n"
              "import to_hf\n"
              "soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
              "for limit in map(int, sys.argv[4:]):\n"
              "    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))\n"
              "    err = io.StringIO()\n"
              "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
              "        code = to_hf.main([sys.argv[2], '--out', sys.argv[3]])\n"
              "    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))\n"
              "    print(json.dumps([limit, code, err.getvalue()]), flush=True)\n")
    script = subprocess.run([sys.executable, "-c", driver, os.path.join(HERE, "scripts"),
                             str(runs["bpe"][0] / "best.pt"), str(out), *map(str, limits)],
                            capture_output=True, text=True, timeout=300)
    results = [json.loads(line) for line in script.stdout.splitlines()]
    assert [limit for limit, _, _ in results] == limits, script.stderr[-2000:]
    for limit, code, err in results:
        assert (code, err) == (1, f"error: --out {out}: File too large\n"), (limit, err)
    assert os.listdir(tmp_path) == []


def test_a_killed_export_s_files_aside_neither_block_the_next_nor_survive_it(runs, tmp_path):
    """kill -9 leaves the hidden folder where an export writes its files first, a weights file half-written
    in it. The next export into that folder is not refused (the folder looks empty, and is, to the user),
    with or without --overwrite, and it removes the stale folder."""
    for folder, flags in ((tmp_path / "killed", ()), (tmp_path / "earlier", ("--overwrite",))):
        if flags:
            shutil.copytree(runs["char"][1], folder)
        folder.mkdir(exist_ok=True)
        stale = tempfile.mkdtemp(prefix=".to_hf-", dir=folder)  # as to_hf.py names it
        with open(os.path.join(stale, "model.safetensors"), "wb") as f:
            f.write(b"half a model")
        code, _, err = export(runs["char"][0] / "best.pt", folder, *flags)
        assert code == 0 and not err, err
        assert sorted(os.listdir(folder)) == sorted(to_hf.FILES)


@pytest.mark.parametrize("name", ("SIGTERM", "SIGHUP"))
def test_sigterm_and_sighup_stop_it_as_ctrl_c_does_and_leave_nothing(runs, tmp_path, monkeypatch, name):
    """A signal while the files are written aside: exit 128 + the signal, as a shell reports it, and no
    new folder, no folder aside, nothing moved in."""
    signum = getattr(signal, name, None)
    if signum is None:
        pytest.skip(f"no {name} here")
    real = safetensors.torch.save_file
    def save_then_signal(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signum)
    monkeypatch.setattr("safetensors.torch.save_file", save_then_signal)
    unhandled = []  # without to_hf.py's own handler the signal lands here, not on pytest
    before = signal.signal(signum, lambda *args: unhandled.append(args))
    try:
        (tmp_path / "empty").mkdir()
        for folder in (tmp_path / "new" / "hf", tmp_path / "empty"):
            code, out, err = export(runs["char"][0] / "best.pt", folder)
            assert (code, out, err, unhandled) == (128 + signum, "", f"\ninterrupted ({name})\n", [])
        assert sorted(os.listdir(tmp_path)) == ["empty"] and os.listdir(tmp_path / "empty") == []
    finally:
        signal.signal(signum, before)


def test_out_through_a_missing_folder_makes_no_folder_on_the_way(runs, tmp_path, monkeypatch):
    """--out missing/../hf is hf, as the shell has it: no empty missing/ left behind. A folder of files reached
    that way is refused and kept as it is, as by its own name (the OS could not look into it before)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = export(runs["char"][0] / "best.pt", os.path.join("missing", "..", "hf"))
    assert code == 0, err
    assert os.listdir(tmp_path) == ["hf"] and sorted(os.listdir(tmp_path / "hf")) == sorted(to_hf.FILES)
    assert out.startswith("wrote hf:")
    before = a_folder_of_files(tmp_path / "mine")
    code, _, err = export(runs["char"][0] / "best.pt", os.path.join("also_missing", "..", "mine"))
    assert snapshot(tmp_path / "mine") == before and sorted(os.listdir(tmp_path)) == ["hf", "mine"]
    assert refused(code, err, "--out mine is not empty"), err


def test_from_gpt2_gives_a_small_model_s_size_as_gpt_py_does(runs, tmp_path):
    _, hf, ckpt = runs["char"]
    n = sum(p.numel() for p in gpt.model_from(ckpt, torch.device("cpu")).parameters())  # tied: counted once
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert from_gpt2.main([str(hf), "--out_dir", str(tmp_path)]) == 0
    assert n < 50_000 and f"GPT-2 with {n / 1e6:.2f}M parameters" in out.getvalue(), out.getvalue()  # not 0.0M


def test_the_card_s_command_makes_the_same_run_again(tmp_path):
    """README.md's "Made by" command, run again, trains the same model: the same config and the same weights.
    A run from a preset with settings of its own (the tanh GELU, dropout, eval_iters), and a run --init_from it
    for --max_iters 0, whose config names the default preset (medium) that it never used."""
    (tmp_path / "text.txt").write_text(TEXT[:4000], encoding="utf-8")
    def train(*flags):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert gpt.main([*flags, "--device", "cpu"]) == 0
    def settings(config):  # a run's own: not where it ran, nor the size of the vocabulary its data brings
        return {k: v for k, v in config.items() if k not in ("out_dir", "device", "vocab_size")}
    train("--config", "tiny", "--data", str(tmp_path / "text.txt"), "--out_dir", str(tmp_path / "base"), "--n_layer",
          "1", "--n_embd", "16", "--block_size", "16", "--batch_size", "4", "--max_iters", "3", "--eval_iters", "2",
          "--gelu", "tanh", "--dropout", "0.1")
    train("--init_from", str(tmp_path / "base" / "best.pt"), "--data", str(tmp_path / "text.txt"), "--out_dir",
          str(tmp_path / "tuned"), "--max_iters", "0", "--learning_rate", "0.001")
    for run in ("base", "tuned"):
        before = torch.load(tmp_path / run / "best.pt", weights_only=True)
        made = re.search(r"- Made by: `python gpt.py (.*?)`", card_of(tmp_path, before))[1]
        again = [*shlex.split(made), "--out_dir", str(tmp_path / f"{run}_again"), "--device", "cpu"]
        cfg = gpt.settings(gpt.parse_args(again))[0]  # first without training (medium's would be 5000 steps)
        assert settings(vars(cfg)) == settings(before["config"]), made
        train(*again)
        after = torch.load(tmp_path / f"{run}_again" / "best.pt", weights_only=True)
        assert settings(after["config"]) == settings(before["config"]), made
        assert all(torch.equal(after["model"][k], t) for k, t in before["model"].items()), made
