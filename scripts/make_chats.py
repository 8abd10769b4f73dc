"""
make_chats.py: a seeded set of synthetic conversations whose answers can be checked exactly, to
fine-tune a small model into answering, and to measure how well it learned.

    python scripts/make_chats.py --out chats/                 # chats/train.jsonl and chats/test.jsonl
    python scripts/prepare.py chats/train.jsonl --out data/chats --vocab_from out/best.pt
    python gpt.py --init_from out/best.pt --data data/chats --out_dir out_chat
    python scripts/eval_chat.py out_chat chats/test.jsonl     # exact-match accuracy per skill

Four skills, each asked in five or six wordings and answered with the bare result:

    add      What is 12 + 30?                   42
    count    How many r are in strawberry?      3
    reverse  Spell strawberry backwards.        yrrebwarts
    max      Which is larger, 87 or 45?         87

Each line is {"messages": [...], "skill": NAME}, NAME the skill of the last question (the one
eval_chat.py asks). One conversation in ten asks a question before it (two rounds), one in twenty
opens with a system turn. A question is its skill and its numbers (in either order) or its word and
letter, whatever the wording: no question of the test file is in the train file, so the test measures
what the model learned, not what it memorised.

Questions a model never fine-tuned on, to learn from reward (scripts/rl.py), held out from chats/:

    python scripts/make_chats.py --out chats_rl --seed 1 --fresh_words --exclude chats/test.jsonl

--fresh_words counts letters in and spells backwards another 911 words, none in the default list;
--exclude leaves out every question of a file (add and max have no others: their ~4,000 pairs of
2-digit numbers are all in chats/, train or test). Its test.jsonl is then a validation set.

The default sizes: 20,000 train conversations, 5,000 a skill, 1.1 million characters once rendered.
Each of the ~4,000 pairs of 2-digit numbers left for training is added, and compared, about once; each
of the 336 words left is spelled backwards about 15 times, and each of its letters counted about 5
times. The tiny preset (16 x 256 characters a step) goes through the set once in about 280 steps, so
a fine-tuning run of a few minutes on a CPU sees it several times. 400 test conversations, 100 a
skill: one question is one percent, and eval_chat.py answers them all in seconds.
"""
import argparse
import json
import os
import random
import re
import sys

SKILLS = ("add", "count", "reverse", "max")
WORDINGS = {
    "add": ["What is {a} + {b}?", "{a} + {b} = ?", "Add {a} and {b}.", "What is the sum of {a} and {b}?",
            "What do you get when you add {a} and {b}?", "Compute {a} plus {b}."],
    "count": ["How many {letter} are in {word}?", "How many times does the letter {letter} appear in {word}?",
              "Count the letter {letter} in {word}.", "In the word {word}, how many {letter} are there?",
              "How many {letter}'s does {word} have?"],
    "reverse": ["Spell {word} backwards.", "What is {word} reversed?", "Reverse the word {word}.",
                "Write {word} backwards.", "How do you spell {word} backwards?"],
    "max": ["Which is larger, {a} or {b}?", "What is the larger of {a} and {b}?", "max({a}, {b}) = ?",
            "Which number is bigger: {a} or {b}?", "Pick the larger number: {a} or {b}."],
}
SYSTEM = "Answer with the result only."
TWO_ROUNDS = 0.1  # the share of conversations with a question before the last
WITH_SYSTEM = 0.05  # the share that opens with the system turn
# Common English words, lowercase, 3 to 11 letters: to count letters in and to spell backwards.
WORDS = """
apple banana cherry grape lemon mango melon orange peach pear plum strawberry blueberry raspberry
watermelon coconut pineapple potato tomato carrot onion garlic cabbage pumpkin cucumber papaya
water bread butter cheese honey sugar salt pepper coffee milk rice pasta pizza soup salad cookie
cake candy pancake sandwich noodle chocolate toffee jelly dinner lunch breakfast supper
house home room door window floor wall table chair kitchen garden garage roof street road city
town village country bridge castle tower palace church market shop store bank hotel office
school teacher student class lesson book paper pencil letter word number story library history
science nature picture future adventure treasure pleasure measure question answer problem idea
reason matter secret circle square triangle corner middle center
mother father sister brother family friend people person child baby woman girl monster master
dog cat bird fish horse sheep rabbit mouse tiger lion bear wolf monkey elephant giraffe zebra
snake turtle frog duck chicken goose eagle owl parrot kitten puppy panda koala llama alpaca
butterfly dragonfly grasshopper caterpillar crocodile spider beetle donkey camel dolphin whale
tree flower grass leaf forest river lake ocean island mountain hill valley desert beach sand
stone rock sun moon star sky cloud rain snow wind storm weather summer winter spring autumn
morning evening night today tomorrow yesterday
red blue green yellow purple black white brown pink silver golden
happy sad angry funny quiet loud little small big large tall short long fast slow hot cold warm
cool young old new good bad kind nice pretty strong gentle simple careful clever brave
run walk jump swim sing dance read write speak listen think know learn teach play work sleep
dream laugh smile follow borrow travel wonder wander gather carry hurry
car bus train plane boat ship bicycle rocket wheel engine wagon tractor
music piano guitar violin drum song movie camera phone computer radio robot
money price dollar penny coin ticket
heart head hand finger arm leg foot eye ear nose mouth tooth hair face shoulder knee elbow
mirror pillow blanket bottle cup glass plate spoon fork knife bowl basket bucket ladder hammer
ball game puzzle doll kite balloon candle button pocket ribbon jacket mitten carpet magnet
doctor nurse farmer baker driver pilot artist writer singer painter runner winner
arrow shallow sorrow cotton banner manner poster planet animal umbrella address success tennis
committee bookkeeper balance holiday journey kingdom lantern meadow orchard pebble saddle shadow
squirrel thunder tunnel whisper wizard zipper hello goodbye please thanks sorry welcome
queen king prince princess knight dragon giant fairy pirate sailor soldier
breeze feather flame frost harbor jungle marble needle rainbow seed shell silk thread violet wheat wool
""".split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# More words, none of them in WORDS: --fresh_words asks count and reverse about these instead, so a model
# fine-tuned on the default files has never seen the questions (scripts/rl.py learns from them).
FRESH_WORDS = """
apricot avocado berry lime kiwi fig date olive almond peanut walnut chestnut raisin prune nectarine
tangerine lettuce spinach celery radish turnip pea bean corn broccoli mushroom parsley ginger cinnamon
vanilla mustard vinegar ketchup sauce gravy toast bagel muffin biscuit cracker pretzel popcorn waffle
omelet yogurt cream custard pudding pie tart donut cereal oatmeal porridge steak bacon sausage ham turkey
salmon tuna shrimp lobster oyster juice lemonade soda tea cocoa wine beer feast meal snack picnic recipe
oven stove sink fridge freezer cupboard drawer shelf closet attic cellar basement hallway stairs porch
balcony fence gate yard lawn hedge barn shed cabin cottage tent igloo apartment building temple museum
theater stadium airport station harbour factory prison hospital pharmacy bakery butcher grocery cinema
circus zoo park playground fountain statue monument desk sofa couch bed mattress lamp clock curtain rug
towel soap sponge brush comb razor kettle teapot pan pot jar jug tray napkin scissors tape glue paint
crayon marker eraser ruler notebook folder envelope stamp parcel box crate barrel sack bag purse wallet
suitcase trunk key lock chain rope string cable wire pipe hose nail screw bolt wrench shovel rake axe saw
drill chisel anvil lever pulley gear piston valve motor battery bulb switch socket plug fan heater cooler
brain lung liver stomach bone skin blood muscle nerve thumb wrist ankle toe heel chin cheek lip tongue
throat neck chest belly back hip waist forehead eyebrow eyelash beard hat cap scarf glove sock shoe boot
sandal shirt skirt dress coat sweater vest belt tie collar sleeve apron gown cloak hood helmet crown ring
necklace bracelet earring jewel diamond pearl ruby emerald sapphire crystal gold iron copper bronze steel
tin lead zinc nickel granite clay brick concrete timber plank lizard toad newt salamander tortoise hamster
gerbil ferret otter beaver badger fox deer moose elk reindeer buffalo bison goat pig cow bull calf lamb
pony mule hippo rhino gorilla chimp leopard cheetah jaguar panther hyena jackal raccoon skunk squid
octopus crab shark seal walrus penguin pelican flamingo swan crane heron stork pigeon sparrow robin crow
raven hawk falcon vulture peacock ostrich hen rooster chick moth wasp bee hornet ant flea tick worm snail
slug jellyfish starfish coral comet galaxy universe meteor orbit gravity volcano glacier canyon cliff cave
swamp marsh pond stream creek brook waterfall tide wave current bay coast shore reef lagoon plain prairie
field farm ranch vineyard grove pine oak maple willow birch cedar elm palm bamboo cactus fern moss ivy
vine rose tulip daisy lily orchid poppy lotus sunflower dandelion clover thistle weed root branch twig
bark petal blossom thorn acorn cone pollen nectar lightning hail fog mist dew drizzle blizzard tornado
hurricane sunshine sunset sunrise dawn dusk noon midnight season month week weekend hour minute second
moment century decade january february march april june july august september october november december
monday tuesday wednesday thursday friday saturday sunday one two three four five six seven eight nine ten
eleven twelve twenty thirty forty fifty hundred thousand million first last next early late soon often
never always again almost already amber crimson scarlet maroon navy indigo lavender beige ivory teal
turquoise bright dark light heavy soft hard smooth rough sharp dull wet dry clean dirty empty full rich
poor cheap expensive easy difficult great tiny huge wide narrow deep thin thick round flat sweet sour
bitter salty spicy fresh rotten ripe raw proud shy calm wild lazy busy eager honest polite rude silly wise
foolish lucky famous ready sleepy hungry thirsty tired sick healthy alive dead awake asleep climb crawl
fly float dive ride drive sail row skate ski hike cook bake boil fry roast chop slice stir mix pour spill
fill wash sweep scrub polish fold build break fix mend cut paste draw sketch color carve sew knit weave
open close push pull lift drop throw catch kick hit swing shake spin twist bend stretch buy sell pay spend
save earn lend owe count weigh guess solve explain describe remember forget imagine believe hope wish
decide choose prefer enjoy hate love like miss arrive leave enter return visit stay wait rest relax worry
shout yell scream giggle cry sob sigh sneeze cough yawn snore breathe blink wink nod agree argue promise
invite thank greet emperor duke baron lord lady servant slave merchant trader banker lawyer judge police
sheriff captain general major colonel sergeant guard warrior hunter fisher miner builder carpenter plumber
mechanic engineer scientist chemist inventor explorer astronaut tailor cobbler barber waiter chef butler
maid clerk secretary manager boss worker neighbor stranger guest host visitor tourist traveler passenger
uncle aunt cousin nephew niece grandson grandma grandpa husband wife son daughter twin orphan hero villain
thief robber spy ghost witch goblin troll elf dwarf ogre unicorn mermaid vampire zombie language alphabet
sentence paragraph chapter novel poem poetry verse rhyme riddle joke fable legend myth grammar spelling
vowel consonant syllable noun verb adjective math algebra geometry physics chemistry biology geography art
drama addition subtraction fraction decimal percent angle line point curve shape cube sphere cylinder
pyramid rectangle oval army battle war peace victory defeat flag sword shield spear bow cannon pistol
rifle bullet bomb voyage trip tour quest mission errand chore task job career hobby sport soccer baseball
football basketball hockey golf boxing chess cards dice marbles jigsaw toy teddy happiness sadness anger
fear joy trust courage honor pride shame guilt envy greed luck chance fate fortune danger safety freedom
justice truth wisdom knowledge memory silence noise sound voice echo whistle bell horn siren alarm
""".split()


def all_questions(rng, words=WORDS):
    """Every question each skill can ask, as the values its wordings take: a question is these values,
    in any wording (and for add and max, in either order)."""
    numbers = range(10, 100)
    counts = []  # each word with the letters it has twice or more, one it has once, one it lacks
    for word in words:
        once = [c for c in sorted(set(word)) if word.count(c) == 1]
        counts += [dict(word=word, letter=c) for c in sorted(set(word)) if word.count(c) > 1]
        if once:
            counts.append(dict(word=word, letter=rng.choice(once)))
        counts.append(dict(word=word, letter=rng.choice([c for c in LETTERS if c not in word])))
    return {"add": [dict(a=a, b=b) for a in numbers for b in numbers if a <= b],
            "count": counts,
            "reverse": [dict(word=word) for word in words],
            "max": [dict(a=a, b=b) for a in numbers for b in numbers if a < b]}


def key(skill, question):
    """What a question asks, whatever its wording and the order of its numbers."""
    if skill in ("add", "max"):
        return skill, min(question["a"], question["b"]), max(question["a"], question["b"])
    if skill == "count":
        return skill, question["word"], question["letter"]
    return skill, question["word"]


def question_of(text):
    """The question a user turn of these files asks, as key() gives it; None if it is in no wording."""
    for skill in SKILLS:
        for wording in WORDINGS[skill]:
            pattern = re.escape(wording)
            for name, values in ("a", r"\d+"), ("b", r"\d+"), ("word", "[a-z]+"), ("letter", "[a-z]"):
                pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{values})")
            found = re.fullmatch(pattern, text.strip())
            if found:
                values = found.groupdict()
                for name in ("a", "b"):
                    if name in values:
                        values[name] = int(values[name])
                return key(skill, values)
    return None


class ChatsError(Exception):
    """A file to --exclude that is not one these skills wrote: one line naming the file and line."""


def excluded(path):
    """The keys of every question a .jsonl file of these conversations asks, in any of its rounds. A line
    whose last question is not one of these skills' is named: a wrong file must not exclude nothing."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ChatsError(f"--exclude {path}: {getattr(e, 'strerror', None) or 'not UTF-8 text'}") from None
    keys = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            asked = [turn["content"] for turn in record["messages"] if turn["role"] == "user"]
        except (ValueError, TypeError, KeyError):
            raise ChatsError(f"{path}, line {number}: not a conversation ({{\"messages\": [...]}})") from None
        found = [question_of(text) for text in asked if isinstance(text, str)]
        if not found or found[-1] is None:
            raise ChatsError(f"{path}, line {number}: its last question is none of make_chats.py's skills")
        keys.update(k for k in found if k is not None)
    return keys


def answer(skill, question):
    if skill == "add":
        return str(question["a"] + question["b"])
    if skill == "count":
        return str(question["word"].count(question["letter"]))
    if skill == "reverse":
        return question["word"][::-1]
    return str(max(question["a"], question["b"]))


def ask(skill, question, rng):
    """The question in one of its wordings, as a user turn, and its answer as the assistant's."""
    values = dict(question)
    if "a" in values and rng.random() < 0.5:  # 12 + 30 and 30 + 12 are one question
        values["a"], values["b"] = values["b"], values["a"]
    text = rng.choice(WORDINGS[skill]).format(**values)
    return [{"role": "user", "content": text}, {"role": "assistant", "content": answer(skill, question)}]


def conversations(pool, sizes, rng):
    """sizes[skill] conversations of each skill, whose questions come from pool[skill], each used once
    before any is used again; mixed in a random order."""
    lines = []
    for skill in SKILLS:
        order = []
        for _ in range(sizes[skill]):
            if not order:  # one more pass over the skill's questions, in a new order
                order = rng.sample(pool[skill], len(pool[skill]))
            messages = ask(skill, order.pop(), rng)
            if rng.random() < TWO_ROUNDS:
                first = rng.choice(SKILLS)
                messages = ask(first, rng.choice(pool[first]), rng) + messages
            if rng.random() < WITH_SYSTEM:
                messages = [{"role": "system", "content": SYSTEM}] + messages
            lines.append({"messages": messages, "skill": skill})
    rng.shuffle(lines)
    return lines


def shares(total):
    """total, split as evenly as it goes over the skills."""
    return {skill: total // len(SKILLS) + (i < total % len(SKILLS)) for i, skill in enumerate(SKILLS)}


def write_jsonl(lines, path):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    os.replace(path + ".tmp", path)  # whole or not at all


def main(argv=None):
    p = argparse.ArgumentParser(description="Write seeded synthetic conversations: train and test.")
    p.add_argument("--out", default="chats", help="the folder for train.jsonl and test.jsonl (default chats)")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same files (default 0)")
    p.add_argument("--train", type=int, default=20_000, help="train conversations (default 20,000)")
    p.add_argument("--test", type=int, default=400, help="held-out conversations (default 400)")
    p.add_argument("--fresh_words", action="store_true", help="count and reverse ask about another "
                   f"{len(FRESH_WORDS)} words, none in the default list: questions the README's chat model "
                   "never saw (add and max keep their numbers: use --exclude)")
    p.add_argument("--exclude", action="append", default=[], metavar="FILE", help="leave out every "
                   "question of this .jsonl (for example chats/test.jsonl), in train and test; repeatable")
    args = p.parse_args(argv)
    for name in ("train", "test"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: must be at least 1")
    rng = random.Random(args.seed)
    questions = all_questions(rng, FRESH_WORDS if args.fresh_words else WORDS)
    try:
        left_out = set().union(*map(excluded, args.exclude))
    except ChatsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    questions = {skill: [q for q in asked if key(skill, q) not in left_out]
                 for skill, asked in questions.items()}
    most = min(len(asked) for asked in questions.values()) // 2 * len(SKILLS)
    if args.test > most:
        p.error(f"--test {args.test}: at most {most}, so that half the questions of each skill stay for training"
                f"{' (after --exclude)' if args.exclude else ''}")
    test_sizes = shares(args.test)
    test_pool, train_pool = {}, {}
    for skill in SKILLS:
        shuffled = rng.sample(questions[skill], len(questions[skill]))
        test_pool[skill] = shuffled[:test_sizes[skill]]
        train_pool[skill] = shuffled[test_sizes[skill]:]
    test = conversations(test_pool, test_sizes, rng)
    train = conversations(train_pool, shares(args.train), rng)
    train_path, test_path = os.path.join(args.out, "train.jsonl"), os.path.join(args.out, "test.jsonl")
    try:
        os.makedirs(args.out, exist_ok=True)
        write_jsonl(train, train_path)
        write_jsonl(test, test_path)
    except OSError as e:
        print(f"error: {e.filename or args.out}: {e.strerror}", file=sys.stderr)
        return 1
    model = "out_chat" if args.exclude else "out"  # a second set: the chat model's (README)
    print(f"wrote {train_path} ({len(train):,} conversations) and {test_path} ({len(test):,}, none of "
          f"their questions in train), seed {args.seed}. Next: python scripts/prepare.py {train_path} "
          f"--out data/{os.path.basename(os.path.normpath(args.out))} --vocab_from {model}/best.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
