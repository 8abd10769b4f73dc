"""
to_hf.py: a gpt.py checkpoint as a Hugging Face model folder, which transformers loads as it is
(no remote code, no network); scripts/from_gpt2.py reads such a folder back.

    python scripts/to_hf.py out/best.pt --out hf_model
    python -c "from transformers import pipeline; print(pipeline('text-generation', 'hf_model')('A'))"

gpt.py's model is GPT-2's network under GPT-2's names, so the folder is a GPT-2 (GPT2LMHeadModel):
- config.json: gpt.py's shape; n_positions is block_size, the activation "gelu" (exact erf) or
  "gelu_new" (GPT-2's tanh), LayerNorm eps 1e-5, tied embeddings;
- model.safetensors: the weights, c_attn, c_fc and c_proj transposed (Hugging Face's GPT-2 keeps
  them in Conv1D layers, (in, out));
- tokenizer.json and tokenizer_config.json, giving gpt.py's ids: a char model's characters one by
  one, a BPE or GPT-2 model's byte-level BPE (its split pattern, its tokens, <|endoftext|> last).
  A char model lacking any of a-f gets one token more, "abcdef" at id vocab_size, without which
  transformers' stop strings fail (see char_tokenizer): the word "abcdef" in a text gives that id,
  which the model cannot read (the card says so; gpt.py refuses such a text, for its letters).
  tokenizer_config.json's "gpt_py" entry keeps the tokenizer's name and the chat template as gpt.py
  has them, for from_gpt2.py. A GPT-2 checkpoint also gets GPT-2's vocab.json and merges.txt;
- a chat model's template as the tokenizer's chat_template (a conversation gets the ids training
  saw). Its end marker stops generate() by itself where it is one token (eos_token_id); a longer one
  is a stop string, given at call time (README.md shows how): in generation_config.json it would
  make every generate() without a tokenizer fail;
- generation_config.json (gpt.py --sample's defaults: temperature 0.8, no top-k; at most
  block_size tokens, prompt included) and README.md, a model card whose snippets run as they are.

--out is a new or empty folder. A folder holding anything else is refused, untouched, unless
--overwrite is given (a folder of an earlier export too: that is a model, replaced only when asked).
--overwrite replaces the files above and keeps everything else there; it names those transformers
would read too (an earlier GPT-2 export's vocab.json, say), which the user may want to remove.
The files are written aside in --out (a hidden .to_hf-* folder) and moved in when all are there. An
export stopped (Ctrl-C, SIGTERM, SIGHUP, a full disk) removes what it made; one killed outright
(kill -9) leaves its folder aside, which the next export into --out removes.
Needs: pip install -e ".[gpt2]".
"""
import argparse
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt  # noqa: E402  the checkpoint format this reads
from from_gpt2 import CONV1D, FINE_TUNING, byte_of_character  # noqa: E402  its mapping, reversed

EOT = "<|endoftext|>"
STAGE = ".to_hf-"  # the start of the name of the folder in --out where the files are written first
# What this writes; a GPT-2 checkpoint's folder also GPT-2's own vocab.json and merges.txt
FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
         "README.md", "config.json")
GPT2_FILES = ("vocab.json", "merges.txt")
# Files transformers also reads beside those, when a folder has them: --overwrite keeps them, and
# says so, since they would change what the folder does (a chat_template.jinja replaces the template)
READ_BESIDE = ("vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
               "chat_template.jinja", "chat_template.json", "tokenizer.model", "pytorch_model.bin",
               "model.safetensors.index.json", "pytorch_model.bin.index.json")
# A gpt.py run's settings, as flags: what made its model and how it trained, not where it ran
# (device, dtype, compile, out_dir) nor how it samples. README.md's command names the main ones
RUN_FLAGS = ("data", "init_from", "n_layer", "n_head", "n_embd", "block_size", "gelu", "dropout",
             "batch_size", "max_iters", "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters",
             "eval_interval", "eval_iters", "weight_decay", "grad_clip", "grad_accum", "seed")
MAIN_FLAGS = ("data", "n_layer", "n_head", "n_embd", "block_size", "dropout", "batch_size",
              "max_iters", "learning_rate")
# The flags of scripts/rl.py from before its checkpoints said "made_by": they are in config
OLD_RL_FLAGS = ("init_from", "data", "out_dir", "eval_data", "max_iters", "batch_size", "samples",
                "temperature", "learning_rate", "sft_data", "sft_weight", "grad_clip", "max_new_tokens",
                "eval_interval", "seed")
# transformers sets up stop strings by encoding this text (StopStringCriteria.clean_tokenizer_vocab)
STOP_STRING_PROBE = "abcdef"


def lacks_probe(vocab):  # a char model without one of a-f: its tokenizer has a token more
    return not set(STOP_STRING_PROBE) <= set(vocab)


def char_tokenizer(vocab):
    """Each character its own token, with gpt.py's id; decoding joins them with nothing between."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    # No unknown token: a character the model never saw is an error, as in gpt.py, not a wrong id
    ids = {ch: i for i, ch in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordLevel(ids, unk_token=None))
    # [\s\S]: any one character, newlines too
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    if lacks_probe(vocab):
        # transformers encodes "abcdef" to set up stop strings, and finds it again in a decoding:
        # a model of sums (digits, no letters) could not stop at its end marker. So the text
        # "abcdef" is one more token, id vocab_size, one the model never writes. No way was found
        # to keep a user's text from it (transformers' probe is a text like any other), nor one
        # without it: a text holding the word "abcdef" gets that id, which the model cannot read
        # (generate fails), where gpt.py refuses it. single_word: only as a word, so that
        # "12abcdef3" is refused, as gpt.py refuses it, and not given that id.
        tokenizer.add_tokens([AddedToken(STOP_STRING_PROBE, normalized=False, special=False,
                                         single_word=True)])
    return tokenizer


def literal(text):  # a regex that matches text alone: Oniguruma's \x{..} for all but letters, digits
    return "".join(ch if ch.isalnum() else f"\\x{{{ord(ch):x}}}" for ch in text)


def bpe_tokenizer(spec, chat=None):
    """tiktoken's byte-level BPE (gpt.py's BPETokenizer) as a tokenizers BPE: the same ids. A chat
    model's is cut first where the pieces of a turn meet (scripts/chat.py encodes them one by one,
    as training did): before and after a role's prefix and the end marker, and at the newline
    that ends a turn. Only a plain text holding those pieces encodes otherwise than gpt.py's."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    # Hugging Face's byte-level vocabularies write each byte as a printable character
    printable = {b: ch for ch, b in byte_of_character().items()}
    def text(token):
        return "".join(printable[b] for b in token)
    tokens = [t.encode("latin-1") for t in spec["tokens"]]
    ids = {t: i for i, t in enumerate(tokens)}
    # tiktoken joins any two neighbours whose bytes make a token, the lowest-ranked token first,
    # the leftmost of equals first: so each way to cut a token in two tokens is a merge, ranked by
    # that token (transformers' tiktoken converter does the same). A BPE ranks each merge apart:
    # "aaa" from (aa, a) and from (a, aa) do not tie, as they do in tiktoken. That cannot change
    # an encoding: the two halves of a pair that makes a token were made from its bytes alone, by
    # the same merges wherever it occurs, so all pairs that make one token at one time are cut at
    # one place (test_to_hf.py tries a token's cuts in both orders against tiktoken)
    merges = [(text(t[:k]), text(t[k:])) for t in tokens for k in range(1, len(t))
              if t[:k] in ids and t[k:] in ids]
    vocab = {text(t): i for t, i in ids.items()}
    # ignore_merges: a piece that is a token whole is that token, as tiktoken looks it up first
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    steps = [pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    if chat:
        prefixes = "|".join(literal(chat[role]) for role in ("system", "user", "assistant"))
        turns = f"{prefixes}|{literal(chat['end'])}|\\n(?={prefixes}|\\z)"
        steps.insert(0, pre_tokenizers.Split(Regex(turns), behavior="isolated"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])  # the last id
    return tokenizer, vocab, merges


def chat_template(chat):
    """scripts/chat.py's chat_turn in Jinja: each turn is its role's prefix, the content, for the
    assistant the end marker, and a newline; the generation prompt is the assistant's prefix.
    transformers' pipeline returns an answer with the end marker it stopped at: appended to the
    conversation, that marker is dropped, so the turn is rendered once, as chat.py renders it
    (an answer never holds the marker in training: prepare.py refuses one that does)."""
    roles = {role: chat[role] for role in ("system", "user", "assistant")}
    prefix = json.dumps(roles, ensure_ascii=False)  # JSON strings are Jinja string literals too
    end = json.dumps(chat["end"], ensure_ascii=False)
    return ("{% set prefix = " + prefix + " %}{% set end = " + end + " %}"
            "{% for message in messages %}"
            "{% if message['role'] not in prefix %}"
            "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
            "{% set content = message['content'] %}"
            "{% if message['role'] == 'assistant' and content.endswith(end) %}"
            "{% set content = content[:content|length - end|length] %}{% endif %}"
            "{{ prefix[message['role']] + content }}"
            "{% if message['role'] == 'assistant' %}{{ end }}{% endif %}"
            "{{ '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ prefix['assistant'] }}{% endif %}")


def command(script, args):
    """The command line of a made_by record: --name value for each flag, a switch alone when on."""
    words = ["python", script]
    for name, value in args.items():
        if value is None or value is False:  # a flag left at None, a switch left off
            continue
        words.append(f"--{name}")
        if value is not True:
            words.append(shlex.quote(str(value)))
    return " ".join(words)


def gpt_command(c):
    """The gpt.py command that makes the run of config c again: its preset, its main settings, and
    each other one that the preset and gpt.py's defaults would not give. A run --init_from takes
    what a preset sets from the checkpoint it starts from, not from a preset (its config names the
    default one, medium, which it never used): no --config then, and every setting a preset holds."""
    init = c.get("init_from")
    preset = {} if init else gpt.PRESETS.get(c.get("config"), {})
    given = {**gpt.DEFAULTS, **preset}  # what the command gives a setting it does not name
    words = ["python gpt.py"]
    if not init and c.get("config") is not None:
        words += ["--config", c["config"]]
    for k in RUN_FLAGS:
        named = k in MAIN_FLAGS or (init and k in gpt.PRESETS["tiny"]) or c.get(k) != given.get(k)
        if named and c.get(k) is not None:  # None: the default (no lr_decay_iters: max_iters)
            words += [f"--{k}", shlex.quote(str(c[k]))]
    return " ".join(words)


def from_gpt2_made(ckpt):
    """Whether from_gpt2.py wrote this checkpoint: step 0, no loss measured, and its settings for
    fine-tuning, under no preset."""
    c = ckpt["config"]
    settings = {k: v for k, v in FINE_TUNING.items() if k != "block_size"}  # block: the model's
    return (ckpt["iter"] == 0 and math.isnan(ckpt["best_val_loss"]) and c.get("config") is None
            and all(c.get(k) == v for k, v in settings.items()))


def made_by(ckpt):
    """The tool beside gpt.py that made a checkpoint, and its flags: (script, {flag: value}), or
    None for gpt.py's own. scripts/rl.py names itself in "made_by", and its config then describes
    the model in gpt.py's terms; an rl.py from before that wrote its flags over the config, and
    "accuracy" beside it, so its flags are read back from there."""
    maker, c = ckpt.get("made_by"), ckpt["config"]
    if isinstance(maker, dict):
        args = maker.get("args")
        return str(maker.get("script")), args if isinstance(args, dict) else {}
    if "accuracy" in ckpt or {"samples", "eval_data"} & c.keys():  # an older rl.py's
        return "scripts/rl.py", {k: c.get(k) for k in OLD_RL_FLAGS}
    return None


def provenance(ckpt, exported):
    """README.md's "Trained on" and "Made by": what made the checkpoint, from what, how far."""
    c, steps, maker = ckpt["config"], ckpt["iter"], made_by(ckpt)
    if maker:
        script, args = maker
        start = f"`{args['init_from']}`" if args.get("init_from") else "the model it started from"
        if steps:
            data = f"`{args['data']}`, " if args.get("data") else ""
            trained = f"{data}{steps:,} steps of {script}, starting from {start}"
        else:  # an rl.py best.pt that no step measured better than the model it started from
            trained = f"no step of {script} (step 0: the weights of {start}, unchanged)"
        return trained, f"`{command(script, args)}`, then `{exported}`"
    if from_gpt2_made(ckpt):  # OpenAI's weights, or a Hugging Face folder's
        return ("not here (step 0: the weights it was given, as scripts/from_gpt2.py writes them)",
                f"`{exported}`")
    if steps == 0 and math.isnan(ckpt["best_val_loss"]):  # no run recorded anything
        return "not recorded (step 0, no loss measured)", f"`{exported}`"
    made = f"`{gpt_command(c)}`, then `{exported}`"
    if steps:
        return f"`{c.get('data')}`, {steps:,} steps", made
    start = f"the weights of `{c['init_from']}`" if c.get("init_from") else "its random initial weights"
    return f"nothing yet (step 0: {start})", made


def example(ckpt, tokenizer):
    """What the card's snippets give the model: a question for a chat model, a text's start for
    others, one its tokenizer encodes (a char model knows only its characters). A chat's prompt
    takes at most half a block: transformers' GPT-2 writes up to block_size tokens, prompt included."""
    def encodes(text):
        try:
            return len(tokenizer.encode(text))
        except gpt.GPTError:  # a character the model never saw
            return None
    chat = ckpt.get("chat")
    if not chat:
        if ckpt.get("tokenizer"):
            return "Hello"
        return "\n" if "\n" in ckpt["vocab"] else ckpt["vocab"][0]  # gpt.py --sample's start
    frame = encodes(chat["user"] + "\n" + chat["assistant"]) or 0  # the turn around a question
    letters = [ch for ch in ckpt.get("vocab") or "" if ch.strip()]  # a char model's, one by one
    questions = [q for q in ("What is 12 + 30?", "Hello!", "12 + 30", "Hi", *letters) if encodes(q)]
    fits = [q for q in questions if frame + encodes(q) <= ckpt["config"]["block_size"] // 2]
    return (fits or sorted(questions, key=encodes))[0]  # else the shortest


def snippets(ckpt, tokenizer, out, stops):
    """The card's two ways to write with the model: the pipeline, and generate() with the tokenizer.
    stops: the stop strings generate needs (a chat's end marker, unless one token ends it)."""
    prompt = example(ckpt, tokenizer)
    load = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
            f"tokenizer = AutoTokenizer.from_pretrained({out!r})",
            f"model = AutoModelForCausalLM.from_pretrained({out!r})"]
    if not ckpt.get("chat"):
        return [["from transformers import pipeline",
                 f"generator = pipeline('text-generation', model={out!r})",
                 f"print(generator({prompt!r})[0]['generated_text'])"],
                [*load, f"inputs = tokenizer({prompt!r}, return_tensors='pt')",
                 "print(tokenizer.decode(model.generate(**inputs)[0]))"]]
    end = ckpt["chat"]["end"]
    pipeline_stops = f", stop_strings={stops!r}, tokenizer=chat.tokenizer" if stops else ""
    generate_stops = f", stop_strings={stops!r}, tokenizer=tokenizer" if stops else ""
    return [["from transformers import pipeline",
             f"chat = pipeline('text-generation', model={out!r})",
             f"messages = [{{'role': 'user', 'content': {prompt!r}}}]",
             f"reply = chat(messages{pipeline_stops})",
             f"print(reply[0]['generated_text'][-1]['content'].removesuffix({end!r}))"],
            [*load, f"messages = [{{'role': 'user', 'content': {prompt!r}}}]",
             "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
             "return_dict=True, return_tensors='pt')",
             f"ids = model.generate(**inputs{generate_stops})",
             "answer = tokenizer.decode(ids[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True)",
             f"print(answer.removesuffix({end!r}))"]]


def model_card(ckpt, ckpt_path, out, stops):
    """README.md: what the model is, what it was trained on, the commands that made it, and code
    that writes with it (tests run it as it is)."""
    c, spec = ckpt["config"], ckpt.get("tokenizer")
    n = sum(t.numel() for k, t in ckpt["model"].items() if k != "lm_head.weight")  # tied
    loss = ckpt["best_val_loss"]
    exported = f"python scripts/to_hf.py {shlex.quote(ckpt_path)} --out {shlex.quote(out)}"
    trained, made = provenance(ckpt, exported)
    tokens = f"{spec['name']} tokens" if spec else "characters"
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [gpt2, gpt.py]", "---", f"# {os.path.basename(os.path.abspath(out))}", "",
             f"A GPT in GPT-2's architecture, made with gpt.py: {c['n_layer']} layers, "
             f"{c['n_head']} heads, {c['n_embd']} wide, {c['block_size']} tokens of context, "
             f"{c['vocab_size']:,} {tokens}, {n / 1e6:.2f}M parameters.", "",
             f"- Trained on: {trained}",
             f"- Val loss: {'not measured' if math.isnan(loss) else f'{loss:.4f}'}"]
    accuracy, maker = ckpt.get("accuracy"), made_by(ckpt)
    if isinstance(accuracy, (int, float)) and not math.isnan(accuracy):  # scripts/rl.py measures it
        held_out = maker[1].get("eval_data") if maker else None
        lines.append(f"- Accuracy: {accuracy:.1f}% (mean greedy exact match over the skills"
                     + (f" of `{held_out}`)" if held_out else ")"))
    lines.append(f"- Made by: {made}")
    if not spec and lacks_probe(ckpt["vocab"]):
        lines.append(f"- Tokenizer: one token more than the model's, {STOP_STRING_PROBE!r} (id "
                     f"{c['vocab_size']}), which transformers' stop strings need; the model never "
                     f"writes it and cannot read it: a text with the word {STOP_STRING_PROBE!r} "
                     "fails in `generate`")
    if ckpt.get("chat"):
        end = ckpt["chat"]["end"]
        how = (f"`generate` needs it as a stop string, with the tokenizer: `stop_strings={stops!r}, "
               "tokenizer=tokenizer`" if stops else "one token, `eos_token_id`: generation stops there")
        lines.append(f"- Chat: `apply_chat_template` renders its template; an answer ends with "
                     f"{end!r} ({how})")
        if spec:  # the tokenizer cuts where turns meet, in a message too (bpe_tokenizer)
            lines[-1] += (". A message holding a role's prefix or the end marker "
                          f"({ckpt['chat']['user']!r}) is cut there too, so its ids may differ from "
                          "scripts/chat.py's")
    for code in snippets(ckpt, gpt.tokenizer_of(ckpt), out, stops):
        lines += ["", "```python", *code, "```"]
    return "\n".join(lines) + "\n"


def export(ckpt, ckpt_path, out, stage):
    """Write the files of the folder out into stage, an empty folder."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    from transformers import GenerationConfig, GPT2Config
    c, spec, chat = ckpt["config"], ckpt.get("tokenizer"), ckpt.get("chat")
    eot = len(spec["tokens"]) if spec else None  # a char model has no end-of-text token
    dropout = c.get("dropout", 0.0)  # where gpt.py has it: embeddings and both residual branches
    # n_ctx: GPT-2's own config.json has it too, and llama.cpp's convert_hf_to_gguf.py reads it
    GPT2Config(vocab_size=c["vocab_size"], n_positions=c["block_size"], n_ctx=c["block_size"],
               n_embd=c["n_embd"], n_layer=c["n_layer"], n_head=c["n_head"], layer_norm_epsilon=1e-5,
               activation_function="gelu_new" if c.get("gelu") == "tanh" else "gelu",
               tie_word_embeddings=True, embd_pdrop=dropout, resid_pdrop=dropout, attn_pdrop=0.0,
               bos_token_id=eot, eos_token_id=eot, architectures=["GPT2LMHeadModel"],
               ).save_pretrained(stage)
    # Where generation stops by itself: at the end-of-text token, and at a chat's end marker if it
    # is one token. A longer marker is a stop string, which transformers can match only with the
    # tokenizer at hand: the card passes it at call time
    ends, stops = [eot] if spec else [], []
    if chat:
        marker = gpt.tokenizer_of(ckpt).encode(chat["end"])  # alone, as training encoded it
        if len(marker) == 1:
            ends.append(marker[0])
        else:
            stops.append(chat["end"])
    # transformers' GPT-2 has no sliding window: block_size positions at most, prompt included
    GenerationConfig(do_sample=True, temperature=0.8, top_k=0, max_length=c["block_size"],
                     bos_token_id=eot, pad_token_id=eot,
                     eos_token_id=ends if len(ends) > 1 else (ends or [None])[0],
                     ).save_pretrained(stage)
    # model_input_names: no token_type_ids, which GPT-2 would add to the embeddings as tokens
    settings = dict(tokenizer_class="PreTrainedTokenizerFast", clean_up_tokenization_spaces=False,
                    model_max_length=c["block_size"], model_input_names=["input_ids", "attention_mask"])
    files = {}
    if spec:
        tokenizer, vocab, merges = bpe_tokenizer(spec, chat)
        # split_special_tokens: "<|endoftext|>" in a text is text, as gpt.py's encode has it
        settings.update(bos_token=EOT, eos_token=EOT, pad_token=EOT, split_special_tokens=True)
        if spec["name"] == "gpt2":  # GPT-2's vocab.json and merges.txt too, which tools look for
            files["vocab.json"] = json.dumps({**vocab, EOT: eot}, ensure_ascii=False)
            files["merges.txt"] = "".join(["#version: 0.2\n", *(f"{a} {b}\n" for a, b in merges)])
    else:
        tokenizer = char_tokenizer(ckpt["vocab"])
    # written below with the others: tokenizers' own save reports a full disk as a bare Exception
    files["tokenizer.json"] = tokenizer.to_str(pretty=True)
    if chat:
        settings["chat_template"] = chat_template(chat)
    # gpt.py's own words for the tokenizer and the template, which from_gpt2.py reads back
    settings["gpt_py"] = dict(tokenizer=spec["name"] if spec else "char", chat=chat or None)
    files["tokenizer_config.json"] = json.dumps(settings, indent=2, ensure_ascii=False)
    files["README.md"] = model_card(ckpt, ckpt_path, out, stops)
    for name, text in files.items():
        with open(os.path.join(stage, name), "w", encoding="utf-8") as f:
            f.write(text)
    # lm_head.weight is wte's tensor: tied, it is stored once (safetensors refuses shared tensors)
    weights = {k: (t.t() if k.endswith(CONV1D) else t).contiguous()
               for k, t in ckpt["model"].items() if k != "lm_head.weight"}
    try:
        save_file(weights, os.path.join(stage, "model.safetensors"), metadata={"format": "pt"})
    except SafetensorError as e:  # a full disk is its own error, not an OSError: made one here
        errno = re.search(r"os error (\d+)", str(e))
        if errno is None:
            raise
        raise OSError(int(errno[1]), os.strerror(int(errno[1]))) from None


def check_out(out, overwrite, names):
    """Refuse, before anything is written, a --out that is not a new or empty folder, unless
    --overwrite; even then nothing but the files this writes (names) is touched, a folder of such a
    name neither. A folder aside that a killed export left (STAGE) is to_hf.py's: it counts for nothing."""
    if os.path.lexists(out) and not os.path.isdir(out):
        what = "a file, not a folder" if os.path.exists(out) else "a link to nothing"
        raise gpt.GPTError(f"--out {out} is {what}: give a new or empty folder")
    try:
        held = sorted(os.listdir(out)) if os.path.isdir(out) else []
    except OSError as e:
        raise gpt.GPTError(f"--out {out} cannot be read ({e.strerror})") from None
    held = [name for name in held if not name.startswith(STAGE)]  # a killed export's: write() removes it
    ours = [name for name in names if name in held]
    if held and not overwrite:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        if "config.json" in held:  # an earlier export, or another model
            raise gpt.GPTError(f"--out {out} already holds a model ({shown}); write into a new or empty "
                               "folder, or replace it with --overwrite (which keeps any other files there)")
        replaced = f", replacing {', '.join(ours)}" if ours else ""
        raise gpt.GPTError(f"--out {out} is not empty ({shown}); write into a new or empty folder, or add "
                           f"--overwrite to write to_hf.py's files there and keep the rest{replaced}")
    for name in ours:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise gpt.GPTError(f"--out {out} holds a folder named {name}, where to_hf.py writes a file")


def write(ckpt, ckpt_path, out):
    """The folder out, its files written aside in out and moved in: replaced, never half-written.
    Returns the names of the files written."""
    made, path = None, os.path.abspath(out)  # made: the outermost folder this makes, if any
    while not os.path.lexists(path):
        made, path = path, os.path.dirname(path)
    stage = None
    try:
        try:
            os.makedirs(out, exist_ok=True)
            for name in os.listdir(out):  # an export killed there (SIGKILL) left its files aside
                if name.startswith(STAGE):
                    shutil.rmtree(os.path.join(out, name), ignore_errors=True)
            stage = tempfile.mkdtemp(prefix=STAGE, dir=out)
        except OSError as e:
            raise gpt.GPTError(f"--out {out} is not a folder that can be written ({e.strerror})") from None
        export(ckpt, ckpt_path, out, stage)
        if os.path.lexists(os.path.join(out, "config.json")):  # an old model's: gone first, so
            os.remove(os.path.join(out, "config.json"))  # a folder cut short never looks complete
        written = sorted(os.listdir(stage), key=lambda name: name == "config.json")  # config.json last
        for name in written:
            os.replace(os.path.join(stage, name), os.path.join(out, name))
    except BaseException:
        if made:  # all in it is this run's
            shutil.rmtree(made, ignore_errors=True)
        raise
    finally:
        if stage:
            shutil.rmtree(stage, ignore_errors=True)
    return written


@contextlib.contextmanager
def stop_signals():
    """SIGTERM (kill, a job's end) and SIGHUP (a closed terminal) stop the export as Ctrl-C does:
    a KeyboardInterrupt holding the signal, so write() removes what it made. One the shell has
    this process ignore (nohup) stays ignored."""
    def handler(signum, frame):
        raise KeyboardInterrupt(signum)
    old = {}
    for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):  # Windows has no SIGHUP
        if s is not None and signal.getsignal(s) not in (signal.SIG_IGN, None):
            old[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a gpt.py checkpoint as a Hugging Face folder.")
    p.add_argument("checkpoint", help="a gpt.py best.pt or ckpt.pt")
    p.add_argument("--out", required=True, help="the folder to write: new or empty")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that holds files "
                   "(a model too): replace the files to_hf.py writes, keep the others")
    args = p.parse_args(argv)
    # missing/../hf means hf, as the shell's cd has it. As given, makedirs would make missing on the
    # way, and a folder hf of files would pass as new (it cannot be looked into through missing)
    if args.out:
        args.out = os.path.normpath(args.out)
    try:
        with stop_signals():
            try:
                import safetensors  # noqa: F401
                import transformers  # noqa: F401
            except ImportError:
                raise gpt.GPTError('this needs transformers and safetensors: pip install -e ".[gpt2]" '
                                   "(or pip install transformers safetensors)") from None
            ckpt = gpt.load_checkpoint(args.checkpoint, "train one: python gpt.py writes out/best.pt")
            spec = ckpt.get("tokenizer")
            names = (*FILES, *GPT2_FILES) if spec and spec["name"] == "gpt2" else FILES
            check_out(args.out, args.overwrite, names)
            written = write(ckpt, args.checkpoint, args.out)
    except gpt.GPTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a file that cannot be replaced
        print(f"error: --out {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or a signal stop_signals turned into one
        signum = e.args[0] if e.args else signal.SIGINT
        print(f"\ninterrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum  # the shell's way: 130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP
    c = ckpt["config"]
    tokens = f"{spec['name']} tokens" if spec else "characters"
    chat = ", a chat model" if ckpt.get("chat") else ""
    print(f"wrote {args.out}: a GPT-2 of {c['n_layer']} layers, {c['n_embd']} wide, "
          f"{c['vocab_size']:,} {tokens}{chat}. "
          f"Load it: AutoModelForCausalLM.from_pretrained({args.out!r})")
    kept = [name for name in READ_BESIDE
            if name not in written and os.path.lexists(os.path.join(args.out, name))]
    if kept:
        print(f"note: kept {', '.join(kept)} in {args.out}, which transformers reads too; remove "
              "them if they belong to another model", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
