"""
from_gpt2.py: OpenAI's GPT-2 weights as a gpt.py checkpoint, so the model you read in gpt.py runs
the real thing (nanoGPT's GPT.from_pretrained, as a script beside the tutorial).

    python scripts/from_gpt2.py gpt2 --out_dir out_gpt2          # 124M; also gpt2-medium, -large, -xl
    python gpt.py --sample --out_dir out_gpt2 --prompt "The meaning of life is"
    python scripts/prepare.py my_text.txt --out data/mine --tokenizer gpt2
    python gpt.py --init_from out_gpt2/best.pt --data data/mine --out_dir out_mine   # fine-tune

It loads the weights with Hugging Face transformers (GPT2LMHeadModel.from_pretrained: a name on the
Hub, downloaded once and cached, or a local folder it saved), copies them onto gpt.py's GPT, and
writes OUT_DIR/best.pt in gpt.py's own format: the config (GPT-2's shape, block_size 1024, vocab
50,257, the tanh GELU), GPT-2's tokenizer (so --sample needs nothing else) and iter 0. GPT-2 and
gpt.py's model are the same network under the same names; only Hugging Face's Conv1D layers store
their weight matrices transposed. Needs: pip install -e ".[gpt2]".

A folder scripts/to_hf.py wrote comes back whole, whatever its tokenizer: its tokenizer.json gives a
char model's characters or a BPE's tokens and split pattern, its tokenizer_config.json a chat model's
template, so gpt.py --sample writes what it wrote before the export.

    python scripts/to_hf.py out/best.pt --out hf_model
    python scripts/from_gpt2.py hf_model --out_dir out_back
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt  # noqa: E402  the model and the checkpoint format this writes

SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # 124M, 350M, 774M, 1558M parameters
try:  # GPT-2's split pattern in the very words tiktoken's gpt2 encoding uses, as prepare.py --tokenizer gpt2
    from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PATTERN  # stores it: gpt.py compares the two
except ImportError:  # no tiktoken (the gpt2 extra brings it): the same splits, as GPT-2's paper wrote them
    GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Fine-tuning starts gently: a small learning rate, constant, and a short run (nanoGPT's
# finetune_shakespeare); flags given with --init_from override any of these.
FINE_TUNING = dict(batch_size=8, block_size=1024, max_iters=100, eval_interval=20, eval_iters=20,
                   learning_rate=3e-5, min_lr=3e-5, warmup_iters=0, dropout=0.0)


def byte_of_character():
    """GPT-2's vocab.json writes each byte as a printable character; this undoes it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


def hub_answers(seconds=3.0):
    """Whether the Hugging Face Hub (HF_ENDPOINT, through any proxy) answers within a few seconds.
    Without a network huggingface_hub retries each file with back-off, eleven lines of "Retrying in
    8s" over half a minute, before it gives up; asked first, this script reads only the cache then,
    and says what is missing in one line. The probe runs in a thread: a name lookup that hangs (no DNS
    server) is bounded too."""
    import threading
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session
    if constants.HF_HUB_OFFLINE:  # HF_HUB_OFFLINE=1: the user says so already
        return False
    answered = []
    def probe():
        try:
            get_session().head(constants.ENDPOINT, timeout=seconds)  # any answer, even an error page
            answered.append(True)
        except Exception:  # no route, no name, refused, timed out
            pass
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(answered)


def tokenizer_spec(source, vocab_size, local_files_only=False):
    """GPT-2's tokens as gpt.py keeps them: each token's bytes in id order, end-of-text last."""
    if os.path.isdir(source):
        path = os.path.join(source, "vocab.json")
        if not os.path.isfile(path):
            raise gpt.GPTError(f"{source} has no vocab.json: GPT-2's tokens are needed beside its weights")
    else:
        from huggingface_hub import hf_hub_download
        try:
            path = hf_hub_download(source, "vocab.json", local_files_only=local_files_only)
        except Exception as e:  # no network and no cached copy
            raise gpt.GPTError(f"cannot get {source}'s vocab.json (no network and no cached copy?): "
                               f"{str(e).splitlines()[0][:200]}") from None
    with open(path, encoding="utf-8") as f:
        vocab = json.load(f)
    return byte_level_spec(vocab, GPT2_PATTERN, "gpt2", vocab_size, path)


def byte_level_spec(vocab, pattern, name, vocab_size, path):
    """A byte-level BPE vocabulary ({token: id}, each byte written as a printable character) as
    gpt.py keeps it: each token's bytes in id order, end-of-text last. Its merges are not needed:
    tiktoken joins the lowest-ranked pair first, and a token's id is its rank."""
    decode = byte_of_character()
    by_id = {i: token for token, i in vocab.items() if i < vocab_size}
    if sorted(by_id) != list(range(vocab_size)) or by_id[vocab_size - 1] != "<|endoftext|>":
        raise gpt.GPTError(f"{path} does not hold {vocab_size} tokens ending with <|endoftext|>, as GPT-2's does")
    if not all(c in decode for i in range(vocab_size - 1) for c in by_id[i]):
        raise gpt.GPTError(f"{path} is not a byte-level vocabulary (as GPT-2's is)")
    tokens = [bytes(decode[c] for c in by_id[i]).decode("latin-1") for i in range(vocab_size - 1)]
    return {"name": name, "pattern": pattern, "tokens": tokens}


def split_pattern(pre_tokenizer, path):
    """The split pattern of a byte-level BPE's pre-tokenizer: the Split just before its ByteLevel
    step (a to_hf.py chat model's cuts its turns first), or GPT-2's, which ByteLevel alone holds."""
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer])
    at = next((i for i, step in enumerate(steps) if step.get("type") == "ByteLevel"), None)
    if at is None:
        raise gpt.GPTError(f"{path} is not a byte-level BPE (as GPT-2's is): gpt.py cannot run it")
    if steps[at].get("use_regex", True):
        return GPT2_PATTERN
    if at and steps[at - 1].get("type") == "Split" and "Regex" in steps[at - 1].get("pattern", {}):
        return steps[at - 1]["pattern"]["Regex"]
    raise gpt.GPTError(f"{path} splits text in a way gpt.py's BPE cannot (no split pattern)")


def folder_tokenizer(folder, vocab_size):
    """A folder's tokenizer.json (what transformers runs) as gpt.py keeps a tokenizer: a char model's
    characters in id order ({"name": "char", "vocab": ...}), or a byte-level BPE's spec; and the chat
    template that scripts/to_hf.py keeps in tokenizer_config.json's "gpt_py" entry. (None, None)
    without a tokenizer.json: GPT-2's own folders have vocab.json."""
    path, ours = os.path.join(folder, "tokenizer.json"), {}
    if not os.path.isfile(path):
        return None, None
    try:  # a problem gpt.py can name is a GPTError; any other means files that are not to_hf.py's
        with open(path, encoding="utf-8") as f:
            tokenizer = json.load(f)
        if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
            with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
                ours = json.load(f).get("gpt_py") or {}
        chat = ours.get("chat")
        if chat is not None and not all(isinstance(chat[k], str) for k in ("system", "user", "assistant", "end")):
            raise ValueError("its chat template is not made of strings")
        model, added = tokenizer["model"], tokenizer.get("added_tokens", [])
        # ids past the model's vocabulary are to_hf.py's "abcdef", for transformers' stop strings
        vocab = {**model.get("vocab", {}), **{token["content"]: token["id"] for token in added}}
        if model.get("type") == "WordLevel":  # a char model's: each character its own token
            chars = {i: ch for ch, i in vocab.items() if i < vocab_size}
            if sorted(chars) != list(range(vocab_size)) or any(len(ch) != 1 for ch in chars.values()):
                raise gpt.GPTError(f"{path} does not give the model's {vocab_size} ids one character each")
            return {"name": "char", "vocab": "".join(chars[i] for i in range(vocab_size))}, chat
        if model.get("type") != "BPE":
            raise gpt.GPTError(f"{path} holds a {model.get('type')} tokenizer: gpt.py runs characters "
                               "or a byte-level BPE")
        pattern = split_pattern(tokenizer.get("pre_tokenizer") or {}, path)
        name = ours.get("tokenizer") or ("gpt2" if vocab_size == 50257 else "bpe")  # older to_hf.py's: guessed
        return byte_level_spec(vocab, pattern, name, vocab_size, path), chat
    except (OSError, ValueError, LookupError, TypeError, AttributeError) as e:
        raise gpt.GPTError(f"{folder}'s tokenizer.json or tokenizer_config.json is not one gpt.py "
                           f"reads ({type(e).__name__}: {str(e)[:100]})") from None


def convert(hf_model):
    """gpt.py's GPT with the weights of a transformers GPT2LMHeadModel, and its config."""
    c = hf_model.config
    if c.model_type != "gpt2" or c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn:
        raise gpt.GPTError(f"this is not a plain GPT-2 model (model_type {c.model_type})")
    if c.n_inner not in (None, 4 * c.n_embd) or c.layer_norm_epsilon != 1e-5:
        raise gpt.GPTError(f"this GPT-2 has an MLP of {c.n_inner} or a LayerNorm eps of {c.layer_norm_epsilon}: "
                           "gpt.py's model has 4 x n_embd and 1e-5")
    gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}.get(c.activation_function)
    if gelu is None:
        raise gpt.GPTError(f"GPT-2 with activation {c.activation_function} is not one gpt.py computes")
    config = {**gpt.DEFAULTS, **FINE_TUNING, "config": None, "n_layer": c.n_layer, "n_head": c.n_head,
              "n_embd": c.n_embd, "block_size": c.n_positions, "vocab_size": c.vocab_size, "gelu": gelu}
    model = gpt.GPT(gpt.GPTConfig(**{k: config[k] for k in gpt.MODEL_KEYS}, dropout=0.0))
    theirs = hf_model.state_dict()
    ours = {k: theirs[k].t() if k.endswith(CONV1D) else theirs[k] for k in model.state_dict()}
    model.load_state_dict(ours)  # strict: every name matched, every shape right
    return model, config


def main(argv=None):
    p = argparse.ArgumentParser(description="Write OpenAI's GPT-2 as a gpt.py checkpoint.")
    p.add_argument("source", nargs="?", default="gpt2", help=f"{', '.join(SIZES)}, or a local folder")
    p.add_argument("--out_dir", default="out_gpt2", help="where best.pt goes (default out_gpt2)")
    p.add_argument("--overwrite", action="store_true", help="replace a model that out_dir holds")
    args = p.parse_args(argv)
    try:
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise gpt.GPTError('this needs transformers: pip install -e ".[gpt2]" (or pip install transformers)')
        if not os.path.isdir(args.source) and args.source not in SIZES:
            raise gpt.GPTError(f"{args.source} is neither a folder nor one of {', '.join(SIZES)}")
        # No Hub within 3 s: only the cache, at once, instead of half a minute of retries first
        cache_only = not os.path.isdir(args.source) and not hub_answers()
        try:
            hf_model = GPT2LMHeadModel.from_pretrained(args.source, local_files_only=cache_only)
        except (OSError, ValueError) as e:
            where = "the folder" if os.path.isdir(args.source) else \
                "no network to the Hub, and no cached copy" if cache_only else "the download failed, and no cached copy"
            raise gpt.GPTError(f"cannot load {args.source} ({where}): {str(e).splitlines()[0]}") from None
        model, config = convert(hf_model)
        spec, chat = None, None
        if os.path.isdir(args.source):  # a folder to_hf.py wrote has any of gpt.py's tokenizers
            spec, chat = folder_tokenizer(args.source, config["vocab_size"])
        spec = spec or tokenizer_spec(args.source, config["vocab_size"], local_files_only=cache_only)
        gpt.claim_out_dir(args.out_dir, fresh=not args.overwrite)  # never replaces a trained model unasked
        path = os.path.join(args.out_dir, "best.pt")
        ckpt = dict(model=model.state_dict(), config=config, tokenizer=spec, vocab=None, chat=chat,
                    iter=0, best_val_loss=float("nan"))
        if spec["name"] == "char":  # a char model keeps its characters as gpt.py's own runs do
            ckpt.update(vocab=ckpt.pop("tokenizer")["vocab"])
        gpt.save_atomic(ckpt, path)
    except gpt.GPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(t.numel() for t in model.parameters())
    print(f"wrote {path}: GPT-2 with {n / 1e6:,.2f}M parameters ({config['n_layer']} layers, {config['n_head']} "
          f"heads, {config['n_embd']} wide). Try: python gpt.py --sample --out_dir {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
