"""
prepare.py: turn a text corpus of any size into token files once; gpt.py then trains on them
from a memory map and starts in seconds, whatever their size (nanoGPT's data/*/prepare.py).

    python scripts/prepare.py shakespeare.txt --out data/shakespeare             # characters
    python scripts/prepare.py my_books/ --out data/books --tokenizer bpe         # BPE, learned here
    python scripts/prepare.py TinyStories.jsonl --out data/stories --tokenizer gpt2
    python gpt.py --data data/books --config small
    python scripts/prepare.py chats/train.jsonl --out data/chats --vocab_from out/best.pt   # to fine-tune

INPUT: any mix of text files and folders (every *.txt and *.jsonl below a folder, sorted by path).
A .jsonl file holds one JSON object per line with a "text" field, the form most public corpora come
in. Each file (each .jsonl line) is a document; documents are joined by a blank line (char) or the
end-of-text token (bpe, gpt2). The last 10% of the characters validate, as with gpt.py --data FILE.

--tokenizer char: the input's characters, sorted (the ids gpt.py --data FILE gives);
            bpe:  byte-level BPE with --vocab_size tokens, learned from the training part by rustbpe
                  with GPT-4's split pattern and encoded by tiktoken, as nanochat does;
            gpt2: GPT-2's own 50,257 tokens (tiktoken downloads them once).
--vocab_from CKPT: the tokenizer of a gpt.py checkpoint, to fine-tune that model on this text. A char
            model's characters keep their ids; those it lacks are added after them, sorted, and named
            (gpt.py --init_from grows the model's embedding to match).

Conversations: .jsonl lines {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
(Hugging Face's chat datasets, OpenAI's fine-tuning files: an optional system turn, then user and
assistant by turns) or {"prompt": "...", "completion": "..."}. Each is written in the chat TEMPLATE
below, as plain text any tokenizer can learn, one line per turn:

    User: What is 12 + 30?
    Assistant: 42<end>

and OUT also gets train_mask.bin and val_mask.bin: one byte per token, 1 on what the model is to learn
to write (each assistant's content and its end marker), 0 elsewhere. The last 10% of the conversations
validate, none is cut in two. Conversations and "text" lines are not mixed in one input.

OUT gets train.bin and val.bin, the token ids as raw uint16 (uint32 past 65,536 tokens), nanoGPT's
format, and meta.json: the tokenizer, the documents, characters and tokens of each split, and for
conversations the template. All are written under temporary names and renamed at the end, meta.json
last, so a folder that was cut short never looks complete. The input is read in pieces of about a
megabyte: memory stays flat however big the corpus. bpe and gpt2 need rustbpe and tiktoken:
pip install -e ".[bpe]".
"""
import argparse
import codecs
import importlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

PIECE = 1 << 20  # bytes read at a time
EOT = "<|endoftext|>"  # bpe and gpt2: the token between two documents, always the last id
DEFAULT_VOCAB = 512  # bpe: the best val loss per character at equal time for the tiny preset (RESULTS.md)
# How a conversation is written as text, the same for every tokenizer: each turn is its role's prefix,
# its content, for the assistant the end marker (generation stops there), and a newline. gpt.py's
# chat_turn renders the turns of a chat the same way, from the copy kept in meta.json.
TEMPLATE = {"system": "System: ", "user": "User: ", "assistant": "Assistant: ", "end": "<end>"}
MASKS = ("train_mask.bin", "val_mask.bin")  # conversations only: 1 for each token of an answer


class PrepareError(Exception):
    """A problem with the input or the flags: one line, exit 1."""


def need(package):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise PrepareError(f'this needs the {package} package: pip install -e ".[bpe]" '
                           f"(or pip install {package})") from None


def input_files(inputs):
    """The files to read, in order: each INPUT file, and every *.txt and *.jsonl below a folder."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                           if f.endswith((".txt", ".jsonl")))
            if not found:
                raise PrepareError(f"folder {path} has no .txt or .jsonl files")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise PrepareError(f"{path} not found")
    return files


def read_text(path, progress):
    """A text file as pieces of whole lines (never split inside a word), checked to be UTF-8."""
    decoder, offset, carry = codecs.getincrementaldecoder("utf-8")(), 0, ""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(PIECE)
            pending = len(decoder.getstate()[0])  # bytes of a character split across two chunks
            try:
                text = carry + decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                raise PrepareError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                                   f"{at})") from None
            offset += len(chunk)
            progress.update(len(chunk))
            if not chunk:
                if text:
                    yield text
                return
            # Cut before the last space: " word" stays whole, as BPE's split pattern keeps it.
            cut = max(text.rfind(" "), 0) or text.rfind("\n") + 1 or len(text)
            if text[:cut]:
                yield text[:cut]
            carry = text[cut:]


def read_jsonl(path, progress):
    """Each line is a document: (where, "text", its "text") or (where, "chat", a conversation in the
    template), in (text, learned) pieces."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            progress.update(len(line))
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PrepareError(f"{where}: not UTF-8 text (byte {line[e.start]:#04x})") from None
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and "text" in record:
                text = checked(record["text"], '"text"', where)
                yield where, "text", [(text[i:i + PIECE], False) for i in range(0, len(text), PIECE)]
            elif isinstance(record, dict) and {"messages", "prompt", "completion"} & record.keys():
                yield where, "chat", render(conversation(record, where))
            else:
                raise PrepareError(f'{where}: not a JSON object with a "text" field (or "messages", or '
                                   '"prompt" and "completion")')


def checked(value, what, where):
    """value, if it is a string of whole characters."""
    if not isinstance(value, str):
        raise PrepareError(f"{where}: {what} is not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # "\ud83d" alone: half of an emoji, cut off
        raise PrepareError(f"{where}: {what} holds a lone surrogate escape, not a character") from None
    return value


def conversation(record, where):
    """The turns of a chat line, checked: [{"role": ..., "content": ...}, ...], an optional system
    turn first, then user and assistant by turns, at least one assistant turn (scripts/eval_chat.py
    reads its test file with this too)."""
    if "messages" in record:
        turns = record["messages"]
        if not isinstance(turns, list):
            raise PrepareError(f'{where}: "messages" is not a list')
        labels = [f"message {i}" for i in range(1, len(turns) + 1)]
    else:  # {"prompt": ..., "completion": ...}: one user turn, one assistant turn
        turns = [dict(role="user", content=record.get("prompt")),
                 dict(role="assistant", content=record.get("completion"))]
        labels = ['"prompt"', '"completion"']
    for turn, label in zip(turns, labels):
        at = f"{where}, {label}"
        if not isinstance(turn, dict):
            raise PrepareError(f'{at}: not an object with a "role" and a "content"')
        if turn.get("role") not in ("system", "user", "assistant"):
            raise PrepareError(f"{at}: unknown role {turn.get('role')!r} (system, user or assistant)")
        if turn.get("content") is None:
            raise PrepareError(f"{at}: no content")
        content = checked(turn["content"], "the content", at)
        if not content.strip():
            raise PrepareError(f"{at}: the content is empty")
        if turn["role"] == "assistant" and TEMPLATE["end"] in content:
            raise PrepareError(f"{at}: the answer holds the end marker {TEMPLATE['end']!r}, which ends "
                               "answers")
    roles = [turn["role"] for turn in turns]
    expected = ["system"] if roles[:1] == ["system"] else []
    expected += ["user", "assistant"] * len(turns)
    for role, should_be, label in zip(roles, expected, labels):
        if role != should_be:
            raise PrepareError(f"{where}, {label}: {role!r} where {should_be!r} belongs (an optional "
                               "system turn first, then user and assistant by turns)")
    if "assistant" not in roles:
        raise PrepareError(f"{where}: no assistant turn, so nothing to learn")
    return turns


def render(turns):
    """A conversation in the template as (text, learned) pieces, cut as gpt.chat_turn cuts a turn:
    each piece is encoded on its own, so no token spans a prefix and a content. learned: an answer's
    content and end marker, the tokens the loss is on."""
    pieces = []
    for turn in turns:
        answer = turn["role"] == "assistant"
        pieces.append((TEMPLATE[turn["role"]], False))
        pieces.append((turn["content"], answer))
        if answer:
            pieces.append((TEMPLATE["end"], True))
        pieces.append(("\n", False))
    return pieces


def documents(files, progress):
    """Every document of the files in order, as (kind, pieces): kind "text" or "chat", each piece a
    (text, learned) pair. The template is for conversations alone: a mix with plain texts is refused."""
    kinds = {"text": "plain text", "chat": "conversation"}
    first = None  # the kind of the first document: all must be of it
    for path in files:
        if path.endswith(".jsonl"):
            found = read_jsonl(path, progress)
        else:
            found = [(path, "text", ((piece, False) for piece in read_text(path, progress)))]
        for where, kind, pieces in found:
            if first is None:
                first = kind
            if kind != first:
                raise PrepareError(f"{where}: a {kinds[kind]} among {kinds[first]}s; prepare conversations "
                                   "and plain texts apart")
            yield kind, pieces


def corpus(files, progress):
    """The text of all documents in order, in pieces, with None between two documents."""
    for number, (_, pieces) in enumerate(documents(files, progress)):
        if number:
            yield None
        for text, _ in pieces:
            yield text


def split_at(pieces, n, boundary, counts):
    """(split, piece): "train" for the first n characters, "val" for the rest. A boundary between
    documents (None) counts as that many characters: 2 for char's blank line, 0 for a token."""
    seen, current = 0, set()  # current: the splits the document being read has reached
    for piece in pieces:
        if piece is None:
            yield ("train" if seen < n else "val"), None
            seen, current = seen + boundary, set()
            continue
        head = max(0, min(len(piece), n - seen))
        for split, part in ("train", piece[:head]), ("val", piece[head:]):
            if part:
                counts[split]["documents"] += split not in current
                current.add(split)
                yield split, part
        seen += len(piece)


def split_conversations(conversations, n_train, counts):
    """(split, text, learned) for every piece: the first n_train conversations train, the rest
    validate, none cut in two. None stands for the boundary between two conversations of a split."""
    for number, (_, pieces) in enumerate(conversations):
        split = "train" if number < n_train else "val"
        if number not in (0, n_train):
            yield split, None, False
        counts[split]["documents"] += 1
        for text, learned in pieces:
            yield split, text, learned


def split_pieces(files, progress, chat, n_train, boundary, counts):
    """(split, text, learned) for every piece of the input in order, None between two documents:
    conversations split by count, texts by characters."""
    if chat:
        yield from split_conversations(documents(files, progress), n_train, counts)
    else:
        for split, text in split_at(corpus(files, progress), n_train, boundary, counts):
            yield split, text, False


def bar(tqdm, total, what):
    return tqdm(total=total, unit="B", unit_scale=True, desc=what, file=sys.stderr, mininterval=0.5)


def make_tokenizer(kind, vocab_size, chars, train_pieces):
    """A new tokenizer for the text, as gpt.py stores it."""
    if kind == "char":
        return {"name": "char", "vocab": "".join(sorted(chars))}
    tiktoken = need("tiktoken")
    if kind == "gpt2":
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken downloads GPT-2's tokens once, then keeps them
            raise PrepareError(f"could not get GPT-2's tokens (tiktoken downloads them once: is there a "
                               f"network?): {str(e).splitlines()[0][:200]}") from None
        tokens = [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab - 1)]  # EOT is the last
        pattern = enc._pat_str
    else:
        learner = need("rustbpe").Tokenizer()  # its default split pattern is GPT-4's
        learner.train_from_iterator(train_pieces, vocab_size - 1)  # the last id is EOT's
        pattern = learner.get_pattern()
        tokens = [bytes(t) for t, _ in sorted(learner.get_mergeable_ranks(), key=lambda pair: pair[1])]
    # JSON holds text, so each token's bytes are stored as latin-1 characters: one per byte.
    return {"name": kind, "pattern": pattern, "tokens": [t.decode("latin-1") for t in tokens]}


def model_tokenizer(path):
    """The tokenizer a gpt.py checkpoint (best.pt or ckpt.pt) keeps: a BPE model's spec, a char
    model's characters in id order."""
    try:
        import torch  # only for --vocab_from: preparing a text needs no torch
    except ImportError:
        raise PrepareError("--vocab_from reads a checkpoint with torch: pip install torch") from None
    if not os.path.isfile(path):
        raise PrepareError(f"--vocab_from {path}: no checkpoint there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as e:  # the first line of torch's message says what is wrong
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise PrepareError(f"--vocab_from {path} is not a loadable checkpoint ({reason})") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("tokenizer"), dict):
        return ckpt["tokenizer"]
    if isinstance(ckpt, dict) and isinstance(ckpt.get("vocab"), str):
        return {"name": "char", "vocab": ckpt["vocab"]}
    raise PrepareError(f"--vocab_from {path} is not a gpt.py checkpoint (it keeps no vocab or tokenizer)")


def grown(spec, chars, path):
    """A char model's vocabulary, then the characters of the text it lacks, sorted: the model's ids
    keep their meaning, and gpt.py --init_from grows its embedding for the new ones."""
    new = "".join(sorted(chars - set(spec["vocab"])))
    if new:
        print(f"--vocab_from {path}: its {len(spec['vocab'])} characters, then {len(new)} new ones the "
              f"text has: {new!r}")
    return {"name": "char", "vocab": spec["vocab"] + new}


def encoder(spec):
    """A function from a text to its ids, for a tokenizer as gpt.py stores it."""
    if spec["name"] == "char":
        import numpy as np
        codes = np.array([ord(c) for c in spec["vocab"]], dtype=np.uint32)
        order = np.argsort(codes)  # the ids by code point: a vocabulary grown at its end is not sorted
        known = codes[order]
        def encode(text):  # every character's code point, looked up among the vocabulary's
            points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
            return order[np.searchsorted(known, points)]
        return encode
    tiktoken = need("tiktoken")
    ranks = {token.encode("latin-1"): i for i, token in enumerate(spec["tokens"])}
    enc = tiktoken.Encoding(spec["name"], pat_str=spec["pattern"], mergeable_ranks=ranks,
                            special_tokens={EOT: len(ranks)})
    return enc.encode_ordinary


def prepare(inputs, out, kind="char", vocab_size=None, vocab_from=None):
    import numpy as np
    tqdm = need("tqdm").tqdm
    model_spec = None
    if vocab_from is not None:  # the model's tokenizer, not a new one
        model_spec = model_tokenizer(vocab_from)
        kind = model_spec["name"]
    files = input_files(inputs)
    total_bytes = sum(os.path.getsize(f) for f in files)
    boundary = 2 if kind == "char" else 0  # char joins documents with a blank line, BPE with EOT
    # 1. Read everything once: is it all UTF-8 and well-formed, how many characters, which ones.
    chars, n_documents, n_text, chat = set(), 0, 0, False  # n_text: characters of the documents themselves
    with bar(tqdm, total_bytes, "reading") as progress:
        for document_kind, pieces in documents(files, progress):
            chat = document_kind == "chat"
            n_documents += 1
            for text, _ in pieces:
                n_text += len(text)
                chars.update(text)
    if n_text == 0:
        raise PrepareError(f"the input has no text: {', '.join(inputs)}")
    if n_documents > 1:
        chars.add("\n")  # of the blank line between two documents
    n_chars = n_text + boundary * (n_documents - 1)
    if chat:  # the last 10% of the conversations validate, at least one
        n_train = n_documents - max(1, n_documents // 10)
    else:  # the first 90% of the characters to learn from, as gpt.py does
        n_train = int(0.9 * n_chars)
    # 2. The tokenizer (bpe: learned from the training part only).
    def train_pieces():
        with bar(tqdm, total_bytes, "learning BPE") as progress:
            seen = {s: dict(documents=0) for s in ("train", "val")}
            for split, text, _ in split_pieces(files, progress, chat, n_train, boundary, seen):
                if split == "val":
                    return
                if text is not None:
                    yield text
    if model_spec is None:
        spec = make_tokenizer(kind, vocab_size, chars, train_pieces())
    elif kind == "char":
        spec = grown(model_spec, chars, vocab_from)
    else:
        spec = model_spec
    encode = encoder(spec)
    vocab_size = len(spec["vocab"]) if kind == "char" else len(spec["tokens"]) + 1
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    # 3. Encode, a batch of pieces on every core at once, and append to the token files (and masks).
    if os.path.exists(out) and not os.path.isdir(out):
        raise PrepareError(f"--out {out} is a file, not a folder")
    os.makedirs(out, exist_ok=True)
    written = ["train.bin", "val.bin", *(MASKS if chat else []), "meta.json"]  # renamed in this order
    paths = {name: os.path.join(out, name) for name in written}
    counts = {s: dict(documents=0, characters=0, tokens=0) for s in ("train", "val")}
    separator = "\n\n" if kind == "char" else None  # None: the end-of-text token
    cores = os.cpu_count() or 1
    def encode_run(texts):  # many pieces a task: a chat's are a few characters, too small to hand out alone
        return [encode(text) for text in texts]
    files_out = {}
    try:
        for name in written[:-1]:
            files_out[name] = open(paths[name] + ".tmp", "wb")
        with bar(tqdm, total_bytes, "encoding") as progress, ThreadPoolExecutor(cores) as pool:
            batch, size = [], 0  # size: the characters in the batch
            def flush():
                texts = [text or "" for _, text, _ in batch]
                step = len(texts) // cores + 1  # pieces per task
                runs = [texts[i:i + step] for i in range(0, len(texts), step)]
                encoded = [ids for run in pool.map(encode_run, runs) for ids in run]
                for (split, text, learned), ids in zip(batch, encoded):
                    ids = np.array([vocab_size - 1], dtype) if text is None else np.asarray(ids, dtype)
                    files_out[f"{split}.bin"].write(ids.tobytes())
                    if chat:
                        files_out[f"{split}_mask.bin"].write(np.full(len(ids), learned, np.uint8).tobytes())
                    counts[split]["tokens"] += len(ids)
                    counts[split]["characters"] += len(text or "")
                batch.clear()
            for split, text, learned in split_pieces(files, progress, chat, n_train, boundary, counts):
                batch.append((split, separator if text is None else text, learned))
                size += len(text or "")
                if size >= 4 * cores * PIECE or len(batch) >= 100_000:  # a few megabytes at a time
                    flush()
                    size = 0
            flush()
        for f in files_out.values():
            f.close()
        meta = dict(tokenizer=spec, dtype=np.dtype(dtype).name, **counts)
        if chat:
            meta["chat"] = TEMPLATE
        with open(paths["meta.json"] + ".tmp", "w", encoding="utf-8") as f:
            json.dump(meta, f)
        if os.path.exists(paths["meta.json"]):  # from here until the end the folder is not complete
            os.remove(paths["meta.json"])
        for name in MASKS:  # of conversations prepared here before: they would not fit these tokens
            if not chat and os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        for name in written:
            os.replace(paths[name] + ".tmp", paths[name])
    finally:
        for f in files_out.values():
            f.close()
        for path in paths.values():
            if os.path.exists(path + ".tmp"):
                os.remove(path + ".tmp")
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description="Turn text files into token files for gpt.py --data DIR.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text files, .jsonl files and folders")
    p.add_argument("--out", required=True, help="the folder to write train.bin, val.bin, meta.json into")
    p.add_argument("--tokenizer", choices=("char", "bpe", "gpt2"), help="(default: char)")
    p.add_argument("--vocab_size", type=int, help=f"bpe only: tokens to learn (default {DEFAULT_VOCAB})")
    p.add_argument("--vocab_from", metavar="CKPT", help="a gpt.py best.pt or ckpt.pt: encode with its "
                   "tokenizer, to fine-tune it (a char model gains the characters it lacks, at the end)")
    args = p.parse_args(argv)
    if args.vocab_from is not None and (args.tokenizer or args.vocab_size is not None):
        p.error("--vocab_from encodes with the model's own tokenizer: drop --tokenizer and --vocab_size")
    kind = args.tokenizer or "char"
    if args.vocab_size is not None and kind != "bpe":
        p.error(f"--vocab_size is for --tokenizer bpe (the {kind} vocabulary is fixed)")
    vocab_size = DEFAULT_VOCAB if args.vocab_size is None else args.vocab_size
    if not 257 <= vocab_size <= 200_000:
        p.error(f"--vocab_size {vocab_size}: byte-level BPE needs 256 byte tokens and the end-of-text "
                "token, so at least 257; at most 200,000")
    try:
        meta = prepare(args.inputs, args.out, kind, vocab_size, args.vocab_from)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file that cannot be read, a folder that cannot be written, a full disk
        print(f"error: {e.filename or args.out}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130
    tokens = meta["train"]["tokens"] + meta["val"]["tokens"]
    characters = meta["train"]["characters"] + meta["val"]["characters"]
    tokenizer = f"the {meta['tokenizer']['name']} tokenizer"
    next_step = f"Train on it: python gpt.py --data {args.out}"
    if args.vocab_from is not None:
        tokenizer += f" of {args.vocab_from}"
        next_step = f"Fine-tune on it: python gpt.py --init_from {args.vocab_from} --data {args.out}"
    if "chat" in meta:
        tokenizer += (f"; {meta['train']['documents']:,} conversations to learn from, "
                      f"{meta['val']['documents']:,} to validate")
    print(f"wrote {args.out}: {tokens:,} tokens ({characters / tokens:.2f} characters each; "
          f"train {meta['train']['tokens']:,}, val {meta['val']['tokens']:,}) with {tokenizer}. {next_step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
