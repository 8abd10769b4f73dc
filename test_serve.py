"""test_serve.py: scripts/serve.py, its page and its API, on a tiny model trained once per session.

    python -m pytest test_serve.py

The API tests talk HTTP to the real server, on a free port of this machine. The browser tests drive
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

import pytest
import torch

import gpt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
import chat  # noqa: E402  scripts/chat.py, which serve.py imports as a script beside it does
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


@contextlib.contextmanager
def running(folder, host="127.0.0.1"):
    """The real server on a free port, in a thread of this process."""
    server = serve.Server(folder, host, 0, "cpu")
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


def post_head(server, length):
    """The head of a well-formed POST /generate, for a test that talks on the socket itself."""
    return (f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{server.server_address[1]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


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


def test_a_content_length_in_digits_int_cannot_read_gets_411(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    connection.putrequest("POST", "/generate")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", "²".encode("latin-1"))  # "²".isdigit(), but int("²") fails
    connection.endheaders(b"{}")
    reply = connection.getresponse()
    assert reply.status == 411 and "Content-Length" in strict_json(reply.read())["error"]
    assert request(server, *GOOD)[0] == 200


def test_json_nested_about_as_deep_as_pythons_stack_is_answered_at_every_depth(server):
    # Just under the depth json.loads refuses, the body reads, but an error message that shows the
    # value back goes deeper: whatever fails, the client gets a status and one line, never silence
    for depth in range(940, 1010):
        raw = b'{"temperature": ' + b"[" * depth + b"]" * depth + b"}"
        status, answer = request(server, "/generate", raw=raw)
        assert status in (400, 500) and set(answer) == {"error"} and "\n" not in answer["error"], depth
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
def test_a_request_for_another_host_name_gets_403_page_and_api_alike(server):
    # DNS rebinding: attacker.example, now resolved to 127.0.0.1, is the page's own origin in the browser
    port = server.server_address[1]
    for method, path in (("GET", "/"), ("POST", "/generate")):
        for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1:{port + 1}", ""):
            status, answer = request(server, path, {"max_new_tokens": 2}, method, headers={"Host": host})
            assert status == 403 and "Host" in answer["error"] and "\n" not in answer["error"], host
    assert request(server, *GOOD)[0] == 200


def test_this_machines_names_for_the_server_are_answered(server):
    port = server.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LocalHost:{port}"):
        assert request(server, "/", method="GET", headers={"Host": host})[0] == 200, host
        own_page = {"Host": host, "Origin": f"http://{host}"}  # what a browser sends from the page
        assert request(server, *GOOD, headers=own_page)[0] == 200, host


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


def test_a_server_opened_with_host_answers_any_name_but_not_other_sites(out_dir):
    with running(out_dir, "0.0.0.0") as open_server:  # its names are others': gpu-box.lan, an address
        host = f"gpu-box.lan:{open_server.server_address[1]}"
        assert request(open_server, "/", method="GET", headers={"Host": host})[0] == 200
        own_page = {"Host": host, "Origin": f"http://{host}"}
        assert request(open_server, *GOOD, headers=own_page)[0] == 200
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


def test_connections_past_the_cap_get_503_at_once_and_the_server_goes_on(out_dir, monkeypatch):
    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 3)
    with running(out_dir) as capped:
        address = ("127.0.0.1", capped.server_address[1])
        idle = [socket.create_connection(address, timeout=10) for _ in range(4)]  # they say nothing
        try:
            assert idle[3].recv(4096).startswith(b"HTTP/1.0 503")  # the fourth: told at once
            for _ in range(3):  # a request, sent as the server refuses it, still reads its 503
                status, answer = request(capped, *GOOD)
                assert status == 503 and "too many connections" in answer["error"]
        finally:
            for sock in idle:
                sock.close()
        for thread in handler_threads():  # the three threads see their sockets close, and end
            thread.join(timeout=10)
        assert request(capped, *GOOD)[0] == 200


# ------------------------------------------------------------ the command line
def test_serve_prints_its_address_and_says_when_other_machines_can_reach_it(out_dir):
    command = [sys.executable, os.path.join(HERE, "scripts", "serve.py"), "--out_dir", out_dir,
               "--host", "0.0.0.0", "--port", "0", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(re.search(r"at http://0\.0\.0\.0:(\d+)/$", process.stdout.readline())[1])
        assert "reachable from other machines" in process.stdout.readline()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


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


@pytest.fixture(scope="module")
def page(chat_dir, tmp_path_factory):
    """Headless Chromium on the page of a chat model (SERVE_OUT_DIR's, if set), and where to put pictures."""
    from selenium import webdriver
    folder = os.environ.get("SERVE_OUT_DIR", chat_dir)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,900"):
        options.add_argument(flag)
    with running(folder) as server:
        driver_path = webdriver.ChromeService(shutil.which("chromedriver"))  # Debian's, not a download
        driver = webdriver.Chrome(options=options, service=driver_path)
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
