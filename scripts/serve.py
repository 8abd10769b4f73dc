"""
serve.py: watch the model think, in a browser: one page on this machine for the model in --out_dir.

    python scripts/serve.py                      # out/best.pt, at http://127.0.0.1:8000/
    python scripts/serve.py --out_dir out_chat   # a model fine-tuned on chats adds the chat view
    python scripts/serve.py --host 0.0.0.0       # reachable from other machines too (it says so)

The page (scripts/serve.html: one file, nothing from the network) samples as `python gpt.py --sample`
does, through gpt.py's own generate, and shows for each token the five the model found likeliest; it
shows which earlier tokens each token attended to, from the model's own attention, computed by hand;
for a chat model it chats. Under it lies a small HTTP API (SPEC §15), for scripts too:

    GET  /           the page
    POST /generate   {"prompt", "max_new_tokens", "temperature", "top_k", "seed"}, each optional:
                     Server-Sent Events, one per token, data: {"token", "p", "top": [[token, p], ...]},
                     then data: {"done": true}
    POST /attention  {"text", "layer", "head"} (head null: the heads' average) -> {"tokens", "weights"}
    POST /chat       {"messages": [{"role", "content"}, ...]}, and the sampling fields: events as above
    A bad request gets a 4xx status and {"error": "one line"}; the server goes on serving.

It is the standard library's http.server: nothing to install, all of it on this page. The model
answers one request at a time, under a lock: two at once would only share the same cores, and the
attention view switches the model to its by-hand attention for a moment. A request that finds it busy
waits up to WAIT_S seconds (time for a page that stopped one stream to start the next), then gets 503.
"""
import argparse, errno, json, math, os, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from chat import UNTUNED_CHAT, chat_reply  # noqa: E402  scripts/chat.py
import gpt  # noqa: E402  the model and its sampler, used as they are: one code path

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html")
MAX_BODY = 64 * 1024  # bytes in a request body
MAX_NEW_TOKENS = 2000  # per request: a second or two of the tiny model, half a minute of medium
WAIT_S = 5  # how long a request waits for the model while it answers another
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
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
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
        self.page = self.render_page()
        super().__init__((host, port), Handler)

    def render_page(self):
        """serve.html, with what the page needs to know of the model written into it."""
        c = self.model.config
        about = dict(checkpoint=self.path, iter=self.ckpt.get("iter"),
                     val_loss=self.ckpt.get("best_val_loss"), n_layer=c.n_layer, n_head=c.n_head,
                     n_embd=c.n_embd, block_size=c.block_size, vocab_size=c.vocab_size,
                     tokenizer=self.tokenizer.spec["name"], device=str(self.device),
                     chat=self.template is not None, max_new_tokens=MAX_NEW_TOKENS,
                     defaults={k: gpt.DEFAULTS[k] for k in ("prompt", *SAMPLING)})
        with open(PAGE, encoding="utf-8") as f:  # "</" escaped: no path can end the <script>
            return f.read().replace("__MODEL__", json.dumps(about).replace("</", "<\\/")).encode()


class Handler(BaseHTTPRequestHandler):
    timeout = 60  # seconds a client may leave its socket silent (a body it never sends)

    def do_GET(self):
        if self.path in ("/", "/index.html"):
            self.send_body(200, "text/html; charset=utf-8", self.server.page)
        else:
            self.send_json(404, {"error": f"no page {self.path} here: GET / is the page"})

    def do_POST(self):
        try:
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

    def read_json(self):
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise BadRequest("send the JSON body with a Content-Length", 411)
        size = int(length)
        try:  # read even a body too long (up to a point): a socket closed unread loses the answer
            data = self.rfile.read(min(size, 16 * MAX_BODY))
        except TimeoutError:
            raise BadRequest(f"the body did not come in {self.timeout} s", 408) from None
        if size > MAX_BODY:
            raise BadRequest(f"the body is {size:,} bytes: at most {MAX_BODY:,}", 413)
        try:
            body = json.loads(data)
        except ValueError as e:  # not JSON, or not UTF-8
            raise BadRequest(f"the body is not JSON ({e})") from None
        if not isinstance(body, dict):
            raise BadRequest('the body must be a JSON object, such as {"prompt": "ROMEO:"}')
        return body

    def send_events(self, events):
        """Server-Sent Events: each 'data: {json}' goes out the moment it is made."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            for event in events:
                self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        except (BrokenPipeError, ConnectionResetError):  # the page stopped reading: Stop, or anew
            events.close()

    def send_json(self, status, obj):
        self.send_body(status, "application/json", json.dumps(obj).encode())

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
    if args.host not in ("127.0.0.1", "localhost", "::1"):
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
