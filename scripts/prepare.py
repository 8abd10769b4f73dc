"""
prepare.py: turn a text corpus of any size into token files once; gpt.py then trains on them
from a memory map and starts in seconds, whatever their size (nanoGPT's data/*/prepare.py).

    python scripts/prepare.py shakespeare.txt --out data/shakespeare             # characters
    python scripts/prepare.py my_books/ --out data/books --tokenizer bpe         # BPE, learned here
    python scripts/prepare.py TinyStories.jsonl --out data/stories --tokenizer gpt2
    python gpt.py --data data/books --config small

INPUT: any mix of text files and folders (every *.txt and *.jsonl below a folder, sorted by path).
A .jsonl file holds one JSON object per line with a "text" field, the form most public corpora come
in. Each file (each .jsonl line) is a document; documents are joined by a blank line (char) or the
end-of-text token (bpe, gpt2). The last 10% of the characters validate, as with gpt.py --data FILE.

--tokenizer char: the input's characters, sorted (the ids gpt.py --data FILE gives);
            bpe:  byte-level BPE with --vocab_size tokens, learned from the training part by rustbpe
                  with GPT-4's split pattern and encoded by tiktoken, as nanochat does;
            gpt2: GPT-2's own 50,257 tokens (tiktoken downloads them once).

OUT gets train.bin and val.bin, the token ids as raw uint16 (uint32 past 65,536 tokens), nanoGPT's
format, and meta.json: the tokenizer and the documents, characters and tokens of each split. All
three are written under temporary names and renamed at the end, meta.json last, so a folder that
was cut short never looks complete. The input is read in pieces of about a megabyte: memory stays
flat however big the corpus. bpe and gpt2 need rustbpe and tiktoken: pip install -e ".[bpe]".
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
    """Each line's "text" is a document."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            progress.update(len(line))
            if not line.strip():
                continue
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PrepareError(f"{path}, line {number}: not UTF-8 text (byte {line[e.start]:#04x})") from None
            try:
                text = json.loads(line)["text"]
            except (ValueError, TypeError, KeyError):  # not JSON, not an object, no "text"
                raise PrepareError(f'{path}, line {number}: not a JSON object with a "text" field') from None
            if not isinstance(text, str):
                raise PrepareError(f'{path}, line {number}: "text" is not a string')
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # "\ud83d" alone: half of an emoji, cut off
                raise PrepareError(f'{path}, line {number}: "text" holds a lone surrogate escape, '
                                   "not a character") from None
            yield [text[i:i + PIECE] for i in range(0, len(text), PIECE)]


def corpus(files, progress):
    """The documents of all files in order, in pieces, with None between two documents."""
    first = True
    for path in files:
        documents = read_jsonl(path, progress) if path.endswith(".jsonl") else [read_text(path, progress)]
        for document in documents:
            if not first:
                yield None
            first = False
            yield from document


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


def bar(tqdm, total, what):
    return tqdm(total=total, unit="B", unit_scale=True, desc=what, file=sys.stderr, mininterval=0.5)


def make_tokenizer(kind, vocab_size, chars, train_pieces):
    """The tokenizer as gpt.py stores it, and a function from a list of text pieces to id lists."""
    if kind == "char":
        import numpy as np
        vocab = "".join(sorted(chars))
        codes = np.array([ord(c) for c in vocab], dtype=np.uint32)
        def encode(text):  # every character's code point, looked up in the sorted vocabulary
            return np.searchsorted(codes, np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32))
        return {"name": "char", "vocab": vocab}, encode
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
    enc = tiktoken.Encoding(kind, pat_str=pattern, mergeable_ranks={t: i for i, t in enumerate(tokens)},
                            special_tokens={EOT: len(tokens)})
    # JSON holds text, so each token's bytes are stored as latin-1 characters: one per byte.
    spec = {"name": kind, "pattern": pattern, "tokens": [t.decode("latin-1") for t in tokens]}
    return spec, lambda text: enc.encode_ordinary(text)


def prepare(inputs, out, kind="char", vocab_size=None):
    import numpy as np
    tqdm = need("tqdm").tqdm
    files = input_files(inputs)
    total_bytes = sum(os.path.getsize(f) for f in files)
    boundary = 2 if kind == "char" else 0  # char joins documents with a blank line, BPE with EOT
    # 1. Read everything once: is it all UTF-8 and well-formed, how many characters, which ones.
    chars, n_chars, n_text = set(), 0, 0  # n_text: characters of the documents themselves
    with bar(tqdm, total_bytes, "reading") as progress:
        for piece in corpus(files, progress):
            n_chars += boundary if piece is None else len(piece)
            n_text += 0 if piece is None else len(piece)
            chars.update("\n" if piece is None else piece)
    if n_text == 0:
        raise PrepareError(f"the input has no text: {', '.join(inputs)}")
    n_train = int(0.9 * n_chars)  # the first 90% of the characters to learn from, as gpt.py does
    # 2. The tokenizer (bpe: learned from the training part only).
    def train_pieces():
        with bar(tqdm, total_bytes, "learning BPE") as progress:
            seen = {s: dict(documents=0) for s in ("train", "val")}
            for split, piece in split_at(corpus(files, progress), n_train, boundary, seen):
                if split == "val":
                    return
                if piece is not None:
                    yield piece
    spec, encode = make_tokenizer(kind, vocab_size, chars, train_pieces())
    vocab_size = len(spec["vocab"]) if kind == "char" else len(spec["tokens"]) + 1
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    # 3. Encode, a batch of pieces on every core at once, and append to the token files.
    if os.path.exists(out) and not os.path.isdir(out):
        raise PrepareError(f"--out {out} is a file, not a folder")
    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in ("train.bin", "val.bin", "meta.json")}
    counts = {s: dict(documents=0, characters=0, tokens=0) for s in ("train", "val")}
    separator = "\n\n" if kind == "char" else None  # None: the end-of-text token
    files_out = {}
    try:
        for s in ("train", "val"):
            files_out[s] = open(paths[f"{s}.bin"] + ".tmp", "wb")
        with bar(tqdm, total_bytes, "encoding") as progress, ThreadPoolExecutor() as pool:
            batch = []
            def flush():
                for (split, piece), ids in zip(batch, pool.map(encode, [p or "" for _, p in batch])):
                    ids = np.array([vocab_size - 1], dtype) if piece is None else np.asarray(ids, dtype)
                    files_out[split].write(ids.tobytes())
                    counts[split]["tokens"] += len(ids)
                    counts[split]["characters"] += len(piece or "")
                batch.clear()
            for split, piece in split_at(corpus(files, progress), n_train, boundary, counts):
                batch.append((split, separator if piece is None else piece))
                if len(batch) >= 4 * (os.cpu_count() or 1):  # a few megabytes at a time
                    flush()
            flush()
        for f in files_out.values():
            f.close()
        meta = dict(tokenizer=spec, dtype=np.dtype(dtype).name, **counts)
        with open(paths["meta.json"] + ".tmp", "w", encoding="utf-8") as f:
            json.dump(meta, f)
        if os.path.exists(paths["meta.json"]):  # from here until the end the folder is not complete
            os.remove(paths["meta.json"])
        for name in ("train.bin", "val.bin", "meta.json"):
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
    p.add_argument("--tokenizer", choices=("char", "bpe", "gpt2"), default="char")
    p.add_argument("--vocab_size", type=int, help=f"bpe only: tokens to learn (default {DEFAULT_VOCAB})")
    args = p.parse_args(argv)
    if args.vocab_size is not None and args.tokenizer != "bpe":
        p.error(f"--vocab_size is for --tokenizer bpe (the {args.tokenizer} vocabulary is fixed)")
    vocab_size = DEFAULT_VOCAB if args.vocab_size is None else args.vocab_size
    if not 257 <= vocab_size <= 200_000:
        p.error(f"--vocab_size {vocab_size}: byte-level BPE needs 256 byte tokens and the end-of-text "
                "token, so at least 257; at most 200,000")
    try:
        meta = prepare(args.inputs, args.out, args.tokenizer, vocab_size)
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
    print(f"wrote {args.out}: {tokens:,} tokens ({characters / tokens:.2f} characters each; "
          f"train {meta['train']['tokens']:,}, val {meta['val']['tokens']:,}) with the {args.tokenizer} "
          f"tokenizer. Train on it: python gpt.py --data {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
