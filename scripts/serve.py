"""
serve.py: watch the model think, in a browser: one page on this machine for the model in --out_dir,
and the OpenAI API under /v1, so that chat apps and the `openai` package can talk to it too.

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

and the OpenAI API, in OpenAI's shapes (what the `openai` package and chat apps such as Open WebUI read):

    GET  /v1/models            the one model, named for its folder (or --model_name)
    POST /v1/chat/completions  a chat model's reply: the text scripts/chat.py writes
    POST /v1/completions       any model's continuation of a prompt: the text gpt.py --sample writes
    Both take max_tokens (or max_completion_tokens), temperature (0 to 2), seed, stop (up to 4
    strings), stream, and top_k as an extension; temperature, top_k and max_tokens default to
    --sample's, and with no seed each request draws its own. Fields that apps send at values that
    change nothing (n 1, top_p 1, penalties 0, logprobs false, user, ...) are taken; any other value
    is refused with a 400, never ignored.
    Errors are {"error": {"message", "type", "param", "code"}}.

Only this machine's own page may drive the model, though any web site the user visits can make the
browser send requests to 127.0.0.1. Refused with 403: a Host that is not a name of this machine
(DNS rebinding: another site's page, its name now resolving to 127.0.0.1, reading what the model
writes), and an Origin that is not the server's own page; with 415, a POST that is not
application/json (a browser sends a form or plain text from any page without asking first). The Host
may be localhost or a loopback address on any port (ssh -L 9000:localhost:8000 works); --host opens
the server to other machines, and then also to IP addresses and this machine's own name; other DNS
names only if --allowed_hosts lists them. --api_key KEY asks every request but the page itself for
`Authorization: Bearer KEY` (the page asks for it once); without it, any Authorization is accepted.

It is the standard library's http.server: nothing to install, all of it on this page. The model
answers one request at a time, under a lock: two at once would only share the same cores. A request
that finds it busy waits up to WAIT_S seconds (time for a page that stopped one stream to start the
next; an API client, which may send a few at once, waits up to QUEUE_S), then gets 503. An answer
that is not streamed goes out once the model is free again. A client that stops reading an answer is
left after SEND_S seconds (a stream's lets the model go then); one that hangs up before its answer is
ready (an app that timed out, and may send it again) has it dropped, even halfway through. At most
MAX_CONNECTIONS are open at once (a thread each), and each must send its whole request within
REQUEST_S: one sent a byte at a time is cut off then, or sooner if a new connection needs its place;
past the cap, 503 at once. Every error comes with a status line, and under /v1 in OpenAI's shape.
"""
import argparse, errno, hmac, ipaddress, json, math, os, re, secrets, select, socket, sys, threading, time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from chat import UNTUNED_CHAT, chat_reply, prompt_ids, reply_text  # noqa: E402  scripts/chat.py
import gpt  # noqa: E402  the model and its sampler, used as they are: one code path

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html")
MAX_BODY = 64 * 1024  # bytes in a request body
MAX_NEW_TOKENS = 2000  # per request: a second or two of the tiny model, half a minute of medium
WAIT_S = 5  # how long a request waits for the model while it answers another
QUEUE_S = 60  # as long for the OpenAI API: apps send a few at once (a title, tags, the reply)
SEND_S = 5  # how long an answer waits for its client to take more (once the kernel's buffers, often
            # megabytes, are full): a stream's client that stopped reading lets the model go
SEND_PIECE = 64 * 1024  # bytes of an answer sent in one go, each within SEND_S: 13 KB/s will do
REQUEST_S = 10  # for a request's line, headers and body, all of them: a client that sends a byte at
                # a time cannot hold its connection longer (a deadline for each read would not do)
LINGER_S = 1  # how long the rest of a refused body is read and dropped, so the refusal arrives
PEEK_S = 0.05  # how long a connection past the cap has for its request line, whose path says whether
               # its 503 is the page's or OpenAI's (sent later, the page's); the server waits meanwhile
MAX_CONNECTIONS = 32  # open at once, each a thread: the page needs two or three
SAMPLING = ("max_new_tokens", "temperature", "top_k", "seed")  # --sample's flags, and their defaults
NOT_FINE_TUNED = "this model was never fine-tuned on conversations: it answers as its text goes on"


class BadRequest(Exception):
    """A request the server refuses: the status, the one line the client gets back, and for the OpenAI
    API the field at fault (param) and a word a program can test (code)."""
    def __init__(self, message, status=400, param=None, code=None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

class ClientLeft(Exception):
    """The client hung up before its answer was ready: an app that gave up waiting (and may send the
    request again). The model stops, rather than write for no one."""


# ------------------------------------------------------------ checking a request
def shown(value):
    """A value as the client sent it, for a message of one short line. Nested near Python's stack
    limit, json.loads reads it but json.dumps cannot write it back."""
    try:
        text = json.dumps(value)
    except RecursionError:
        text = "(a value nested too deep to show)"
    return text if len(text) <= 80 else text[:77] + "..."

def fields(body, defaults):
    """The body's fields over the defaults; a field the endpoint does not take is refused."""
    unknown = sorted(set(body) - set(defaults))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}: this takes {', '.join(defaults)}", param=unknown[0])
    return {**defaults, **body}

def integer(values, name, low, high=None, optional=False):
    value = values[name]
    if value is None and optional:
        return None
    if type(value) is not int or value < low or high is not None and value > high:  # True is no 1
        limits = f"from {low} to {high}" if high is not None else f"of {low} or more"
        nothing = " or null" if optional else ""
        raise BadRequest(f"{name} must be an integer {limits}{nothing}, got {shown(value)}",
                         param=name)
    return value

def number(values, name, low, high):
    value = values[name]
    if type(value) not in (int, float) or not low <= value <= high:  # NaN, inf and 10**400 too
        raise BadRequest(f"{name} must be a number from {low} to {high}, got {shown(value)}",
                         param=name)
    return value

def string(values, name):
    if not isinstance(values[name], str):
        raise BadRequest(f"{name} must be a string, got {shown(values[name])}", param=name)
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
        raise BadRequest(f"{name}: {e}", param=name.split("[")[0]) from None

def check_messages(messages, tokenizer):
    """§14's form: an optional system turn, then user and assistant in turn, the user's last."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest('messages must be a list of {"role", "content"}, the last one the user\'s')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise BadRequest(f'messages[{i}] must be an object with "role" and "content" only')
        if m["role"] not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}]: unknown role {shown(m['role'])} (system, user, "
                             "assistant)")
        if not isinstance(m["content"], str) or not m["content"]:
            raise BadRequest(f"messages[{i}]: content must be a non-empty string")
        encode(tokenizer, m["content"], f"messages[{i}]")  # now, before the reply starts streaming
    roles = [m["role"] for m in messages]
    turns = roles[1:] if roles[0] == "system" else roles
    if turns != ["user", "assistant"] * (len(turns) // 2) + ["user"]:
        raise BadRequest("messages: a system turn or none, then user and assistant in turn, "
                         f"ending with the user's; got {', '.join(roles)}")


# ------------------------------------------------------------ the page's endpoints
def generate(server, body, check_client):
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

def attention(server, body, check_client):
    values = fields(body, {"text": None, "layer": 0, "head": None})
    config, blocks = server.model.config, server.model.transformer.h
    layer = integer(values, "layer", 0, config.n_layer - 1)
    head = integer(values, "head", 0, config.n_head - 1, optional=True)
    ids = encode(server.tokenizer, string(values, "text"), "text")
    if not 1 <= len(ids) <= config.block_size:
        raise BadRequest(f"text is {len(ids)} tokens: the model attends over 1 to {config.block_size}")
    # Only the layer asked for runs CausalSelfAttention's formula step by step, keeping its weights in
    # .att: every layer's, for GPT-2 at 1024 positions, would be 600 MB. The weights go once read.
    attn = blocks[layer].attn
    was = attn.by_hand  # the fused kernel, but on MPS the formula
    attn.by_hand = True
    try:
        with torch.no_grad():
            server.model(torch.tensor([ids], dtype=torch.long, device=server.device))
        att = attn.att[0].float()  # (nh, T, T)
    finally:
        attn.by_hand = was
        for block in blocks:  # on MPS every layer keeps them, and /generate's too
            vars(block.attn).pop("att", None)
    att = att.mean(dim=0) if head is None else att[head]  # (T, T); an average of rows sums to 1 too
    rows = [[round(w, 6) for w in row[:i + 1]] for i, row in enumerate(att.tolist())]  # keys j <= i
    return {"tokens": [server.tokenizer.decode([i]) for i in ids], "weights": rows}

def chat(server, body, check_client):
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


# ------------------------------------------------------------ the OpenAI API, under /v1
# What the official clients and chat apps send beside the fields an endpoint reads. At these values
# they change nothing here, so they are taken (LibreChat sends the penalties at 0, LangChain n=1); any
# other value asks for what this server does not do (a second answer, nucleus sampling, tools, JSON
# mode), and gets a 400 saying so: a reply that quietly ignored it would not be what was asked for.
# null is taken for each of them, as OpenAI takes it.
NEUTRAL = dict(n=[1], best_of=[1], top_p=[1], frequency_penalty=[0], presence_penalty=[0],
               logprobs=[False, 0], top_logprobs=[0], logit_bias=[{}], echo=[False], suffix=[""],
               tools=[[]], functions=[[]], tool_choice=["none", "auto"], function_call=["none", "auto"],
               response_format=[{"type": "text"}], modalities=[["text"]], reasoning_effort=[],
               audio=[], prediction=[], web_search_options=[], verbosity=[])
HINT = dict(top_p="top_k keeps the k likeliest instead", n="send a request for each answer",
            logprobs="POST /generate streams each token's probability")
# Bookkeeping, taken with any value. "model" too: there is one, whatever name an app gives it.
IGNORED = ("model", "user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
           "prompt_cache_retention", "safety_identifier")
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # as OpenAI: a few short strings, checked after every token

def same(a, b):  # equal as JSON values: 1.0 is 1, but true is not 1
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b

def openai_fields(body, takes):
    """The body's fields over the endpoint's defaults (null: the default). Fields apps send at values
    that change nothing are dropped; another value of one, or a field no endpoint knows, is a 400."""
    values = dict(takes)
    for name, value in body.items():
        if name in takes:
            if value is not None:
                values[name] = value
        elif name in NEUTRAL:
            if value is not None and not any(same(value, v) for v in NEUTRAL[name]):
                allowed = " or ".join(json.dumps(v) for v in [None, *NEUTRAL[name]])
                hint = f" ({HINT[name]})" if name in HINT else ""
                raise BadRequest(f"{name} {shown(value)} is not served here: leave it out or send "
                                 f"{allowed}{hint}", param=name, code="unsupported_value")
        elif name not in IGNORED:
            raise BadRequest(f"unknown field {name!r}: this takes {', '.join(takes)}", param=name,
                             code="unknown_parameter")
    return values

def openai_sampling(values, length="max_tokens"):
    """generate's arguments from OpenAI's fields: temperature as OpenAI bounds it, a seed of any
    64-bit integer (as /generate's: the same seed, the same text), and no seed a fresh one."""
    seed = values["seed"]
    if seed is None:  # OpenAI's way: without a seed, a new answer each time (a chat app's Regenerate)
        seed = secrets.randbits(64)
    seed = integer(dict(seed=seed), "seed", -2**63, 2**64 - 1)  # torch maps a negative seed to 2**64 + seed
    return dict(max_new_tokens=integer(values, length, 1, MAX_NEW_TOKENS),
                temperature=number(values, "temperature", 0, 2),
                top_k=integer(values, "top_k", 1, optional=True),
                generator=torch.Generator().manual_seed(seed))

def stop_strings(values):
    stop = values["stop"]
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if (not isinstance(stops, list) or len(stops) > MAX_STOPS
            or not all(isinstance(s, str) and 1 <= len(s) <= MAX_STOP_CHARS for s in stops)):
        raise BadRequest(f"stop must be a string or a list of up to {MAX_STOPS}, each of 1 to "
                         f"{MAX_STOP_CHARS} characters, got {shown(stop)}", param="stop")
    return stops

def streaming(values):
    """Whether to stream, and whether to end the stream with the usage (stream_options.include_usage).
    include_obfuscation pads chunks against an eavesdropper on HTTPS: this server speaks plain HTTP."""
    stream, options = values["stream"], values["stream_options"]
    if type(stream) is not bool:
        raise BadRequest(f"stream must be true or false, got {shown(stream)}", param="stream")
    if options is None:
        return stream, False
    if not stream:  # as OpenAI: options for a stream that is not asked for are a mistake somewhere
        raise BadRequest("stream_options is only taken with stream true", param="stream_options")
    if (not isinstance(options, dict) or not set(options) <= {"include_usage", "include_obfuscation"}
            or not all(type(value) is bool for value in options.values())):
        raise BadRequest('stream_options must be {"include_usage": true or false}, got '
                         f"{shown(options)}", param="stream_options")
    return stream, options.get("include_usage", False)

def openai_messages(messages, tokenizer):
    """OpenAI's messages as §14's turns. Apps send more than scripts/chat.py types: a developer turn (a
    system turn by OpenAI's newer name), content as a list of text parts, several system turns,
    fields such as name or tool_calls: null. The template renders any order; a reply follows the last
    turn, which is not the assistant's."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest('messages must be a list of {"role", "content"}, the last one the user\'s',
                         param="messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f'messages[{i}] must be an object with "role" and "content"', param="messages")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}]: role {shown(m.get('role'))} is not served here (system, "
                             "developer, user, assistant): this model writes text, it calls no tools",
                             param="messages")
        content = m.get("content")
        if content is None and role == "assistant":  # an assistant turn that only called tools
            content = ""
        if isinstance(content, list) and content:  # [{"type": "text", "text": "..."}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise BadRequest(f"messages[{i}]: only text parts are read, and this model reads no "
                                 "images, audio or files", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):  # 0, false, {}, [] and none at all are no text either
            got = shown(content) if "content" in m else "none"
            raise BadRequest(f"messages[{i}]: content must be a string or a list of text parts, got "
                             f"{got}", param="messages")
        if not isinstance(m.get("name", ""), str):
            raise BadRequest(f"messages[{i}]: name must be a string, got {shown(m['name'])}",
                             param="messages")
        more = sorted(k for k, v in m.items()  # tool_calls: null and the like are taken
                      if k not in ("role", "content", "name") and v not in (None, [], "", {}))
        if more:
            raise BadRequest(f"messages[{i}]: {more[0]!r} is not served here: this model writes text only",
                             param="messages")
        encode(tokenizer, content, f"messages[{i}]")  # now, before the reply starts streaming
        turns.append({"role": role, "content": content})
    if turns[-1]["role"] == "assistant":
        raise BadRequest("messages: the last turn is the assistant's: the model answers a user's turn",
                         param="messages")
    return turns

def chat_completions(server, body, check_client):
    """POST /v1/chat/completions: scripts/chat.py's reply, through its own chat template."""
    if server.template is None:
        raise BadRequest(f"{server.model_name} was never fine-tuned on conversations, so it has no chat "
                         "template: POST /v1/completions continues a text", param="model",
                         code="model_not_chat")
    values = openai_fields(body, dict(messages=None, max_tokens=None, max_completion_tokens=None,
                                      temperature=gpt.DEFAULTS["temperature"], top_k=None, seed=None,
                                      stop=None, stream=False, stream_options=None))
    turns = openai_messages(values["messages"], server.tokenizer)
    length = "max_completion_tokens" if values["max_completion_tokens"] is not None else "max_tokens"
    if values["max_tokens"] is not None and values[length] != values["max_tokens"]:
        raise BadRequest("max_tokens and max_completion_tokens differ: send one", param="max_tokens")
    if values[length] is None:
        values[length] = gpt.DEFAULTS["max_new_tokens"]
    flags = openai_sampling(values, length)
    ids = prompt_ids(server.tokenizer, server.template, turns, server.model.config.block_size)
    stops = [server.template["end"], *stop_strings(values)]  # the end marker stops it, as chat.py
    return openai_reply(server, ids, stops, flags, *streaming(values), check_client, chat=True)

def completions(server, body, check_client):
    """POST /v1/completions: the text gpt.py --sample writes after the prompt, for any model."""
    values = openai_fields(body, dict(prompt="", max_tokens=gpt.DEFAULTS["max_new_tokens"],
                                      temperature=gpt.DEFAULTS["temperature"], top_k=None, seed=None,
                                      stop=None, stream=False, stream_options=None))
    prompt = values["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1:  # the client may send one prompt in a list
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (one prompt a request, as text, not token ids)",
                         param="prompt")
    ids = encode(server.tokenizer, prompt or server.empty_prompt, "prompt")  # "" as --sample: a new line
    flags = openai_sampling(values)
    return openai_reply(server, ids, stop_strings(values), flags, *streaming(values), check_client,
                        chat=False)

def openai_reply(server, ids, stops, flags, stream, include_usage, check_client, chat):
    """The text the model writes after ids, until a stop string or the token limit, in OpenAI's shape:
    one chat.completion or text_completion, or a stream of chunks of it. A stream finds out that its
    client left when it writes; the whole answer, which goes out at the end, asks as it is written."""
    report = {}  # reply_text counts the tokens drawn, and says whether a stop string ended them
    pieces = reply_text(server.model, server.tokenizer, ids, stops, report=report, **flags)
    head = dict(id=f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}",
                object="chat.completion" if chat else "text_completion", created=int(time.time()),
                model=server.model_name)
    if stream:
        return openai_events(head, pieces, report, len(ids), chat, include_usage)
    text = ""
    for piece in pieces:
        check_client()
        text += piece
    if chat:
        choice = dict(index=0, message=dict(role="assistant", content=text), logprobs=None)
    else:
        choice = dict(index=0, text=text, logprobs=None)
    choice["finish_reason"] = "stop" if report["stopped"] else "length"
    return {**head, "choices": [choice], "usage": usage(len(ids), report["tokens"])}

def usage(prompt_tokens, completion_tokens):
    return dict(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens)

def openai_events(head, pieces, report, prompt_tokens, chat, include_usage):
    """OpenAI's stream: a chunk per piece of text (in a chat, a delta: the role first, then the
    content), a last chunk with the finish_reason, the usage if asked for, then [DONE]."""
    if chat:
        head = {**head, "object": "chat.completion.chunk"}
    if include_usage:  # then every chunk says "usage": null, but the one after the last
        head = {**head, "usage": None}

    def chunk(text, finish_reason=None, role=False):
        if chat and role:
            choice = dict(index=0, delta={"role": "assistant", "content": text})
        elif chat:  # the last chunk's delta is empty
            choice = dict(index=0, delta={} if finish_reason else {"content": text})
        else:
            choice = dict(index=0, text=text)
        return {**head, "choices": [dict(**choice, logprobs=None, finish_reason=finish_reason)]}

    if chat:
        yield chunk("", role=True)
    for piece in pieces:
        if piece:
            yield chunk(piece)
    yield chunk("", "stop" if report["stopped"] else "length")
    if include_usage:
        yield {**head, "choices": [], "usage": usage(prompt_tokens, report["tokens"])}
    yield "[DONE]"

def models(server):  # GET /v1/models
    return {"object": "list", "data": [server.model_card]}

# Each takes the server, the request's JSON body, and a function that raises ClientLeft if the client
# has hung up
POST_ROUTES = {"/generate": generate, "/attention": attention, "/chat": chat,
               "/v1/chat/completions": chat_completions, "/v1/completions": completions}


# ------------------------------------------------------------ which Hosts name this machine
HOST = re.compile(r"\[([0-9a-f:.]+)\](?::\d{1,5})?|([a-z0-9_.-]+)(?::\d{1,5})?")  # name[:port]

def host_name(host):
    """The name in a Host header, in lower case, without its port or a final dot (localhost. is
    localhost, in DNS as in browsers): "[::1]:8000" -> "::1"; None if it is not a name and a port."""
    match = HOST.fullmatch(host.strip().lower())
    return match and (match[1] or match[2].removesuffix("."))

def ip_address(name):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None

def loopback(name):
    """A name that means this machine wherever it is read: localhost (and, as browsers and RFC 6761
    have it, *.localhost), 127.x.x.x or ::1. No DNS answer can change what it names."""
    address = ip_address(name)
    return name == "localhost" or name.endswith(".localhost") or bool(address and address.is_loopback)


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

def url(host, port):  # as a browser writes it: an IPv6 address in brackets
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

def route_of(path):
    """A request's path as the routes read it: no query, %-escapes decoded, and of a whole URL (GET
    http://host/v1/models, as HTTP allows) only its path. One urlsplit refuses (http://[/v1) is kept
    as it came: no route has that name."""
    try:
        return unquote(urlsplit(path).path)
    except ValueError:
        return path

def openai_route(request_line):
    """Whether a request's first line, as it came (b"GET /v1/models HTTP/1.1"), asks the OpenAI API:
    then its errors are in OpenAI's shape, even those made before its headers were read."""
    words = request_line.split()
    route = route_of(words[1].decode("latin-1")) if len(words) > 1 else ""
    return route == "/v1" or route.startswith("/v1/")

def error_body(e, api):
    """The page's API says what went wrong in one line; the OpenAI API as OpenAI does."""
    if not api:
        return {"error": str(e)}
    kind = "invalid_request_error" if e.status < 500 else "server_error"
    return {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}}


class Server(ThreadingHTTPServer):
    """The one model, loaded once, the lock that lets it answer one request at a time, and the
    connections it is waiting on."""
    daemon_threads = True  # Ctrl-C does not wait for a stream to end

    def __init__(self, out_dir, host, port, device="auto", allowed_hosts=(), api_key=None, model_name=None):
        self.path = os.path.join(out_dir, "best.pt")
        train = f"train one: python gpt.py --config tiny --out_dir {out_dir}"
        self.ckpt = gpt.load_checkpoint(self.path, train)
        self.device, _ = gpt.pick_device(device)
        self.model, self.tokenizer = gpt.model_from(self.ckpt, self.device), gpt.tokenizer_of(self.ckpt)
        self.template = self.ckpt.get("chat")  # only a model fine-tuned on chats has one
        newline = "\n" in self.tokenizer.spec.get("vocab", "\n")  # as gpt.py's sample()
        self.empty_prompt = "\n" if newline else self.tokenizer.vocab[0]
        self.model_name = model_name or os.path.basename(os.path.abspath(out_dir))
        self.model_card = dict(id=self.model_name, object="model", owned_by="gpt.py",
                               created=int(os.path.getmtime(self.path)))
        self.api_key = api_key
        self.lock = threading.Lock()
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = {}  # socket: when it was told 503 (it is closed once its client is done)
        self.reading = set()  # the handlers still reading their request, each with its deadline
        self.reading_lock = threading.Lock()
        self.page = self.render_page()
        host = host.strip("[]")  # --host [::1], as a URL writes it
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)
        # The names a Host may give. Loopback ones always; a --host that is not loopback opened the
        # server to other machines, which call it by its address or this machine's name. The address
        # bound says which, not --host's text (127.1 and localhost are 127.0.0.1). A DNS name anyone
        # else owns could be an attacker's, rebound to this machine: only --allowed_hosts vouches for one.
        self.opened = not ipaddress.ip_address(self.server_address[0]).is_loopback
        self.allowed_hosts = {host_name(name.strip()) for name in allowed_hosts if name.strip()} - {None}
        if self.opened:
            self.allowed_hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def server_bind(self):
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            try:  # "::" is every IPv6 address; with this, every IPv4 one too, as 0.0.0.0 would be
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:  # a system without dual-stack sockets: IPv6 only
                pass
        super().server_bind()

    def host_allowed(self, name):
        if not name:
            return False
        listed = any(name == allowed or allowed.startswith(".") and ("." + name).endswith(allowed)
                     for allowed in self.allowed_hosts)  # ".example.com": it and its subdomains
        return loopback(name) or listed or self.opened and ip_address(name) is not None

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
        """A thread for each connection, up to MAX_CONNECTIONS. When they are all taken, the one that
        has taken longest to send its request gives way (a client sending a byte at a time never
        locks the page out); if none is still sending, 503, and no thread."""
        if self.connections.acquire(blocking=False):
            return super().process_request(request, client_address)
        if self.cut_off_slowest() and self.connections.acquire(timeout=1):  # its thread ends at once
            return super().process_request(request, client_address)
        line = b""
        try:
            if select.select([request], [], [], PEEK_S)[0]:
                line = request.recv(4096, socket.MSG_PEEK)  # left there, and read away below
        except OSError:  # it has gone already
            pass
        e = BadRequest("the server has too many connections open: try again soon", 503)
        body = to_json(error_body(e, openai_route(line)))
        head = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        request.sendall(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        request.shutdown(socket.SHUT_WR)  # not closed yet: a request that reached a closed socket
        request.setblocking(False)        # would reset the connection, and the 503 with it
        self.refused[request] = time.monotonic()

    def cut_off(self, handler, why):
        """Stop reading a request: its thread's read returns at once, as if the client had stopped
        sending; the handler then answers 408 with why, and lets its connection go."""
        with self.reading_lock:
            if handler not in self.reading:  # it has its request already
                return False
            self.reading.discard(handler)
            handler.cut = why
        try:
            handler.connection.shutdown(socket.SHUT_RD)  # the write side stays open, for the 408
        except OSError:
            pass
        return True

    def cut_off_slowest(self):
        with self.reading_lock:
            slowest = min(self.reading, key=lambda handler: handler.deadline, default=None)
        why = "the request was still coming: its connection went to a new one"
        return slowest is not None and self.cut_off(slowest, why)

    def service_actions(self):
        """serve_forever calls this twice a second: a request past its deadline is cut off; a socket
        told 503 is read, and closed once its client has closed it, or after WAIT_S."""
        with self.reading_lock:
            late = [handler for handler in self.reading if time.monotonic() > handler.deadline]
        for handler in late:
            self.cut_off(handler, f"the request did not all come in {REQUEST_S} s")
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

    def handle_error(self, request, client_address):
        """A traceback on the terminal for a failure no check foresaw; none for a client that hung up."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def server_close(self):
        super().server_close()
        for sock in self.refused:
            sock.close()


class Handler(BaseHTTPRequestHandler):
    timeout = 60  # seconds a socket may stay silent: REQUEST_S already bounds reading a request
    default_request_version = "HTTP/1.0"  # not 0.9, which http.server takes a request line it cannot
                                          # read for: its answer would have no status line

    def setup(self):
        super().setup()
        self.cut = None  # why the server cut this request off, if it did
        self.unread = False  # a request not all read: the rest read and dropped before closing (finish)
        self.route = ""  # the path, without a query
        self.answered = False  # whether the status line went out
        self.deadline = time.monotonic() + REQUEST_S
        with self.server.reading_lock:
            self.server.reading.add(self)

    def request_read(self):
        """The request is in: no deadline from here (a stream may run for minutes), unless it came too
        late, or the server needed its connection."""
        with self.server.reading_lock:
            self.server.reading.discard(self)
        if self.cut:
            raise BadRequest(self.cut, 408)

    @property
    def api(self):
        """Whether the request asks the OpenAI API, whose errors are in OpenAI's shape. Read from its
        first line as it came, it is known even when http.server refuses the rest (431, 414)."""
        return openai_route(self.raw_requestline)

    def parse_request(self):  # http.server reads the request line and the headers
        if not super().parse_request():
            return False
        self.route = route_of(self.path)
        return True

    def do_GET(self):
        try:
            self.request_read()  # a GET has no body: all of it is in
            self.check_sender()
            if self.route in ("/", "/index.html"):
                return self.send_body(200, "text/html; charset=utf-8", self.server.page)
            self.check_key()
            if self.route == "/v1/models":
                return self.send_json(200, models(self.server))
            if self.route == f"/v1/models/{self.server.model_name}":
                return self.send_json(200, self.server.model_card)
            if self.route.startswith("/v1/models/"):
                raise BadRequest(f"no model {self.route[11:]!r} here: this server has "
                                 f"{self.server.model_name!r}", 404, param="model", code="model_not_found")
            raise BadRequest(f"no page {self.route} here: GET / is the page, GET /v1/models the "
                             "OpenAI API's model list", 404, code="unknown_url")
        except BadRequest as e:
            self.send_error_json(e)

    def do_POST(self):
        try:
            self.unread = True
            if self.cut:  # its headers were cut short: none of them can be trusted
                raise BadRequest(self.cut, 408)
            self.check_sender()
            route = POST_ROUTES.get(self.route)
            if route is None:
                raise BadRequest(f"no {self.route} here: POST /generate, /attention, /chat, "
                                 "/v1/chat/completions or /v1/completions", 404, code="unknown_url")
            self.check_key()
            body = self.read_json()
            if not self.server.lock.acquire(timeout=QUEUE_S if self.api else WAIT_S):
                raise BadRequest("the model is busy with another request: try again soon", 503)
            try:
                self.check_client()  # an app that gave up waiting for its turn is not answered
                answer = route(self.server, body, self.check_client)  # checks everything first
                if not isinstance(answer, dict):  # a stream: the model writes as it goes out
                    return self.send_events(answer)
            finally:
                self.server.lock.release()
            self.send_json(200, answer)  # the model is free while the client takes it (5 MB of attention)
        except BadRequest as e:
            self.send_error_json(e)
        except ClientLeft:
            self.log_message("the client left before its answer was ready: it was not finished")
        except Exception as e:  # a request no check foresaw: it is answered all the same,
            self.send_error_json(BadRequest(f"the server failed on this request: {one_line(e)}", 500))
            raise  # and the traceback goes to the terminal

    def not_allowed(self):
        self.send_error_json(BadRequest(f"{self.command} is not served: GET or POST", 405))
    do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = not_allowed

    def check_sender(self):
        """Any page the browser shows can send requests here: only the server's own may. A Host
        that is not a name of this machine is DNS rebinding (another site's page, reading the
        replies); an Origin that is not the Host is another site's page."""
        hosts = self.headers.get_all("Host", [])
        host = hosts[0].strip().lower() if len(hosts) == 1 else ""
        if not self.server.host_allowed(host_name(host)):
            more = "; or an IP address, or this machine's name" if self.server.opened else ""
            raise BadRequest(f"Host {host!r} is not a name of this server: use localhost or 127.0.0.1"
                             f"{more}; a DNS name only if --allowed_hosts lists it", 403)
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{host}":
            raise BadRequest(f"only the server's own page may call it, not {origin!r}", 403)

    def check_key(self):
        """With --api_key, every request but the page itself shows the key, as OpenAI's clients do."""
        if self.server.api_key is None:
            return
        scheme, _, key = self.headers.get("Authorization", "").strip().partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(),
                                                                   self.server.api_key.encode())):
            raise BadRequest("this server needs its API key (--api_key): send the header "
                             "Authorization: Bearer KEY", 401, code="invalid_api_key")

    def check_client(self):
        """Raise ClientLeft if the client has hung up: its connection reads as ended (readable, with
        nothing to read). A client that closes its sending half once its request is sent, as a few
        command-line tools can, reads the same: HTTP does not say which it is, and browsers and the
        OpenAI clients never do it."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            left = bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset
            left = True
        if left:
            raise ClientLeft

    def read_json(self):
        lengths = self.headers.get_all("Content-Length", [])
        if not lengths:
            chunked = " (a chunked body is not read)" if "Transfer-Encoding" in self.headers else ""
            raise BadRequest(f"send the JSON body with a Content-Length{chunked}", 411)
        length = lengths[0].strip()
        if len(set(lengths)) > 1 or not (length.isascii() and length.isdigit()):  # "²".isdigit() too
            raise BadRequest(f"Content-Length must be one number of bytes, got {', '.join(lengths)[:40]!r}")
        if len(length) > 15:  # not even read as a number: int() refuses 4,301 digits and more
            raise BadRequest(f"the body is a {len(length):,}-digit number of bytes: at most {MAX_BODY:,}",
                             413)
        size = int(length)
        if size > MAX_BODY:  # finish() reads it away, so that the client sees this
            raise BadRequest(f"the body is {size:,} bytes: at most {MAX_BODY:,}", 413)
        try:
            data = self.rfile.read(size)
        except TimeoutError:
            raise BadRequest(f"the body did not come in {self.timeout} s", 408) from None
        self.unread = False
        self.request_read()  # 408 if it was cut off
        if len(data) < size:
            raise BadRequest(f"the body ended after {len(data):,} of its {size:,} bytes")
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
        """Server-Sent Events: each 'data: {json}' goes out the moment it is made (the OpenAI API's
        last is 'data: [DONE]'). The 200 goes before the first token is drawn: a failure after it
        can only end the stream, saying why."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.connection.settimeout(SEND_S)  # a client that stops reading lets the model go
        try:
            for event in events:
                data = event.encode() if isinstance(event, str) else to_json(event)
                self.wfile.write(b"data: " + data + b"\n\n")
        except (ConnectionError, TimeoutError):  # the page stopped reading: Stop, anew, or stalled
            pass
        except Exception as e:
            self.log_error("the stream failed: %s", one_line(e))
            event = error_body(BadRequest(one_line(e), 500), self.api)
            self.wfile.write(b"data: " + to_json(event) + b"\n\n")
        finally:
            events.close()

    def send_error_json(self, e):
        if not self.answered:  # after a status line, a failure can only end the answer: a second
            self.send_json(e.status, error_body(e, self.api))  # would land inside the first one's body

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line or header, one too long) as JSON in
        the shape of the API asked, and as 408 if the request was cut off halfway."""
        self.close_connection = True
        self.unread = True  # say, the rest of a header too long
        if self.cut:
            code, message = 408, self.cut
        self.send_error_json(BadRequest(message or HTTPStatus(code).phrase, code))

    def send_json(self, status, obj):
        self.send_body(status, "application/json", to_json(obj))

    def send_response(self, code, message=None):
        self.answered = True  # one status line a request
        super().send_response(code, message)

    def send_body(self, status, kind, data):
        """A whole answer, a piece at a time: a client that stops taking them for SEND_S is left, as a
        stream's is (a slow network is not a stalled client: each piece has SEND_S)."""
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.connection.settimeout(SEND_S)
        try:
            self.end_headers()
            for start in range(0, len(data), SEND_PIECE):
                self.wfile.write(data[start:start + SEND_PIECE])
        except OSError:  # it hung up, or stopped reading: the answer ends there, cut short
            self.close_connection = True

    def finish(self):
        """The rest of a request refused unread is read and dropped for a moment: a socket closed with
        data still coming resets the connection, and the client may lose the answer that was sent."""
        try:
            super().finish()
            if self.unread:
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(LINGER_S)
                stop, dropped = time.monotonic() + LINGER_S, 0
                while time.monotonic() < stop and dropped < 16 * MAX_BODY:
                    data = self.connection.recv(MAX_BODY)
                    if not data:
                        break
                    dropped += len(data)
        except OSError:
            pass
        finally:
            with self.server.reading_lock:
                self.server.reading.discard(self)


# ------------------------------------------------------------ command line
def main(argv=None):
    p = argparse.ArgumentParser(prog="serve.py", description="A page that samples, shows attention and "
                                "chats, and the OpenAI API under /v1, for the model in --out_dir.")
    p.add_argument("--out_dir", default="out", help="the folder of the best.pt to serve (out)")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1: this machine only (default); "
                   "0.0.0.0: every network it is on; :: every IPv6 one too; ::1 this machine over IPv6")
    p.add_argument("--port", type=int, default=8000, help="8000 by default; 0: any free port")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--allowed_hosts", default="", help="DNS names other machines call this one by, "
                   "comma-separated (.example.com: it and its subdomains): other names get 403")
    p.add_argument("--api_key", default=os.environ.get("SERVE_API_KEY"), help="requests must send "
                   "Authorization: Bearer KEY (default: $SERVE_API_KEY, which ps does not show; unset: none)")
    p.add_argument("--model_name", default=None, help="the model's id in the OpenAI API (default: "
                   "--out_dir's folder name)")
    args = p.parse_args(argv)
    allowed = [name.strip() for name in args.allowed_hosts.split(",") if name.strip()]
    for name in allowed:
        if not host_name(name):
            p.error(f"argument --allowed_hosts: {name!r} is not a host name (gpu-box.lan, .example.com)")
    key = args.api_key
    if key and not (key.isascii() and key.isprintable() and " " not in key):  # not shown: it is a secret
        print("error: --api_key (or $SERVE_API_KEY) must be printable ASCII without spaces: a client "
              "sends it in a header, and no client could send this one", file=sys.stderr)
        return 1
    try:
        server = Server(args.out_dir, args.host, args.port, args.device, allowed, key or None,
                        args.model_name)
    except gpt.GPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the port is taken, the host is not this machine's, or it has no IPv6
        why = "it is in use: pick another --port" if e.errno == errno.EADDRINUSE else e.strerror or e
        print(f"error: cannot serve on {url(args.host.strip('[]'), args.port)}: {why}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    step = server.ckpt.get("iter")
    print(f"serving {server.path} (step {step}, {server.device}) at {url(host, port)}", flush=True)
    print(f"the OpenAI API at {url(host, port)}v1 (model {server.model_name!r}"
          f"{', API key required' if server.api_key else ''})", flush=True)
    if server.opened:
        print(f"--host {args.host}: the page is reachable from other machines, as "
              f"{url(socket.gethostname(), port)} or by address: anyone who reaches it can use the model"
              f"{'' if server.api_key else ' (--api_key asks for a key)'}", flush=True)
    print("Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
