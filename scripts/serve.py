"""
serve.py: watch the model think, in a browser: one page on this machine for the model in --out_dir.

    python scripts/serve.py                      # out/best.pt, at http://127.0.0.1:8000/
    python scripts/serve.py --out_dir out_chat   # a model fine-tuned on chats adds the chat view
    python scripts/serve.py --host 0.0.0.0       # reachable from other machines too (it says so)

The page (scripts/serve.html: one file, nothing from the network) samples as `python gpt.py --sample`
does, through gpt.py's own generate, and shows for each token the five the model found likeliest; it
shows which earlier tokens each token attended to, from the model's own attention, computed by hand;
for a chat model it chats. Under it lies a small HTTP API, for scripts too:

    GET  /           the page
    POST /generate   {"prompt", "max_new_tokens", "temperature", "top_k", "seed"}, each optional:
                     Server-Sent Events, one per token, data: {"token", "p", "top": [[token, p], ...]},
                     then data: {"done": true}
    POST /attention  {"text", "layer", "head"} (head null: the heads' average) -> {"tokens", "weights"}
    POST /chat       {"messages": [{"role", "content"}, ...]}, and the sampling fields: events as above
    A bad request gets a 4xx status and {"error": "one line"}; the server goes on serving. A stream
    that fails once started ends with data: {"error": "one line"}. NaN and Infinity go as null.

Only this machine's own page may drive the model, though any web site the user visits can make the
browser send requests to 127.0.0.1. Refused with 403: a Host that is not this machine's name for
the server (DNS rebinding: another site's page, reading what the model writes), and an Origin that
is not the server's own page; with 415, a POST that is not application/json (a browser sends a form
or plain text from any page without asking first). --host opens the server to names for it that
only other machines know, so the Host is not checked then; the Origin must still be the Host.

It is the standard library's http.server: nothing to install, all of it on this page. The model
answers one request at a time, under a lock: two at once would only share the same cores, and the
attention view switches the model to its by-hand attention for a moment. A request that finds it busy
waits up to WAIT_S seconds (time for a page that stopped one stream to start the next), then gets 503.
A client that stops reading a stream lets the model go after SEND_S seconds, and at most
MAX_CONNECTIONS are open at once (a thread each): one more gets 503 at once.
"""
import argparse, errno, json, math, os, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from chat import UNTUNED_CHAT, chat_reply  # noqa: E402  scripts/chat.py
import gpt  # noqa: E402  the model and its sampler, used as they are: one code path

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html")
MAX_BODY = 64 * 1024  # bytes in a request body
MAX_NEW_TOKENS = 2000  # per request: a second or two of the tiny model, half a minute of medium
WAIT_S = 5  # how long a request waits for the model while it answers another
SEND_S = 5  # how long a stream waits for its client to take an event (once the kernel's buffers,
            # often megabytes, are full): a client that stopped reading lets the model go
MAX_CONNECTIONS = 32  # open at once, each a thread: the page needs two or three
THIS_MACHINE = ("127.0.0.1", "localhost", "::1")  # --host values that serve this machine only
SAMPLING = ("max_new_tokens", "temperature", "top_k", "seed")  # --sample's flags, and their defaults
NOT_FINE_TUNED = "this model was never fine-tuned on conversations: it answers as its text goes on"


class BadRequest(Exception):
    """A request the server refuses: the status, and the one line the client gets back."""
    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------ checking a request
def fields(body, defaults):
    """The body's fields over the defaults; a field the endpoint does not take is refused."""
    unknown = sorted(set(body) - set(defaults))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}: this takes {', '.join(defaults)}")
    return {**defaults, **body}

def integer(values, name, low, high=None, optional=False):
    value = values[name]
    if value is None and optional:
        return None
    if type(value) is not int or value < low or high is not None and value > high:  # True is no 1
        limits = f"from {low} to {high}" if high is not None else f"of {low} or more"
        nothing = " or null" if optional else ""
        raise BadRequest(f"{name} must be an integer {limits}{nothing}, got {json.dumps(value)}")
    return value

def number(values, name, low, high):
    value = values[name]
    if type(value) not in (int, float) or not low <= value <= high:  # NaN, inf and 10**400 too
        raise BadRequest(f"{name} must be a number from {low} to {high}, got {json.dumps(value)}")
    return value

def string(values, name):
    if not isinstance(values[name], str):
        raise BadRequest(f"{name} must be a string, got {json.dumps(values[name])}")
    return values[name]

def sampling(values):
    """generate's arguments from --sample's flags, checked as gpt.py's command line checks them;
    the generator seeded as --sample seeds it, so one seed gives one text."""
    seed = integer(values, "seed", 0, 2**64 - 1)
    return dict(max_new_tokens=integer(values, "max_new_tokens", 1, MAX_NEW_TOKENS),
                temperature=number(values, "temperature", 0, 100),
                top_k=integer(values, "top_k", 1, optional=True),
                generator=torch.Generator().manual_seed(seed))

def encode(tokenizer, text, name):
    try:
        return tokenizer.encode(text)
    except gpt.GPTError as e:  # a character a char model never saw: gpt.py's message names it
        raise BadRequest(f"{name}: {e}") from None

def check_messages(messages, tokenizer):
    """§14's form: an optional system turn, then user and assistant in turn, the user's last."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest('messages must be a list of {"role", "content"}, the last one the user\'s')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise BadRequest(f'messages[{i}] must be an object with "role" and "content" only')
        if m["role"] not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}]: unknown role {json.dumps(m['role'])} (system, user, "
                             "assistant)")
        if not isinstance(m["content"], str) or not m["content"]:
            raise BadRequest(f"messages[{i}]: content must be a non-empty string")
        encode(tokenizer, m["content"], f"messages[{i}]")  # now, before the reply starts streaming
    roles = [m["role"] for m in messages]
    turns = roles[1:] if roles[0] == "system" else roles
    if turns != ["user", "assistant"] * (len(turns) // 2) + ["user"]:
        raise BadRequest("messages: a system turn or none, then user and assistant in turn, "
                         f"ending with the user's; got {', '.join(roles)}")


# ------------------------------------------------------------ the endpoints
def generate(server, body):
    values = fields(body, {k: gpt.DEFAULTS[k] for k in ("prompt", *SAMPLING)})
    flags = sampling(values)
    prompt = string(values, "prompt") or server.empty_prompt  # as --sample: "" starts a new line
    ids = encode(server.tokenizer, prompt, "prompt")
    idx = torch.tensor([ids], dtype=torch.long, device=server.device)  # (1, T)
    tokens = gpt.generate(server.model, idx, **flags)
    return token_events(server.tokenizer, tokens, flags["max_new_tokens"])

def token_events(tokenizer, tokens, n):
    """An event per token drawn: its text, its probability and the five likeliest (as --verbose
    prints them). As in gpt.py's sample(), a character cut across BPE tokens waits to be whole."""
    ids, shown = [], 0  # shown: how many of the ids were sent as text
    for next_id, probs in tokens:  # (1, 1), (1, vocab_size)
        ids.append(next_id.item())
        piece = tokenizer.decode(ids[shown:])
        if piece.endswith("\ufffd") and len(ids) < n:
            piece = ""
        else:
            shown = len(ids)
        p, top = probs[0].topk(min(5, probs.size(-1)))
        likeliest = [[tokenizer.decode([t]), q] for q, t in zip(p.tolist(), top.tolist()) if q]
        yield {"token": piece, "p": probs[0, ids[-1]].item(), "top": likeliest}
    yield {"done": True}

def attention(server, body):
    values = fields(body, {"text": None, "layer": 0, "head": None})
    config, blocks = server.model.config, server.model.transformer.h
    layer = integer(values, "layer", 0, config.n_layer - 1)
    head = integer(values, "head", 0, config.n_head - 1, optional=True)
    ids = encode(server.tokenizer, string(values, "text"), "text")
    if not 1 <= len(ids) <= config.block_size:
        raise BadRequest(f"text is {len(ids)} tokens: the model attends over 1 to {config.block_size}")
    was = [block.attn.by_hand for block in blocks]  # the fused kernel, but on MPS the formula
    for block in blocks:  # CausalSelfAttention's formula, step by step, keeping the weights in .att
        block.attn.by_hand = True
    try:
        with torch.no_grad():
            server.model(torch.tensor([ids], dtype=torch.long, device=server.device))
    finally:
        for block, by_hand in zip(blocks, was):
            block.attn.by_hand = by_hand
    att = blocks[layer].attn.att[0].float()  # (nh, T, T)
    att = att.mean(dim=0) if head is None else att[head]  # (T, T); an average of rows sums to 1 too
    rows = [[round(w, 6) for w in row[:i + 1]] for i, row in enumerate(att.tolist())]  # keys j <= i
    return {"tokens": [server.tokenizer.decode([i]) for i in ids], "weights": rows}

def chat(server, body):
    values = fields(body, {"messages": None, **{k: gpt.DEFAULTS[k] for k in SAMPLING}})
    template = server.template or UNTUNED_CHAT  # as scripts/chat.py: a note, then lines
    encode(server.tokenizer, "".join(template.values()), "the chat template")
    check_messages(values["messages"], server.tokenizer)
    flags = sampling(values)
    pieces = chat_reply(server.model, server.tokenizer, template, values["messages"], **flags)
    return chat_events(pieces, None if server.template else NOT_FINE_TUNED)

def chat_events(pieces, note):
    if note:
        yield {"note": note}
    for piece in pieces:  # text pieces, until the end marker; chat_reply keeps their probabilities
        if piece:
            yield {"token": piece}
    yield {"done": True}

ROUTES = {"/generate": generate, "/attention": attention, "/chat": chat}


# ------------------------------------------------------------ the server
def finite(obj):
    """obj with NaN and Infinity as null: Python's json writes them, but they are not JSON, and a
    browser's JSON.parse refuses the whole reply (from_gpt2.py saves best_val_loss = nan)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(value) for value in obj]
    return obj

def to_json(obj):
    return json.dumps(finite(obj)).encode()

def one_line(e):  # an exception the client hears of: torch's messages run to several lines
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


class Server(ThreadingHTTPServer):
    """The one model, loaded once, and the lock that lets it answer one request at a time."""
    daemon_threads = True  # Ctrl-C does not wait for a stream to end

    def __init__(self, out_dir, host, port, device="auto"):
        self.path = os.path.join(out_dir, "best.pt")
        train = f"train one: python gpt.py --config tiny --out_dir {out_dir}"
        self.ckpt = gpt.load_checkpoint(self.path, train)
        self.device, _ = gpt.pick_device(device)
        self.model, self.tokenizer = gpt.model_from(self.ckpt, self.device), gpt.tokenizer_of(self.ckpt)
        self.template = self.ckpt.get("chat")  # only a model fine-tuned on chats has one
        newline = "\n" in self.tokenizer.spec.get("vocab", "\n")  # as gpt.py's sample()
        self.empty_prompt = "\n" if newline else self.tokenizer.vocab[0]
        self.lock = threading.Lock()
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = {}  # socket: when it was told 503 (it is closed once its client is done)
        self.page = self.render_page()
        super().__init__((host, port), Handler)
        # This machine's names for the server, as a browser writes them in Host (no port if 80).
        # None: --host opened it to other machines, whose names for it it cannot know.
        self.hosts = None
        if host in THIS_MACHINE:
            names, port = ("127.0.0.1", "localhost", "[::1]"), self.server_address[1]
            self.hosts = {f"{name}:{port}" for name in names}
            if port == 80:
                self.hosts |= set(names)

    def render_page(self):
        """serve.html, with what the page needs to know of the model written into it."""
        c = self.model.config
        about = dict(checkpoint=self.path, iter=self.ckpt.get("iter"),
                     val_loss=self.ckpt.get("best_val_loss"), n_layer=c.n_layer, n_head=c.n_head,
                     n_embd=c.n_embd, block_size=c.block_size, vocab_size=c.vocab_size,
                     tokenizer=self.tokenizer.spec["name"], device=str(self.device),
                     chat=self.template is not None, max_new_tokens=MAX_NEW_TOKENS,
                     defaults={k: gpt.DEFAULTS[k] for k in ("prompt", *SAMPLING)})
        model = to_json(about).decode().replace("</", "<\\/")  # no path can end the <script>
        with open(PAGE, encoding="utf-8") as f:
            return f.read().replace("__MODEL__", model).encode()

    def process_request(self, request, client_address):
        """A thread for each connection, up to MAX_CONNECTIONS; past that, 503 and no thread."""
        if self.connections.acquire(blocking=False):
            return super().process_request(request, client_address)
        body = to_json({"error": "the server has too many connections open: try again soon"})
        head = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        request.sendall(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        request.shutdown(socket.SHUT_WR)  # not closed yet: a request that reached a closed socket
        request.setblocking(False)        # would reset the connection, and the 503 with it
        self.refused[request] = time.monotonic()

    def service_actions(self):
        """serve_forever calls this twice a second: a socket told 503 is read, and closed once
        its client has closed it, or after WAIT_S."""
        for sock, told in list(self.refused.items()):
            try:
                ended = not sock.recv(MAX_BODY) or time.monotonic() - told > WAIT_S
            except BlockingIOError:  # nothing more from the client yet
                ended = time.monotonic() - told > WAIT_S
            except OSError:
                ended = True
            if ended:
                del self.refused[sock]
                sock.close()

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def server_close(self):
        super().server_close()
        for sock in self.refused:
            sock.close()


class Handler(BaseHTTPRequestHandler):
    timeout = 60  # seconds a client may leave its socket silent (a body it never sends)

    def do_GET(self):
        try:
            self.check_sender()
            if self.path not in ("/", "/index.html"):
                raise BadRequest(f"no page {self.path} here: GET / is the page", 404)
            self.send_body(200, "text/html; charset=utf-8", self.server.page)
        except BadRequest as e:
            self.send_json(e.status, {"error": str(e)})

    def do_POST(self):
        try:
            self.check_sender()
            route = ROUTES.get(self.path)
            if route is None:
                raise BadRequest(f"no {self.path} here: POST /generate, /attention or /chat", 404)
            body = self.read_json()
            if not self.server.lock.acquire(timeout=WAIT_S):
                raise BadRequest("the model is busy with another request: try again soon", 503)
            try:
                answer = route(self.server, body)  # checks everything before it answers
                if isinstance(answer, dict):
                    self.send_json(200, answer)
                else:
                    self.send_events(answer)
            finally:
                self.server.lock.release()
        except BadRequest as e:
            self.send_json(e.status, {"error": str(e)})
        except Exception as e:  # a request no check foresaw: it is answered all the same,
            self.send_json(500, {"error": f"the server failed on this request: {one_line(e)}"})
            raise  # and the traceback goes to the terminal

    def check_sender(self):
        """Any page the browser shows can send requests here: only the server's own may. A Host
        that is not this machine's name for the server is DNS rebinding (another site's page,
        reading the replies); an Origin that is not the Host is another site's page."""
        host = self.headers.get("Host", "").lower()
        if self.server.hosts is not None and host not in self.server.hosts:
            port = self.server.server_address[1]
            raise BadRequest(f"Host {host!r} is not this server, 127.0.0.1:{port} (a forwarded "
                             "port must keep its number)", 403)
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{host}":
            raise BadRequest(f"only the server's own page may call it, not {origin!r}", 403)

    def read_json(self):
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):  # "²".isdigit() too, and int() refuses it
            raise BadRequest("send the JSON body with a Content-Length", 411)
        size = int(length)
        try:  # read even a body too long (up to a point): a socket closed unread loses the answer
            data = self.rfile.read(min(size, 16 * MAX_BODY))
        except TimeoutError:
            raise BadRequest(f"the body did not come in {self.timeout} s", 408) from None
        if size > MAX_BODY:
            raise BadRequest(f"the body is {size:,} bytes: at most {MAX_BODY:,}", 413)
        if self.headers.get_content_type() != "application/json":  # a form or text/plain: any page
            kind = self.headers.get("Content-Type", "no type")
            raise BadRequest(f"send the body as application/json, not {kind!r}", 415)
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, or nested past the stack
            raise BadRequest(f"the body is not JSON ({e})") from None
        if not isinstance(body, dict):
            raise BadRequest('the body must be a JSON object, such as {"prompt": "ROMEO:"}')
        return body

    def send_events(self, events):
        """Server-Sent Events: each 'data: {json}' goes out the moment it is made. The 200 goes
        before the first token is drawn: a failure after it can only end the stream, saying why."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.connection.settimeout(SEND_S)  # a client that stops reading lets the model go
        try:
            for event in events:
                self.wfile.write(b"data: " + to_json(event) + b"\n\n")
        except (ConnectionError, TimeoutError):  # the page stopped reading: Stop, anew, or stalled
            pass
        except Exception as e:
            self.log_error("the stream failed: %s", one_line(e))
            self.wfile.write(b"data: " + to_json({"error": one_line(e)}) + b"\n\n")
        finally:
            events.close()

    def send_json(self, status, obj):
        self.send_body(status, "application/json", to_json(obj))

    def send_body(self, status, kind, data):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# ------------------------------------------------------------ command line
def main(argv=None):
    p = argparse.ArgumentParser(prog="serve.py", description="A page that samples, shows "
                                "attention and chats, for the model in --out_dir.")
    p.add_argument("--out_dir", default="out", help="the folder of the best.pt to serve (out)")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1: this machine only (default); "
                   "0.0.0.0: every network it is on")
    p.add_argument("--port", type=int, default=8000, help="8000 by default; 0: any free port")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    args = p.parse_args(argv)
    try:
        server = Server(args.out_dir, args.host, args.port, args.device)
    except gpt.GPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the port is taken, or the host is not this machine's
        why = "it is in use: pick another --port" if e.errno == errno.EADDRINUSE else e.strerror
        print(f"error: cannot serve on {args.host}:{args.port}: {why}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    step = server.ckpt.get("iter")
    print(f"serving {server.path} (step {step}, {server.device}) at http://{host}:{port}/", flush=True)
    if args.host not in THIS_MACHINE:
        print(f"--host {args.host}: the page is reachable from other machines, as "
              f"http://{socket.gethostname()}:{port}/: anyone who reaches it can use the model", flush=True)
    print("Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
