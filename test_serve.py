"""test_serve.py: scripts/serve.py, its page and its APIs, on a tiny model trained once per session.

    python -m pytest test_serve.py

The API tests talk HTTP to the real server, on a free port of this machine; the OpenAI API's through the
official `openai` package, as any app that speaks it would. The browser tests drive
Debian's headless Chromium with Selenium; where chromium, chromium-driver or selenium is missing they are
skipped, and say why. Their screenshots go to a temporary folder; the README's came from
    SERVE_OUT_DIR=out_chat SERVE_SCREENSHOTS=assets python -m pytest test_serve.py -k browser
"""
import contextlib
import http.client
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

import gpt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
import chat  # noqa: E402  scripts/chat.py, which serve.py imports as a script beside it does
import prepare  # noqa: E402  scripts/prepare.py: a BPE tokenizer for a test model
try:
    import openai  # the official client: the tests that talk through it skip without it
except ImportError:
    openai = None
needs_openai = pytest.mark.skipif(openai is None, reason='no openai here: pip install -e ".[test]"')
spec = importlib.util.spec_from_file_location("serve", os.path.join(HERE, "scripts", "serve.py"))
serve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve)

CPU = torch.device("cpu")
TEMPLATE = {"system": "System: ", "user": "User: ", "assistant": "Assistant: ", "end": "<end>"}
# Shakespeare, and a few chats so that the template's characters are in the vocabulary
TEXT = open(os.path.join(HERE, "shakespeare.txt"), encoding="utf-8").read()[:20_000]
TEXT += "\n" + "User: Who art thou?\nAssistant: A tiny model.<end>\n" * 20
TINY_RUN = ["--config", "tiny", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16",
            "--batch_size", "8", "--max_iters", "30", "--eval_interval", "30", "--eval_iters", "2",
            "--device", "cpu"]


def quietly(function, *args):  # gpt.main in this process: its exit code and its stdout
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = function(*args)
    return code, out.getvalue()


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory):
    """A tiny model trained for 30 steps: enough for probabilities worth looking at."""
    folder = tmp_path_factory.mktemp("serve")
    data = folder / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    code, _ = quietly(gpt.main, [*TINY_RUN, "--data", str(data), "--out_dir", str(folder / "out")])
    assert code == 0
    return str(folder / "out")


@pytest.fixture(scope="session")
def chat_dir(out_dir, tmp_path_factory):
    """The same model with a chat template in its checkpoint, as fine-tuning on chats leaves one."""
    folder = tmp_path_factory.mktemp("serve_chat")
    ckpt = torch.load(os.path.join(out_dir, "best.pt"), weights_only=True)
    torch.save({**ckpt, "chat": TEMPLATE}, folder / "best.pt")
    return str(folder)


@pytest.fixture(scope="session")
def nan_dir(out_dir, tmp_path_factory):
    """The same model with every weight NaN (a broken checkpoint): its probabilities are NaN."""
    folder = tmp_path_factory.mktemp("serve_nan")
    ckpt = torch.load(os.path.join(out_dir, "best.pt"), weights_only=True)
    model = {name: torch.full_like(w, float("nan")) if w.is_floating_point() else w
             for name, w in ckpt["model"].items()}
    torch.save({**ckpt, "model": model}, folder / "best.pt")
    return str(folder)


@pytest.fixture(scope="session")
def bpe_chat_dir(tmp_path_factory):
    """A random 2-layer chat model with a BPE tokenizer, learned on Shakespeare and a little Korean (whose
    characters span tokens). Its weights are large: greedy sampling writes varied tokens."""
    folder = tmp_path_factory.mktemp("serve_bpe")
    korean = "동해 물과 백두산이 마르고 닳도록\n하느님이 보우하사 우리나라 만세.\n" * 20
    spec = prepare.make_tokenizer("bpe", 300, None, iter([TEXT[:5000], korean]))
    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=len(spec["tokens"]) + 1)
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(**shape, dropout=0.0))
    with torch.no_grad():
        for w in model.parameters():
            w.normal_(0.0, 0.3) if w.dim() > 1 else w.add_(0.1 * torch.randn_like(w))
    torch.save(dict(model=model.state_dict(), config={**gpt.DEFAULTS, **shape}, vocab=None, tokenizer=spec,
                    chat=TEMPLATE, iter=0, best_val_loss=float("nan")), folder / "best.pt")
    return str(folder)


@pytest.fixture(scope="session")
def long_dir(out_dir, tmp_path_factory):
    """The same model at 256 positions (its position embeddings repeated): an attention map of 256
    tokens is 300 KB of JSON, more than a socket's buffers hold when they are small."""
    folder = tmp_path_factory.mktemp("serve_long")
    ckpt = torch.load(os.path.join(out_dir, "best.pt"), weights_only=True)
    wpe = ckpt["model"]["transformer.wpe.weight"]  # (16, n_embd)
    model = {**ckpt["model"], "transformer.wpe.weight": wpe.repeat(256 // len(wpe), 1)}  # (256, n_embd)
    torch.save({**ckpt, "model": model, "config": {**ckpt["config"], "block_size": 256}}, folder / "best.pt")
    return str(folder)


@contextlib.contextmanager
def running(folder, host="127.0.0.1", **options):
    """The real server on a free port, in a thread of this process."""
    server = serve.Server(folder, host, 0, "cpu", **options)
    # polled ten times as often as by default: shutdown() returns at once
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def server(out_dir):
    with running(out_dir) as s:
        yield s


@pytest.fixture(scope="session")
def chat_server(chat_dir):
    with running(chat_dir) as s:
        yield s


@pytest.fixture(scope="session")
def nan_server(nan_dir):
    with running(nan_dir) as s:
        yield s


@pytest.fixture(scope="session")
def bpe_server(bpe_chat_dir):
    with running(bpe_chat_dir) as s:
        yield s


def client(server):
    """The official OpenAI client, pointed at the server as an app would be; no retries, so that a
    refusal is seen as it is."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="none",
                         max_retries=0, timeout=60)


def strict_json(text):
    """JSON as a browser's JSON.parse reads it: NaN and Infinity, which Python's json takes, refused."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON: the page's JSON.parse fails on it")
    return json.loads(text, parse_constant=refuse)


def request(server, path, body=None, method="POST", raw=None, headers=None):
    """One request: its status and its reply, JSON decoded, or the list of its Server-Sent Events."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, body=data, headers=headers)
    reply = connection.getresponse()
    content = reply.read().decode()
    connection.close()
    if reply.getheader("Content-Type") == "text/event-stream":
        events = [strict_json(e[6:]) for e in content.split("\n\n") if e.startswith("data: ")]
        return reply.status, events
    return reply.status, strict_json(content) if content.startswith("{") else content


request_module = request  # for tests whose own `request` is pytest's fixture


def post_head(server, length):
    """The head of a well-formed POST /generate, for a test that talks on the socket itself."""
    return (f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{server.server_address[1]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def exchange(server, data, timeout=30):
    """Bytes sent as they are, on a socket of our own; the reply read until the server closes it: its
    status and its JSON."""
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 "), reply[:200]  # a status line: not an answer as HTTP/0.9's
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), strict_json(body.decode())


def handler_threads():  # the server's threads, one a connection (named for their target)
    return {t for t in threading.enumerate() if "process_request_thread" in t.name}


def sampled(out_dir, *flags):
    """What `python gpt.py --sample` writes after its prompt (stdout: the prompt, the text, "\\n")."""
    code, out = quietly(gpt.main, ["--sample", "--out_dir", out_dir, "--device", "cpu", *flags])
    assert code == 0
    prompt = flags[flags.index("--prompt") + 1] if "--prompt" in flags else "\n"
    assert out.startswith(prompt) and out.endswith("\n")
    return out[len(prompt):-1]


def verbose_rows(out_dir, *flags):
    """The five likeliest of each step, as `python gpt.py --sample --verbose` prints them."""
    code, out = quietly(gpt.main, ["--sample", "--verbose", "--out_dir", out_dir, "--device", "cpu", *flags])
    return [line.split(" | ")[2] for line in out.splitlines()[1:] if " | " in line]


def text_of(events):
    assert events[-1] == {"done": True}
    return "".join(e["token"] for e in events[:-1])


def about(page):  # what the server wrote into the page about its model
    return strict_json(re.search(r'<script id="model" type="application/json">(.*?)</script>', page)[1])


# ------------------------------------------------------------ the page
def test_the_page_is_served_with_the_model_in_it_and_nothing_from_another_host(server):
    status, page = request(server, "/", method="GET")
    assert status == 200 and page.startswith("<!doctype html>")
    model = about(page)
    assert (model["n_layer"], model["n_head"], model["block_size"], model["chat"]) == (1, 2, 16, False)
    assert "://" not in page  # no fonts, scripts or styles from a CDN: it works offline


def test_only_a_chat_checkpoint_gets_the_chat_view(server, chat_server):
    assert [about(request(s, "/", method="GET")[1])["chat"] for s in (server, chat_server)] == [False, True]


# ------------------------------------------------------------ POST /generate
SAME_FLAGS = [
    ({"prompt": "ROMEO:", "max_new_tokens": 60, "temperature": 0.9, "top_k": 20, "seed": 3},
     ["--prompt", "ROMEO:", "--max_new_tokens", "60", "--temperature", "0.9", "--top_k", "20",
      "--seed", "3"]),
    ({"max_new_tokens": 40}, ["--max_new_tokens", "40"]),  # the defaults: "" starts a new line
    ({"prompt": "KING", "max_new_tokens": 30, "temperature": 0},  # greedy
     ["--prompt", "KING", "--max_new_tokens", "30", "--temperature", "0"]),
]


@pytest.mark.parametrize("body, flags", SAME_FLAGS)
def test_the_streamed_tokens_are_the_text_gpt_sample_writes_with_the_same_flags(server, out_dir, body, flags):
    status, events = request(server, "/generate", body)
    assert status == 200 and len(events) == body["max_new_tokens"] + 1  # an event per token, then done
    assert text_of(events) == sampled(out_dir, *flags)


def test_each_token_comes_with_its_probability_and_the_five_likeliest(server):
    events = request(server, "/generate", {"prompt": "ROMEO:", "max_new_tokens": 20, "seed": 1})[1]
    for e in events[:-1]:
        top = dict(e["top"])
        assert len(top) == 5 and list(top.values()) == sorted(top.values(), reverse=True)
        assert 0 < e["p"] <= 1 and sum(top.values()) <= 1 + 1e-6
        if e["token"] in top:
            assert top[e["token"]] == e["p"]
        else:  # drawn from outside the five: less likely than the fifth
            assert e["p"] <= min(top.values())


def test_the_five_likeliest_are_those_sample_verbose_prints(server, out_dir):
    body = {"prompt": "ROMEO:", "max_new_tokens": 8, "seed": 1, "top_k": 3}
    events = request(server, "/generate", body)[1][:-1]
    rows = verbose_rows(out_dir, "--prompt", "ROMEO:", "--max_new_tokens", "8", "--seed", "1", "--top_k", "3")
    assert rows == ["  ".join(f"{t!r} {p:.3g}" for t, p in e["top"]) for e in events]  # top_k 3: three


# ------------------------------------------------------------ POST /attention
@pytest.mark.parametrize("head", [0, 1, None])
def test_attention_rows_are_causal_and_each_sums_to_one(server, head):
    status, answer = request(server, "/attention", {"text": "ROMEO:\nWhat say", "layer": 0, "head": head})
    assert status == 200 and answer["tokens"] == list("ROMEO:\nWhat say")
    assert [len(row) for row in answer["weights"]] == list(range(1, 16))  # row i: tokens 0..i only
    for row in answer["weights"]:
        assert abs(sum(row) - 1) < 1e-4 and min(row) >= 0


def test_the_heads_average_is_the_mean_of_the_heads(server):
    rows = [request(server, "/attention", {"text": "To be, or not", "head": h})[1]["weights"]
            for h in (0, 1, None)]
    worst = max(abs((a + b) / 2 - m) for r0, r1, r2 in zip(*rows) for a, b, m in zip(r0, r1, r2))
    assert worst < 1e-5, f"max difference {worst}"


def test_attention_is_the_models_own_and_leaves_it_sampling_as_before(server, out_dir):
    before = text_of(request(server, "/generate", {"prompt": "ROMEO:", "max_new_tokens": 20})[1])
    answer = request(server, "/attention", {"text": "ROMEO:", "layer": 0, "head": 1})[1]
    ckpt = gpt.load_checkpoint(os.path.join(out_dir, "best.pt"), "")
    model = gpt.model_from(ckpt, CPU)
    model.transformer.h[0].attn.by_hand = True
    model(torch.tensor([gpt.tokenizer_of(ckpt).encode("ROMEO:")]))
    expected = model.transformer.h[0].attn.att[0, 1].tolist()  # (T, T) of head 1
    worst = max(abs(w - expected[i][j]) for i, row in enumerate(answer["weights"]) for j, w in enumerate(row))
    assert worst < 1e-5, f"max difference {worst}"
    assert not any(block.attn.by_hand for block in server.model.transformer.h)  # the fused kernel again
    after = text_of(request(server, "/generate", {"prompt": "ROMEO:", "max_new_tokens": 20})[1])
    assert after == before


def test_attention_leaves_no_layers_weights_on_the_model(bpe_server):
    # each layer's (nh, T, T) weights stayed on the model after the request: GPT-2's at 1024 positions
    # would be 600 MB, held until the next one
    blocks = bpe_server.model.transformer.h
    for layer in range(len(blocks)):
        status, answer = request(bpe_server, "/attention", {"text": "ROMEO: 동해 물과", "layer": layer})
        assert status == 200 and len(answer["weights"]) == len(answer["tokens"])
        assert not [i for i, block in enumerate(blocks) if hasattr(block.attn, "att")], layer
        assert not any(block.attn.by_hand for block in blocks)


# ------------------------------------------------------------ POST /chat
def test_a_chat_checkpoint_streams_the_reply_that_chat_reply_writes(chat_server, chat_dir):
    messages = [{"role": "user", "content": "Who art thou?"}]
    body = {"messages": messages, "seed": 5, "max_new_tokens": 30}
    status, events = request(chat_server, "/chat", body)
    assert status == 200 and "note" not in events[0] and all("token" in e for e in events[:-1])
    ckpt = gpt.load_checkpoint(os.path.join(chat_dir, "best.pt"), "")
    pieces = chat.chat_reply(gpt.model_from(ckpt, CPU), gpt.tokenizer_of(ckpt), TEMPLATE, messages, 30,
                            gpt.DEFAULTS["temperature"], None, torch.Generator().manual_seed(5))
    assert text_of(events) == "".join(pieces)


def test_a_model_never_fine_tuned_on_chats_chats_after_a_note(server):
    body = {"messages": [{"role": "user", "content": "Who art thou?"}], "max_new_tokens": 10}
    status, events = request(server, "/chat", body)
    assert status == 200 and "fine-tuned" in events[0]["note"] and events[-1] == {"done": True}


# ------------------------------------------------------------ bad requests, and a busy model
GOOD = ("/generate", {"prompt": "A", "max_new_tokens": 2})
HI, HO = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ho"}
BAD = [  # path, body (bytes as sent, or an object sent as JSON), status, words of the error
    ("/generate", b'{"prompt": ', 400, "not JSON"),
    ("/generate", b"\xff\xfe", 400, "not JSON"),
    ("/generate", b"[" * 60_000, 400, "not JSON"),  # deeper than Python's stack: RecursionError
    ("/generate", b'{"temperature": NaN}', 400, "temperature"),  # Python's json reads NaN
    ("/generate", b'{"temperature": 1' + b"0" * 400 + b"}", 400, "temperature"),  # no float so large
    ("/generate", [1, 2], 400, "JSON object"),
    ("/generate", {"prompt": "A", "tokens": 5}, 400, "unknown field 'tokens'"),
    ("/generate", {"temperature": -1}, 400, "temperature"),
    ("/generate", {"temperature": "hot"}, 400, "temperature"),
    ("/generate", {"top_k": 0}, 400, "top_k"),
    ("/generate", {"seed": -1}, 400, "seed"),
    ("/generate", {"max_new_tokens": True}, 400, "max_new_tokens"),
    ("/generate", {"max_new_tokens": serve.MAX_NEW_TOKENS + 1}, 400, f"from 1 to {serve.MAX_NEW_TOKENS}"),
    ("/generate", {"prompt": "café"}, 400, "'é'"),
    ("/generate", {"prompt": 7}, 400, "prompt must be a string"),
    ("/generate", {"prompt": "a" * (64 * 1024 + 1)}, 413, "at most 65,536"),
    ("/attention", {"text": "ROMEO", "layer": 1}, 400, "layer"),
    ("/attention", {"text": "ROMEO", "head": 2}, 400, "head"),
    ("/attention", {"text": ""}, 400, "1 to 16"),
    ("/attention", {"text": "a" * 17}, 400, "1 to 16"),
    ("/attention", {"text": "ROMEO", "heads": None}, 400, "unknown field 'heads'"),
    ("/chat", {"messages": []}, 400, "messages"),
    ("/chat", {"prompt": "Hi"}, 400, "unknown field 'prompt'"),
    ("/chat", {"messages": [{"role": "robot", "content": "Hi"}]}, 400, "unknown role"),
    ("/chat", {"messages": [{"role": "user", "content": ""}]}, 400, "non-empty"),
    ("/chat", {"messages": [HI, HO]}, 400, "ending with the user's"),
    ("/chat", {"messages": [HI, HI]}, 400, "in turn"),
    ("/chat", {"messages": [{"role": "user", "content": "Où?"}]}, 400, "messages[0]"),
    ("/nowhere", {}, 404, "POST /generate"),
]


@pytest.mark.parametrize("path, body, status, words", BAD, ids=[f"{p} {w}" for p, _, _, w in BAD])
def test_a_bad_request_gets_its_4xx_in_one_line_and_the_next_request_works(server, path, body, status, words):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, answer = request(server, path, raw=raw)
    assert got == status and set(answer) == {"error"}, answer
    assert words in answer["error"] and "\n" not in answer["error"], answer["error"]
    assert request(server, *GOOD)[0] == 200


def test_a_body_without_a_length_gets_411_and_the_server_goes_on(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    connection.putrequest("POST", "/generate")
    connection.endheaders()
    reply = connection.getresponse()
    assert reply.status == 411 and "Content-Length" in json.loads(reply.read())["error"]
    assert request(server, *GOOD)[0] == 200


def test_a_request_that_finds_the_model_busy_waits_then_gets_503(server, monkeypatch):
    monkeypatch.setattr(serve, "WAIT_S", 0.2)
    with server.lock:  # as if another request were being answered
        status, answer = request(server, *GOOD)
    assert status == 503 and "busy" in answer["error"]
    assert request(server, *GOOD)[0] == 200


def test_a_request_during_a_stream_waits_for_it_and_is_answered(server, monkeypatch):
    monkeypatch.setattr(serve, "WAIT_S", 60)
    streamed = []
    def stream():
        streamed.append(request(server, "/generate", {"max_new_tokens": 400}))
    thread = threading.Thread(target=stream)
    thread.start()
    status, answer = request(server, "/attention", {"text": "ROMEO"})
    thread.join()
    assert status == 200 and len(answer["weights"]) == 5
    assert streamed[0][0] == 200 and len(streamed[0][1]) == 401


def test_a_client_that_stops_reading_frees_the_model(server, monkeypatch):
    monkeypatch.setattr(serve, "WAIT_S", 10)
    monkeypatch.setattr(serve, "MAX_NEW_TOKENS", 10**7)  # a stream that would outlast the test
    body = json.dumps({"max_new_tokens": serve.MAX_NEW_TOKENS}).encode()
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=30) as sock:
        sock.sendall(post_head(server, len(body)) + body)
        received = b""
        while b"data: " not in received:  # the headers, then the first token
            received += sock.recv(4096)
    # as the page's Stop button does: the server stops at its next token, and the model is free
    assert request(server, *GOOD)[0] == 200


def test_a_temperature_of_1e_300_samples_the_greedy_text(server):
    body = {"prompt": "ROMEO:", "max_new_tokens": 30}
    status, events = request(server, "/generate", {**body, "temperature": 1e-300})
    assert status == 200 and events[-1] == {"done": True}  # no inf logits, no failing draw
    assert text_of(events) == text_of(request(server, "/generate", {**body, "temperature": 0})[1])


ABSURD_LENGTHS = [  # Content-Length headers, as sent, and the status each gets
    ("9" * 5000, 413),  # int() refuses 4,301 digits and more: it was a 500 and a traceback
    ("9" * 20, 413), ("-5", 400), ("abc", 400), ("0x10", 400), ("1e3", 400), ("2.0", 400),
    ("²", 400),  # "²".isdigit(), but int("²") fails
    ("2\r\nContent-Length: 3", 400),  # two that differ: which body is it?
]


@pytest.mark.parametrize("length, status", ABSURD_LENGTHS,
                         ids=[f"{length[:12]} ({len(length)})" for length, _ in ABSURD_LENGTHS])
def test_an_absurd_content_length_gets_its_4xx_in_one_line_and_the_server_goes_on(server, length, status):
    head = (f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{server.server_address[1]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
    got, answer = exchange(server, head.encode("latin-1") + b"{}")
    assert got == status and "\n" not in answer["error"], answer
    assert "Content-Length" in answer["error"] or "at most 65,536" in answer["error"], answer
    assert request(server, *GOOD)[0] == 200


REFUSED_BY_HTTP_SERVER = [  # requests http.server refuses before serve.py reads them, and their status
    pytest.param(b"GET {path} HTTP/1.1 extra\r\n\r\n", 400, id="a fourth word"),  # answered as HTTP/0.9:
    pytest.param(b"GET {path} HTTP/9.1\r\n\r\n", 505, id="HTTP 9.1"),  # with no status line
    pytest.param(b"GET {path} HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, id="101 headers"),
    pytest.param(b"GET {path} HTTP/1.1\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", 431, id="a header of 70 KB"),
    pytest.param(b"GET {path}" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, id="a path of 70 KB"),
]


@pytest.mark.parametrize("path", ["/generate", "/v1/models"])
@pytest.mark.parametrize("raw, status", REFUSED_BY_HTTP_SERVER)
def test_what_http_server_refuses_gets_a_status_line_and_its_apis_error_shape(server, path, raw, status):
    got, answer = exchange(server, raw.replace(b"{path}", path.encode()))
    assert got == status, answer
    if path.startswith("/v1"):
        assert set(answer["error"]) == {"message", "type", "param", "code"}, answer
    else:
        assert isinstance(answer["error"], str), answer


def test_a_url_urlsplit_refuses_gets_404_not_a_traceback(server, monkeypatch):
    errors = []
    monkeypatch.setattr(server, "handle_error", lambda *_: errors.append(sys.exc_info()[1]))
    port = server.server_address[1]
    head = f"GET http://[/v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    assert exchange(server, head)[0] == 404 and errors == []


@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_json_nested_about_as_deep_as_pythons_stack_gets_a_400_at_every_depth(server, path):
    # Just under the depth json.loads refuses, the body reads, but an error message that shows the
    # value back goes deeper: it was a 500 and a traceback
    for depth in range(940, 1010):
        raw = b'{"temperature": ' + b"[" * depth + b"]" * depth + b"}"
        status, answer = request(server, path, raw=raw)
        message = answer["error"]["message"] if path.startswith("/v1") else answer["error"]
        assert status == 400 and "\n" not in message, (depth, answer)
    assert request(server, *GOOD)[0] == 200


def test_a_failure_after_the_stream_started_ends_it_with_an_error_event(nan_server):
    # NaN probabilities: torch.multinomial refuses to draw, after the 200 went out
    status, events = request(nan_server, "/generate", {"max_new_tokens": 5, "temperature": 1})
    assert status == 200 and set(events[-1]) == {"error"}, events  # not a stream that just stops
    assert "probability" in events[-1]["error"] and "\n" not in events[-1]["error"]
    assert request(nan_server, "/attention", {"text": "ROMEO"})[0] == 200  # and it goes on


# ------------------------------------------------------------ no NaN in any reply
def test_a_checkpoint_whose_val_loss_is_nan_gives_a_page_whose_json_parses(out_dir, tmp_path):
    ckpt = torch.load(os.path.join(out_dir, "best.pt"), weights_only=True)
    torch.save({**ckpt, "best_val_loss": float("nan")}, tmp_path / "best.pt")  # as from_gpt2.py saves
    with running(str(tmp_path)) as gpt2_server:
        status, page = request(gpt2_server, "/", method="GET")
    assert status == 200 and about(page)["val_loss"] is None  # about() parses as JSON.parse does


def test_a_model_that_computes_nan_streams_null_not_nan(nan_server):
    # request() parses each reply as JSON.parse does: a NaN in it fails the test
    status, events = request(nan_server, "/generate", {"max_new_tokens": 3, "temperature": 0})
    assert status == 200 and events[-1] == {"done": True}
    assert all(e["p"] is None for e in events[:-1])
    status, answer = request(nan_server, "/attention", {"text": "ROMEO"})
    assert status == 200 and answer["weights"][1] == [None, None]


# ------------------------------------------------------------ only this machine's own page drives it
def status_for_host(server, host, path="/generate"):
    """A request as the browser sends it from a page served as host: its Host, and its Origin."""
    headers = {"Host": host, "Origin": f"http://{host}"}
    body = {"max_new_tokens": 2} if path == "/generate" else {"prompt": "A", "max_tokens": 2}
    return request(server, path, body, headers=headers)


REBINDING = ["attacker.example", "attacker.example:{port}", "localhost.attacker.example:{port}",
             "127.0.0.1.nip.io:{port}", "gpu-box.lan:{port}", "", "localhost:{port}:{port}", "[::1"]


def test_a_request_for_another_host_name_gets_403_page_and_apis_alike(server):
    # DNS rebinding: attacker.example, now resolved to 127.0.0.1, is the page's own origin in the browser
    port = server.server_address[1]
    for method, path in (("GET", "/"), ("POST", "/generate"), ("GET", "/v1/models"),
                         ("POST", "/v1/completions")):
        for host in REBINDING:
            host = host.format(port=port)
            status, answer = request(server, path, {"max_new_tokens": 2}, method, headers={"Host": host})
            message = answer["error"]["message"] if path.startswith("/v1") else answer["error"]
            assert status == 403 and "Host" in message and "\n" not in message, host
    assert request(server, *GOOD)[0] == 200


def test_two_host_headers_get_403(server):  # which one would the browser have sent?
    port = server.server_address[1]
    head = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: attacker.example:{port}\r\n\r\n").encode()
    status, answer = exchange(server, head)
    assert status == 403 and "Host" in answer["error"]


def test_loopback_names_are_answered_on_any_port_as_ssh_L_forwards_them(server):
    # ssh -L 9000:localhost:8000: the browser asks for localhost:9000 and its page's Origin says so too
    port = server.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LocalHost:{port}",
                 "localhost:9000", f"127.0.0.1:{port + 1}", "127.0.0.2:9000", "[::1]:9000", "localhost",
                 "app.localhost:5173", "localhost.:9000"):
        assert request(server, "/", method="GET", headers={"Host": host})[0] == 200, host
        assert status_for_host(server, host)[0] == 200, host
        assert status_for_host(server, host, "/v1/completions")[0] == 200, host


def test_a_server_opened_with_host_still_refuses_dns_names_it_was_not_given(out_dir):
    # 0.0.0.0 listens on 127.0.0.1 too: a rebound name must not reach it. IP addresses cannot be
    # rebound, and this machine's own name is its owner's
    with running(out_dir, "0.0.0.0") as open_server:
        port = open_server.server_address[1]
        for host in REBINDING:
            status, answer = status_for_host(open_server, host.format(port=port))
            assert status == 403 and "--allowed_hosts" in answer["error"], host
        for host in (f"192.168.1.20:{port}", f"10.0.0.5:{port}", "[fe80::1]:8000", f"[2001:db8::7]:{port}",
                     f"{socket.gethostname()}:{port}", f"localhost:{port}", "localhost:9000"):
            assert status_for_host(open_server, host)[0] == 200, host
            assert status_for_host(open_server, host, "/v1/completions")[0] == 200, host


def test_a_loopback_host_written_another_way_opens_nothing(out_dir, capsys, monkeypatch):
    # --host 127.1 is 127.0.0.1: it said "reachable from other machines", and took any Host
    with running(out_dir, "127.1") as s:
        assert not s.opened
        for host in ("vm", "8.8.8.8", f"{socket.gethostname()}:{s.server_address[1]}"):
            assert status_for_host(s, host)[0] == 403, host
    monkeypatch.setattr(serve.Server, "serve_forever", lambda self: None)  # it starts, and stops at once
    assert serve.main(["--out_dir", out_dir, "--host", "127.1", "--port", "0", "--device", "cpu"]) == 0
    assert "other machines" not in capsys.readouterr().out


def test_allowed_hosts_names_the_dns_names_that_may_reach_the_server(out_dir):
    names = ["gpu-box.lan", ".example.org", "HOST.DOCKER.INTERNAL:8000"]  # a port is dropped
    with running(out_dir, "0.0.0.0", allowed_hosts=names) as s:
        port = s.server_address[1]
        for host in ("gpu-box.lan", f"GPU-box.lan:{port}", "example.org:80", "a.example.org",
                     "b.a.example.org:9", "host.docker.internal:8000"):
            assert status_for_host(s, host)[0] == 200, host
        for host in ("attacker.example", "gpu-box.lan.attacker.example", "badexample.org",
                     "example.org.evil"):
            assert status_for_host(s, host)[0] == 403, host
    with running(out_dir, allowed_hosts=["gpu-box.lan"]) as loopback_only:  # loopback and the names listed
        assert status_for_host(loopback_only, "gpu-box.lan:8000")[0] == 200
        assert status_for_host(loopback_only, "192.168.1.20:8000")[0] == 403


def test_a_request_from_another_sites_page_gets_403(server):
    port = server.server_address[1]
    for origin in ("http://attacker.example", "null", f"http://127.0.0.1:{port + 1}",
                   f"https://127.0.0.1:{port}"):
        status, answer = request(server, *GOOD, headers={"Origin": origin})
        assert status == 403 and "own page" in answer["error"] and "\n" not in answer["error"], origin
    assert request(server, *GOOD)[0] == 200


def test_a_post_of_a_form_or_plain_text_gets_415(server):  # any page sends those unasked
    body = json.dumps(GOOD[1]).encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, answer = request(server, "/generate", raw=body, headers={"Content-Type": kind})
        assert status == 415 and "application/json" in answer["error"], kind
    utf8 = {"Content-Type": "application/json; charset=utf-8"}
    assert request(server, "/generate", raw=body, headers=utf8)[0] == 200


def test_a_server_opened_with_host_still_checks_origins_and_content_types(out_dir):
    with running(out_dir, "0.0.0.0") as open_server:
        host = f"192.168.1.20:{open_server.server_address[1]}"
        other_site = {"Host": host, "Origin": "http://attacker.example"}
        assert request(open_server, *GOOD, headers=other_site)[0] == 403
        plain = {"Host": host, "Content-Type": "text/plain"}
        assert request(open_server, "/generate", raw=b"{}", headers=plain)[0] == 415


# ------------------------------------------------------------ slow clients and many connections
def test_a_client_that_stops_reading_but_keeps_its_socket_lets_the_model_go(out_dir, monkeypatch):
    monkeypatch.setattr(serve, "SEND_S", 0.5)
    monkeypatch.setattr(serve, "WAIT_S", 8)
    monkeypatch.setattr(serve, "MAX_NEW_TOKENS", 10**7)  # a stream that would outlast the test
    with running(out_dir) as slow_server:
        # small buffers both ends (a slow network): the stream soon has to wait for its reader
        slow_server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        errors = []
        monkeypatch.setattr(slow_server, "handle_error", lambda *_: errors.append(sys.exc_info()[1]))
        body = json.dumps({"max_new_tokens": serve.MAX_NEW_TOKENS}).encode()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(30)
            sock.connect(("127.0.0.1", slow_server.server_address[1]))
            sock.sendall(post_head(slow_server, len(body)) + body)
            received = b""
            while b"data: " not in received:  # the headers and a first token; then it reads no more
                received += sock.recv(4096)
            status, events = request(slow_server, *GOOD)  # waits while the stream waits, SEND_S
            assert status == 200 and events[-1] == {"done": True}
        for thread in handler_threads():
            thread.join(timeout=10)
        assert errors == []  # the stream that timed out ended quietly: no traceback


def test_a_client_that_never_reads_a_large_answer_frees_the_model_and_gets_no_second_answer(
        long_dir, monkeypatch):
    # The answer went out under the model's lock, with 60 s for each write: the page got 503 for a
    # minute, then the client a 500's status line inside the 200's body
    monkeypatch.setattr(serve, "SEND_S", 1)
    monkeypatch.setattr(serve, "WAIT_S", 2)
    with running(long_dir) as s:
        s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # small buffers both ends
        errors = []
        monkeypatch.setattr(s, "handle_error", lambda *_: errors.append(sys.exc_info()[1]))
        body = json.dumps({"text": TEXT[:256]}).encode()
        head = post_head(s, len(body)).replace(b"/generate", b"/attention")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(30)
            sock.connect(("127.0.0.1", s.server_address[1]))
            sock.sendall(head + body)
            assert sock.recv(15, socket.MSG_PEEK) == b"HTTP/1.0 200 OK"  # the answer is on its way
            # and it reads no more: the model answers others all the same
            assert request(s, *GOOD)[0] == 200
            time.sleep(1.5 * serve.SEND_S)  # the server stopped waiting for it: it may not answer again
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, answer = reply.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])
        assert len(answer) < length and b"HTTP/1.0 " not in answer, answer[-300:]  # cut short, and no 500
        assert errors == []  # and quietly


def trickle(sock, connected_at, data, every, log):
    """Send data a byte at a time, as a slow-loris client does, until the server answers or closes;
    then log how long after connecting, and the whole answer."""
    for byte in data:
        try:
            sock.send(bytes([byte]))
            sock.settimeout(every)
            reply = sock.recv(4096)  # waits `every` for an answer
        except TimeoutError:
            continue
        except OSError:
            reply = b""
        cut_off = time.monotonic() - connected_at
        sock.settimeout(5)
        while reply and not reply.endswith(b"}"):  # the rest of a 408, if it was told one
            more = sock.recv(4096)
            if not more:
                break
            reply += more
        log.append((cut_off, reply))
        return
    log.append((None, b"sent it all"))


def test_clients_that_trickle_their_requests_are_cut_off_and_the_page_still_answers(out_dir, monkeypatch):
    # A byte every 0.1 s: each read is quick, the request never ends. 60 s for each read held the slots
    # for ever, and the page got 503
    monkeypatch.setattr(serve, "REQUEST_S", 1.5)
    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 4)
    with running(out_dir) as s:
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{s.server_address[1]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        address, log, threads = ("127.0.0.1", s.server_address[1]), [], []
        socks = []
        for _ in range(8):  # twice the cap
            socks.append((socket.create_connection(address, timeout=10), time.monotonic()))
        try:
            for sock, connected_at in socks:
                threads.append(threading.Thread(target=trickle, args=(sock, connected_at, head, 0.1, log)))
                threads[-1].start()
            for _ in range(3):  # while they trickle, the page and its API answer at once
                assert request(s, "/", method="GET")[0] == 200
                assert request(s, *GOOD)[0] == 200
            for thread in threads:
                thread.join(timeout=30)
        finally:
            for sock, _ in socks:
                sock.close()
        # every trickler was cut off: by the deadline, or sooner when a new connection needed its place;
        # told why with a 408 (with its status line even if its request line was cut short), or closed
        # without a word if it had sent nothing
        assert len(log) == 8 and all(when is not None and when < 1.5 + 2 for when, _ in log), log
        assert all(reply == b"" or reply.startswith(b"HTTP/1.0 408") for _, reply in log), log


def test_a_slow_client_alone_is_cut_off_at_the_deadline_with_408(out_dir, monkeypatch):
    monkeypatch.setattr(serve, "REQUEST_S", 1)
    with running(out_dir) as s:
        with socket.create_connection(("127.0.0.1", s.server_address[1]), timeout=10) as sock:
            start = time.monotonic()
            sock.sendall(post_head(s, 100) + b'{"prompt": ')  # then nothing: 89 bytes never come
            reply = b""
            while not reply.endswith(b"}"):
                reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.0 408") and b"did not all come in 1 s" in reply
        assert time.monotonic() - start < 1 + 2
        assert request(s, *GOOD)[0] == 200


def test_connections_past_the_cap_get_503_at_once_and_the_server_goes_on(out_dir, monkeypatch):
    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(serve, "WAIT_S", 10)
    with running(out_dir) as capped:
        answers = []
        def wait_for_the_model():
            answers.append(request(capped, *GOOD))
        waiting = [threading.Thread(target=wait_for_the_model) for _ in range(3)]
        with capped.lock:  # as if a stream held the model: three requests wait for it, each a connection
            for thread in waiting:
                thread.start()
            while len(handler_threads()) < 3 or capped.reading:  # all three read, and waiting
                time.sleep(0.01)
            for _ in range(3):  # no connection is still sending its request: none can give way
                status, answer = request(capped, *GOOD)
                assert status == 503 and "too many connections" in answer["error"]
                status, answer = request(capped, "/v1/models", method="GET")  # in the OpenAI API's shape
                assert status == 503 and "too many connections" in answer["error"]["message"]
        for thread in waiting:
            thread.join(timeout=30)
        assert [status for status, _ in answers] == [200] * 3
        for thread in handler_threads():  # the three threads end
            thread.join(timeout=10)
        assert request(capped, *GOOD)[0] == 200


# ------------------------------------------------------------ the OpenAI API, through the official client
USER = {"role": "user", "content": "Who art thou?"}


def chat_py(folder, lines, max_new_tokens, monkeypatch):
    """What `scripts/chat.py --temperature 0` prints when these lines are typed: each reply, a newline."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code, out = quietly(chat.main, ["--out_dir", folder, "--device", "cpu", "--temperature", "0",
                                    "--max_new_tokens", str(max_new_tokens)])
    assert code == 0
    return out


def streamed(chunks):
    """A stream's chunks: the text they carry joined, the finish_reason, and the usage if sent."""
    texts, finish, used = [], None, None
    for chunk in chunks:
        if chunk.usage is not None:
            used = chunk.usage
        for choice in chunk.choices:
            texts.append(choice.delta.content or "" if hasattr(choice, "delta") else choice.text)
            finish = choice.finish_reason or finish
    return "".join(texts), finish, used


@needs_openai
def test_the_models_list_holds_the_served_checkpoint_named_for_its_folder(chat_server, chat_dir):
    api = client(chat_server)
    name = os.path.basename(chat_dir)
    assert [m.id for m in api.models.list()] == [name]
    assert api.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("gpt-4o")


@needs_openai
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_chat_at_temperature_0_is_the_reply_chat_py_writes_streamed_or_not(kind, request, monkeypatch):
    # two turns: the second answers a conversation that holds the first reply
    folder = request.getfixturevalue("chat_dir" if kind == "char" else "bpe_chat_dir")
    server = request.getfixturevalue("chat_server" if kind == "char" else "bpe_server")
    questions = ["Who art thou?", "Where is 동해?" if kind == "bpe" else "Where?"]
    api, messages, replies = client(server), [], []
    for question in questions:
        messages.append({"role": "user", "content": question})
        answer = api.chat.completions.create(model="any", messages=messages, temperature=0, max_tokens=24)
        reply = answer.choices[0].message.content
        chunks = api.chat.completions.create(model="any", messages=messages, temperature=0, max_tokens=24,
                                             stream=True, stream_options={"include_usage": True})
        assert streamed(chunks) == (reply, answer.choices[0].finish_reason, answer.usage)
        assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
        assert answer.model == os.path.basename(folder) and answer.choices[0].message.role == "assistant"
        ckpt = gpt.load_checkpoint(os.path.join(folder, "best.pt"), "")
        prompt = chat.prompt_ids(gpt.tokenizer_of(ckpt), TEMPLATE, messages, ckpt["config"]["block_size"])
        assert answer.usage.prompt_tokens == len(prompt)
        assert answer.usage.total_tokens == len(prompt) + answer.usage.completion_tokens
        if answer.choices[0].finish_reason == "length":
            assert answer.usage.completion_tokens == 24
        messages.append({"role": "assistant", "content": reply})
        replies.append(reply)
    assert chat_py(folder, questions, 24, monkeypatch) == "".join(reply + "\n" for reply in replies)


@needs_openai
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_completion_at_temperature_0_is_the_text_gpt_sample_writes_streamed_or_not(kind, request):
    folder = request.getfixturevalue("out_dir" if kind == "char" else "bpe_chat_dir")
    server = request.getfixturevalue("server" if kind == "char" else "bpe_server")
    api, prompt = client(server), "ROMEO:"
    answer = api.completions.create(model="any", prompt=prompt, temperature=0, max_tokens=30)
    expected = sampled(folder, "--prompt", prompt, "--temperature", "0", "--max_new_tokens", "30")
    assert answer.choices[0].text == expected and answer.choices[0].finish_reason == "length"
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert answer.usage.completion_tokens == 30
    assert answer.usage.prompt_tokens == len(gpt.tokenizer_of(server.ckpt).encode(prompt))
    chunks = api.completions.create(model="any", prompt=prompt, temperature=0, max_tokens=30, stream=True)
    assert streamed(chunks)[:2] == (expected, "length")


@needs_openai
def test_a_seeded_completion_is_the_text_generate_writes_with_that_seed_and_no_seed_draws_anew(server):
    api = client(server)
    flags = {"prompt": "ROMEO:", "max_new_tokens": 60, "temperature": 0.9, "top_k": 20, "seed": 3}
    answer = api.completions.create(model="any", prompt="ROMEO:", max_tokens=60, temperature=0.9, seed=3,
                                    extra_body={"top_k": 20})  # top_k: an extension, as vLLM's
    assert answer.choices[0].text == text_of(request(server, "/generate", flags)[1])
    unseeded = {api.completions.create(model="any", prompt="ROMEO:", max_tokens=60, temperature=1)
                .choices[0].text for _ in range(2)}
    assert len(unseeded) == 2  # as OpenAI's: a chat app's Regenerate gives a new answer


@needs_openai
def test_a_seeded_chat_is_the_reply_the_pages_chat_writes_with_that_seed(bpe_server):
    flags = {"max_new_tokens": 30, "temperature": 1.0, "top_k": 50, "seed": 5}
    events = request(bpe_server, "/chat", {"messages": [USER], **flags})[1]
    answer = client(bpe_server).chat.completions.create(model="any", messages=[USER], max_tokens=30,
                                                        temperature=1, seed=5, extra_body={"top_k": 50})
    assert answer.choices[0].message.content == text_of(events)


@needs_openai
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_stop_string_ends_the_text_just_before_it_and_no_chunk_shows_any_of_it(kind, request):
    # A char model's stop string spans tokens; a BPE model's may also end inside one. The text is
    # the seeded /generate text up to the stop string; streamed, no piece of it is sent and taken back
    server = request.getfixturevalue("server" if kind == "char" else "bpe_server")
    api, flags = client(server), {"prompt": "ROMEO:", "max_new_tokens": 40, "temperature": 1, "seed": 7}
    events = request_module(server, "/generate", flags)[1][:-1]
    full = text_of(events + [{"done": True}])
    tokens = [e["token"] for e in events]
    # the end of one token and the start of the next; a BPE token of 2 characters or more, so that it
    # ends inside it
    shortest = 2 if kind == "bpe" else 1
    i = next(i for i in range(5, len(tokens)) if tokens[i - 1] and len(tokens[i]) >= shortest)
    stop = tokens[i - 1][-1] + tokens[i][0]
    for stops in (stop, [stop, "never written \u2603"]):
        expected = full[:full.index(stop)]
        answer = api.completions.create(model="any", prompt="ROMEO:", max_tokens=40, temperature=1, seed=7,
                                        stop=stops)
        assert (answer.choices[0].text, answer.choices[0].finish_reason) == (expected, "stop")
        chunks = api.completions.create(model="any", prompt="ROMEO:", max_tokens=40, temperature=1, seed=7,
                                        stop=stops, stream=True)
        assert streamed(chunks)[:2] == (expected, "stop")
    never = api.completions.create(model="any", prompt="ROMEO:", max_tokens=40, temperature=1, seed=7,
                                   stop="never written \u2603")
    assert (never.choices[0].text, never.choices[0].finish_reason) == (full, "length")


@needs_openai
def test_a_model_never_fine_tuned_on_chats_gets_a_400_that_points_to_completions(server):
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).chat.completions.create(model="any", messages=[USER])
    assert "/v1/completions" in refused.value.message and refused.value.code == "model_not_chat"


BAD_API = [  # the client's arguments, and the field the 400 names
    (dict(temperature=5), "temperature"), (dict(temperature=-1), "temperature"),
    (dict(temperature="hot"), "temperature"), (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=10**6), "max_tokens"), (dict(max_completion_tokens=True), "max_completion_tokens"),
    (dict(max_tokens=5, max_completion_tokens=6), "max_tokens"),
    (dict(seed="x"), "seed"), (dict(seed=2**64), "seed"), (dict(n=2), "n"), (dict(top_p=0.5), "top_p"),
    (dict(stop=["a"] * 5), "stop"), (dict(stop=""), "stop"), (dict(stop=7), "stop"),
    (dict(stream="yes"), "stream"),
    (dict(logprobs=True), "logprobs"), (dict(frequency_penalty=0.5), "frequency_penalty"),
    (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    (dict(extra_body={"temprature": 0}), "temprature"), (dict(extra_body={"top_k": 0}), "top_k"),
    (dict(messages=[]), "messages"), (dict(messages=[{"role": "tool", "content": "4"}]), "messages"),
    (dict(messages=[USER, {"role": "assistant", "content": "Ho"}]), "messages"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages"),
    (dict(messages=[{"role": "user", "content": "Où?"}]), "messages"),  # a character the model never saw
    (dict(messages=[{"role": "user", "content": 7}]), "messages"),
    *[(dict(messages=[{"role": "user", "content": content}]), "messages")  # each was taken as ""
      for content in (0, False, {}, [], None)],
    (dict(messages=[{"role": "user"}]), "messages"), (dict(messages=[{"role": "system"}, USER]), "messages"),
    (dict(messages=[{**USER, "name": 5}]), "messages"), (dict(stream_options=0), "stream_options"),
    (dict(stream_options={"include_usage": True}), "stream_options"),  # with stream false, as OpenAI
    (dict(stream_options={"foo": 1}, stream=True), "stream_options"),
    (dict(stream_options={"include_usage": 1}, stream=True), "stream_options"),
]


@needs_openai
@pytest.mark.parametrize("arguments, param", BAD_API,
                         ids=[f"{param} {list(arguments.values())[0]!r:.30}" for arguments, param in BAD_API])
def test_a_bad_request_raises_bad_request_error_naming_the_field(chat_server, arguments, param):
    api = client(chat_server)
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(**{"model": "any", "messages": [USER], **arguments})
    error = refused.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and "\n" not in error["message"], error
    assert api.chat.completions.create(model="any", messages=[USER], max_tokens=2).choices[0].message.content


@needs_openai
def test_what_apps_send_at_values_that_change_nothing_is_taken(chat_server):
    # Open WebUI, LibreChat, LangChain and the openai client send these unasked
    api = client(chat_server)
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "system", "content": "Speak."},
                {"role": "user", "name": "ann",
                 "content": [{"type": "text", "text": "Who art "}, {"type": "text", "text": "thou?"}]},
                {"role": "assistant", "content": "A tiny model.", "tool_calls": None, "refusal": None},
                {"role": "user", "content": "And?"}]
    answer = api.chat.completions.create(
        model="gpt-4o", messages=messages, max_tokens=5, temperature=0, n=1, top_p=1, frequency_penalty=0,
        presence_penalty=0, logprobs=False, user="ann", metadata={"app": "test"}, store=False, seed=1,
        parallel_tool_calls=False, stream=False, stream_options=None, response_format={"type": "text"},
        extra_body={"top_k": 5})
    turns = [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Speak."},
             {"role": "user", "content": "Who art thou?"}, *messages[3:]]
    turns = [{"role": m["role"], "content": m["content"]} for m in turns]
    plain = api.chat.completions.create(model="any", messages=turns, max_tokens=5, temperature=0)
    assert answer.choices[0].message.content == plain.choices[0].message.content  # the same conversation
    # an assistant turn that only called tools has no content; obfuscation pads HTTPS, and this is HTTP
    messages = [USER, {"role": "assistant", "content": None}, USER]
    options = {"include_usage": True, "include_obfuscation": False}
    chunks = api.chat.completions.create(model="any", messages=messages, max_tokens=5, stream=True,
                                         stream_options=options)
    assert list(chunks)[-1].usage.completion_tokens == 5


@needs_openai
def test_with_api_key_every_request_but_the_page_needs_it(chat_dir):
    with running(chat_dir, api_key="sesame") as locked:
        port = locked.server_address[1]
        wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="open", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.chat.completions.create(model="any", messages=[USER], max_tokens=2)
        assert refused.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        for headers in ({}, {"Authorization": "sesame"}, {"Authorization": "Bearer sesame2"}):
            status, answer = request(locked, "/v1/models", method="GET", headers=headers)
            assert status == 401 and answer["error"]["code"] == "invalid_api_key", headers
        right = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sesame", max_retries=0)
        assert right.chat.completions.create(model="any", messages=[USER], max_tokens=2).choices
        # the page's own endpoints too, or the key would guard nothing; the page itself asks for it
        assert request(locked, "/", method="GET")[0] == 200
        status, answer = request(locked, *GOOD)
        assert status == 401 and "--api_key" in answer["error"]
        assert request(locked, *GOOD, headers={"Authorization": "Bearer sesame"})[0] == 200


@needs_openai
def test_the_pages_safety_holds_for_the_openai_api(chat_server):
    port, body = chat_server.server_address[1], {"messages": [USER], "max_tokens": 2}
    for headers, status in (({"Origin": "http://attacker.example"}, 403), ({"Host": "attacker.example"}, 403),
                            ({"Content-Type": "text/plain"}, 415),
                            ({"Content-Type": "application/x-www-form-urlencoded"}, 415)):
        got, answer = request(chat_server, "/v1/chat/completions", body, headers=headers)
        assert got == status and set(answer["error"]) == {"message", "type", "param", "code"}, headers
    for path, method, status in (("/v1/chat/completion", "POST", 404), ("/v1/v1/models", "GET", 404),
                                 ("/v1/models", "DELETE", 405)):
        got, answer = request(chat_server, path, body, method=method)
        assert got == status and "message" in answer["error"], path
    with pytest.raises(openai.PermissionDeniedError):  # an app sends no Origin; a web page does
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                      default_headers={"Origin": "http://attacker.example"}).models.list()
    assert request(chat_server, "/v1/chat/completions", body)[0] == 200


@needs_openai
def test_a_stream_the_client_stops_reading_frees_the_model(server):
    api = client(server)
    chunks = api.completions.create(model="any", prompt="ROMEO:", max_tokens=2000, temperature=1, stream=True)
    for _, _ in zip(range(3), chunks):
        pass
    chunks.close()  # as an app's Stop button does
    start = time.monotonic()
    assert api.completions.create(model="any", prompt="A", max_tokens=2).choices[0].text
    assert time.monotonic() - start < serve.SEND_S  # it did not wait for the 2000 tokens


@needs_openai
def test_an_answer_whose_client_gave_up_waiting_for_it_is_stopped(out_dir, monkeypatch):
    # An app's timeout, then its retry: each try was written to the end for no one, and the page got 503
    monkeypatch.setattr(serve, "MAX_NEW_TOKENS", 10**7)  # an answer that would outlast the test
    monkeypatch.setattr(serve, "WAIT_S", 2)
    with running(out_dir) as s:
        impatient = openai.OpenAI(base_url=f"http://127.0.0.1:{s.server_address[1]}/v1", api_key="none",
                                  max_retries=1, timeout=1)
        with pytest.raises(openai.APITimeoutError):
            impatient.completions.create(model="any", prompt="ROMEO:", max_tokens=serve.MAX_NEW_TOKENS)
        assert request(s, *GOOD)[0] == 200  # the model stopped when the client left


def test_a_request_whose_client_left_while_it_waited_for_the_model_is_not_run(out_dir, monkeypatch):
    monkeypatch.setattr(serve, "MAX_NEW_TOKENS", 10**7)
    started = []  # the answers the model began to write
    def reply_text(*args, **kwargs):
        started.append(1)
        return chat.reply_text(*args, **kwargs)
    monkeypatch.setattr(serve, "reply_text", reply_text)
    with running(out_dir) as s:
        body = json.dumps({"prompt": "A", "max_tokens": serve.MAX_NEW_TOKENS}).encode()
        head = post_head(s, len(body)).replace(b"/generate", b"/v1/completions")
        with s.lock:  # as if another request were being answered
            with socket.create_connection(("127.0.0.1", s.server_address[1]), timeout=30) as sock:
                sock.sendall(head + body)
                while len(handler_threads()) < 1 or s.reading:  # it is read, and waits for the model
                    time.sleep(0.01)
            # and its client gives up
        for thread in handler_threads():
            thread.join(timeout=10)
        assert started == [] and request(s, *GOOD)[0] == 200


@needs_openai
def test_a_failure_after_the_stream_started_raises_in_the_client(nan_server):
    api = client(nan_server)
    with pytest.raises(openai.APIError) as failed:  # NaN probabilities: the draw fails after the 200
        streamed(api.completions.create(model="any", prompt="A", max_tokens=5, temperature=1, stream=True))
    assert "probability" in failed.value.message
    with pytest.raises(openai.InternalServerError):
        api.completions.create(model="any", prompt="A", max_tokens=5, temperature=1)
    assert api.completions.create(model="any", prompt="A", max_tokens=5, temperature=0).choices[0].text


@needs_openai
def test_requests_sent_together_wait_their_turn_and_are_all_answered(server):
    # an app sends a title, tags and the reply at once: they queue for the model, longer than the page's
    api, answers = client(server), []
    def ask(seed):
        answer = api.completions.create(model="any", prompt="A", max_tokens=200, seed=seed)
        answers.append(answer.choices[0].text)
    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4 and all(len(answer) == 200 for answer in answers)


# ------------------------------------------------------------ IPv6
def ipv6_missing():
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError as e:
        return f"this machine has no IPv6 loopback: {e}"
    return ""


@pytest.mark.skipif(bool(ipv6_missing()), reason=ipv6_missing() or "-")
def test_host_ipv6_loopback_serves_over_ipv6_and_answers_only_its_own_names(out_dir):
    for host in ("::1", "[::1]"):  # as a URL writes it, too
        with running(out_dir, host) as v6:
            port = v6.server_address[1]
            connection = http.client.HTTPConnection("::1", port, timeout=30)  # Host: [::1]:port
            connection.request("POST", "/v1/completions", body=json.dumps({"max_tokens": 3}),
                               headers={"Content-Type": "application/json"})
            reply = connection.getresponse()
            assert reply.status == 200 and json.loads(reply.read())["usage"]["completion_tokens"] == 3
            connection = http.client.HTTPConnection("::1", port, timeout=30)
            connection.request("GET", "/", headers={"Host": f"attacker.example:{port}"})
            assert connection.getresponse().status == 403  # ::1 is this machine only: no name is opened


def test_a_host_this_machine_cannot_serve_on_is_refused_in_one_line(out_dir, capsys, monkeypatch):
    monkeypatch.setattr(serve.socket, "AF_INET6", -1)  # as on a machine without IPv6
    assert serve.main(["--out_dir", out_dir, "--host", "::1", "--port", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot serve on http://[::1]:0/: ") and err.count("\n") == 1, err
    assert serve.main(["--out_dir", out_dir, "--host", "192.0.2.1", "--port", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err  # an address of no interface here (TEST-NET-1)
    assert err.startswith("error: cannot serve on http://192.0.2.1:0/: ") and err.count("\n") == 1, err


# ------------------------------------------------------------ the command line
@needs_openai
def test_serve_prints_its_addresses_and_says_when_other_machines_can_reach_it(out_dir):
    command = [sys.executable, os.path.join(HERE, "scripts", "serve.py"), "--out_dir", out_dir,
               "--host", "0.0.0.0", "--port", "0", "--device", "cpu", "--allowed_hosts", "gpu-box.lan",
               "--api_key", "sesame", "--model_name", "tiny-bard"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(re.search(r"at http://0\.0\.0\.0:(\d+)/$", process.stdout.readline())[1])
        assert "v1 (model 'tiny-bard', API key required)" in process.stdout.readline()
        assert "reachable from other machines" in process.stdout.readline()
        def api(host, key="sesame"):  # as if host's DNS answer were this machine
            return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0,
                                 default_headers={"Host": f"{host}:{port}"})
        assert [m.id for m in api("gpu-box.lan").models.list()] == ["tiny-bard"]
        with pytest.raises(openai.PermissionDeniedError):
            api("attacker.example").models.list()
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="open", max_retries=0).models.list()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_an_api_key_no_client_could_send_is_refused_in_one_line(out_dir, capsys, monkeypatch):
    # HTTP headers are Latin-1: a server started with "clé" could never be used
    monkeypatch.setattr(serve.Server, "serve_forever", lambda self: None)  # one that starts, stops at once
    for key in ("clé", "open sesame", "tab\tbed", "🔑"):
        assert serve.main(["--out_dir", out_dir, "--port", "0", "--device", "cpu", "--api_key", key]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: --api_key") and err.count("\n") == 1 and key not in err, err
    monkeypatch.setenv("SERVE_API_KEY", "clé")
    assert serve.main(["--out_dir", out_dir, "--port", "0", "--device", "cpu"]) == 1
    assert "printable ASCII" in capsys.readouterr().err


def test_serve_on_a_folder_without_a_checkpoint_says_how_to_train_one(tmp_path, capsys):
    assert serve.main(["--out_dir", str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint at" in err and "python gpt.py --config tiny" in err and "Traceback" not in err


# ------------------------------------------------------------ the page in a browser
def browser_missing():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "no chromium and chromedriver here: apt-get install chromium chromium-driver"
    if importlib.util.find_spec("selenium") is None:
        return 'no selenium here: pip install -e ".[serve]"'
    return ""


needs_browser = pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "-")


def chromium():
    """Debian's headless Chromium, driven by its own chromedriver (not a download)."""
    from selenium import webdriver
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,900"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))


@pytest.fixture(scope="module")
def page(chat_dir, tmp_path_factory):
    """Headless Chromium on the page of a chat model (SERVE_OUT_DIR's, if set), and where to put pictures."""
    folder = os.environ.get("SERVE_OUT_DIR", chat_dir)
    with running(folder) as server:
        driver = chromium()
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        driver.out_dir = folder
        driver.shots = os.environ.get("SERVE_SCREENSHOTS") or str(tmp_path_factory.mktemp("screenshots"))
        try:
            yield driver
        finally:
            driver.quit()


def wait_until(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, 60).until(condition)


def type_into(driver, element_id, text):
    from selenium.webdriver.common.by import By
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(text)


def point_at(driver, element):
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(driver).move_to_element(element).perform()


@needs_browser
def test_browser_streams_the_text_and_shows_a_tokens_five_candidates_as_verbose_does(page):
    from selenium.webdriver.common.by import By
    type_into(page, "prompt", "ROMEO:")
    type_into(page, "max_new_tokens", "160")
    page.find_element(By.ID, "generate").click()
    wait_until(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#output .tok")) == 160
               and d.find_element(By.ID, "generate").is_enabled())
    assert "first after" in page.find_element(By.ID, "sample-status").text
    point_at(page, page.find_elements(By.CSS_SELECTOR, "#output .tok")[23])
    card = page.find_element(By.ID, "card")
    wait_until(page, lambda d: card.is_displayed())
    rows = card.find_elements(By.CSS_SELECTOR, "tr")
    cells = [" ".join(td.text for td in row.find_elements(By.CSS_SELECTOR, "td") if td.text) for row in rows]
    verbose = verbose_rows(page.out_dir, "--prompt", "ROMEO:", "--max_new_tokens", "160")
    assert len(rows) == 5 and "step 24" in card.text and "  ".join(cells) == verbose[23]
    page.save_screenshot(os.path.join(page.shots, "serve_sample.png"))


@needs_browser
def test_browser_lights_up_the_tokens_a_token_attended_to(page):
    from selenium.webdriver.common.by import By
    page.find_element(By.CSS_SELECTOR, '[data-view="attention"]').click()
    last = about(page.page_source)["n_layer"] - 1  # the last layer: the most to see
    page.find_element(By.ID, "layer").send_keys(f"layer {last}")
    page.find_element(By.ID, "attend").click()
    wait_until(page, lambda d: f"layer {last}, the average" in d.find_element(By.ID, "attn-status").text)
    tokens = page.find_elements(By.CSS_SELECTOR, "#attn-text .tok")
    query = tokens[len(tokens) * 2 // 3]
    point_at(page, query)
    wait_until(page, lambda d: "query" in query.get_attribute("class"))
    assert "later" in tokens[-1].get_attribute("class") and "later" not in tokens[0].get_attribute("class")
    assert "looks most at" in page.find_element(By.ID, "attn-top").text
    page.save_screenshot(os.path.join(page.shots, "serve_attention.png"))


@needs_browser
def test_browser_chats_in_bubbles_with_streamed_replies(page):
    from selenium.webdriver.common.by import By
    page.find_element(By.CSS_SELECTOR, '[data-view="chat"]').click()
    for question in ("Spell apple backwards.", "Reverse the word house."):  # letters: any char model reads them
        type_into(page, "chat-input", question)
        page.find_element(By.ID, "send").click()
        wait_until(page, lambda d: not d.find_elements(By.CSS_SELECTOR, ".bubble.streaming"))
    assert page.find_element(By.ID, "chat-status").text == ""
    assert len(page.find_elements(By.CSS_SELECTOR, ".bubble.user")) == 2
    assert len(page.find_elements(By.CSS_SELECTOR, ".bubble.assistant")) == 2
    page.save_screenshot(os.path.join(page.shots, "serve_chat.png"))


@needs_browser
def test_browser_page_fits_a_phone(page):
    from selenium.webdriver.common.by import By
    page.set_window_size(390, 844)
    for view in ("sample", "attention", "chat"):
        page.find_element(By.CSS_SELECTOR, f'[data-view="{view}"]').click()
        assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), view


@needs_browser
def test_browser_asks_once_for_the_key_of_a_server_started_with_api_key(out_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import alert_is_present
    with running(out_dir, api_key="sesame") as locked:
        driver = chromium()
        try:
            driver.get(f"http://127.0.0.1:{locked.server_address[1]}/")  # the page itself needs no key
            type_into(driver, "max_new_tokens", "20")
            driver.find_element(By.ID, "generate").click()
            asked = wait_until(driver, alert_is_present())  # the 401 makes it ask
            asked.send_keys("sesame")
            asked.accept()
            wait_until(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#output .tok")) == 20
                       and d.find_element(By.ID, "generate").is_enabled())
            driver.find_element(By.CSS_SELECTOR, '[data-view="attention"]').click()
            driver.find_element(By.ID, "attend").click()  # the tab kept the key: no second question
            wait_until(driver, lambda d: "the average" in d.find_element(By.ID, "attn-status").text)
        finally:
            driver.quit()
