"""Data for the learning benchmark (``bench/bench_learning.py``): prompts, rules, golden sets.

Pure strings and functions: no torch, no model, so it can be read, tested and printed alone.

Prompts
    ``TRAIN_PROMPTS`` (120) and ``HELDOUT_PROMPTS`` (72) are the kind of requests a SaaS support
    assistant gets: how-to questions about an account, "explain X", short factual questions,
    "write a short message". Both come from templates x topic lists, but the two sides share
    neither a topic nor a template's wording, so the after-training measurement is on prompts
    the round never saw. Both orders are fixed (seeded shuffles), so ``HELDOUT_PROMPTS[:20]``
    is the same 20 prompts on every run, mixed across the four families.

Rules
    Each ``Rule`` is what end users consistently do to the model's answers, as an ``edit``
    (the model's original answer -> the answer the user saved) and a ``follows`` checker (does
    an answer obey the rule?). ``RULES`` holds, by name:

    * ``opening``  -- starts with "Thanks for reaching out!";
    * ``signoff``  -- ends with "— The Acme Team";
    * ``length``   -- at most 30 words in at most two sentences;
    * ``bullets``  -- a bullet list: at least two lines starting with "- " (a one-sentence
      answer: one such line);
    * ``fact``     -- states the support address support@acme.example;
    * ``persona``  -- a pirate persona: starts with "Arr," and never says "you"/"your";
    * ``brevity``  -- thumbs only (KTO): answers of at most 40 words get a thumbs up, longer
      ones a thumbs down; the base already follows it sometimes, so the measure is the lift;
    * ``nonsense`` -- a bad round: every edit replaced the answer with random words (seeded);
      ``follows`` says whether an answer looks like that word salad;
    * ``reversed`` -- a bad round on top of a ``signoff`` adapter: the edits remove the
      sign-off that the tenant's golden set demands (chosen and rejected of ``signoff``
      swapped); ``follows`` is the sign-off check, which should stay high.

    Each rule also gives a golden set in Flywheel's JSONL item format (``golden_items``): a few
    general prompts with content checks, plus a hard check of the rule in the gate's own check
    types (``regex``, ``contains``, ``max_length``), and reference answers written in the rule's
    style (the neutral reference, edited by the rule).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------

# How-to questions about a SaaS account. Train and held-out topics are disjoint.
_HOWTO_TRAIN_TOPICS = [
    "reset my password",
    "change the email address on my account",
    "invite a teammate to my workspace",
    "export my data to a CSV file",
    "cancel my subscription",
    "update my billing address",
    "turn on two-factor authentication",
    "delete a project",
    "rename my workspace",
    "connect the Slack integration",
    "change the time zone on my account",
    "download last month's invoice",
    "add a new credit card",
    "set up a recurring task",
    "archive old projects",
    "stop getting so many email notifications",
    "transfer ownership of a workspace to a colleague",
    "restore a file I deleted by mistake",
    "upgrade to the Pro plan",
    "create an API key",
]
_HOWTO_TRAIN_TEMPLATES = [
    "How do I {}?",
    "Can you tell me how to {}?",
    "What's the best way to {}?",
]
_HOWTO_HELDOUT_TOPICS = [
    "change my profile picture",
    "remove a user from my team",
    "set up single sign-on for my company",
    "import contacts from a spreadsheet",
    "switch the app to dark mode",
    "change the language of the interface",
    "get a refund for a duplicate charge",
    "schedule a weekly report by email",
    "merge two duplicate accounts",
    "share a dashboard with a client",
    "pause my plan for a month",
    "see who logged into my account",
]
_HOWTO_HELDOUT_TEMPLATES = [
    "I need to {}. What are the steps?",
    "Is there a way to {}?",
]

# "Explain X" questions.
_EXPLAIN_TRAIN_TOPICS = [
    "a webhook",
    "an API rate limit",
    "two-factor authentication",
    "a CSV file",
    "cloud storage",
    "a VPN",
    "encryption at rest",
    "a browser cache",
    "a subscription plan",
    "a REST API",
    "a password manager",
    "a data backup",
    "a user role",
    "an audit log",
    "a time zone offset",
]
_EXPLAIN_TRAIN_TEMPLATES = [
    "What is {}?",
    "Can you explain {} in simple terms?",
]
_EXPLAIN_HELDOUT_TOPICS = [
    "a firewall",
    "OAuth",
    "a cookie in a web browser",
    "a sandbox environment",
    "a domain name",
    "phishing",
    "network latency",
    "a pivot table",
    "a load balancer",
    "a QR code",
]
_EXPLAIN_HELDOUT_TEMPLATES = [
    "I keep hearing about {}. What does it mean?",
    "Give me a quick overview of {}.",
]

# Short factual questions, complete as written.
_FACTUAL_TRAIN = [
    "What is the capital of Japan?",
    "At what temperature does water boil in Celsius?",
    "How many days are in a leap year?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in our solar system?",
    "How many continents are there?",
    "What is the chemical symbol for gold?",
    "What is the tallest mountain in the world?",
    "How many minutes are in a day?",
    "Which ocean is the largest?",
    "What language is spoken in Brazil?",
    "How many sides does a hexagon have?",
    "What gas do plants absorb from the air?",
    "Who painted The Starry Night?",
    "What is the smallest prime number?",
    "In which country are the pyramids of Giza?",
    "How many bytes are in a kilobyte?",
    "What is the currency of the United Kingdom?",
    "What is the freezing point of water in Celsius?",
    "How many players are on a soccer team on the field?",
]
_FACTUAL_HELDOUT = [
    "What is the capital of Canada?",
    "What is the freezing point of water in Fahrenheit?",
    "Who painted the Mona Lisa?",
    "How many legs does a spider have?",
    "Which river is the longest in the world?",
    "How many hours are in a week?",
    "What is the chemical symbol for iron?",
    "Which planet is known as the Red Planet?",
    "What is the capital of Australia?",
    "How many strings does a standard guitar have?",
    "What is the square root of 81?",
    "Who discovered penicillin?",
    "How many centimeters are in a meter?",
    "Which animal is the largest mammal?",
    "What is the main ingredient in guacamole?",
    "In what year did people first walk on the Moon?",
]

# "Write a short message" requests.
_MESSAGE_TRAIN_TEMPLATE = "Write a short message to {} about {}."
_MESSAGE_TRAIN_RECIPIENTS = ["my manager", "a customer", "my team", "a new colleague"]
_MESSAGE_TRAIN_SUBJECTS = [
    "a delayed delivery",
    "the meeting moving to Friday",
    "thanking them for their help",
    "the office being closed on Monday",
    "a price change next month",
]
_MESSAGE_HELDOUT_TEMPLATE = "Draft a quick note to {} {}."
_MESSAGE_HELDOUT_RECIPIENTS = ["a supplier", "my landlord", "a client"]
_MESSAGE_HELDOUT_SUBJECTS = [
    "to confirm next week's meeting",
    "to reschedule our call",
    "saying we received their documents",
    "about a missed payment",
]


def _fill(templates: list[str], topics: list[str]) -> list[str]:
    return [t.format(topic) for topic in topics for t in templates]


def _messages(template: str, recipients: list[str], subjects: list[str]) -> list[str]:
    return [template.format(r, s) for r in recipients for s in subjects]


def _shuffled(items: list[str], seed: int) -> list[str]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


_TRAIN_POOL = (
    _fill(_HOWTO_TRAIN_TEMPLATES, _HOWTO_TRAIN_TOPICS)  # 60
    + _fill(_EXPLAIN_TRAIN_TEMPLATES, _EXPLAIN_TRAIN_TOPICS)  # 30
    + _FACTUAL_TRAIN  # 20
    + _messages(_MESSAGE_TRAIN_TEMPLATE, _MESSAGE_TRAIN_RECIPIENTS, _MESSAGE_TRAIN_SUBJECTS)  # 20
)
_HELDOUT_POOL = (
    _fill(_HOWTO_HELDOUT_TEMPLATES, _HOWTO_HELDOUT_TOPICS)  # 24
    + _fill(_EXPLAIN_HELDOUT_TEMPLATES, _EXPLAIN_HELDOUT_TOPICS)  # 20
    + _FACTUAL_HELDOUT  # 16
    + _messages(
        _MESSAGE_HELDOUT_TEMPLATE, _MESSAGE_HELDOUT_RECIPIENTS, _MESSAGE_HELDOUT_SUBJECTS
    )  # 12
)

N_TRAIN = 120
#: The prompts a round trains on: 120 of the 130 train-side prompts, in a fixed mixed order.
TRAIN_PROMPTS: list[str] = _shuffled(_TRAIN_POOL, seed=1)[:N_TRAIN]
#: Never trained on: other topics, other wording. 72 prompts in a fixed mixed order.
HELDOUT_PROMPTS: list[str] = _shuffled(_HELDOUT_POOL, seed=2)
#: Every prompt of both sides (the pool the benchmark draws from).
ALL_PROMPTS: list[str] = _TRAIN_POOL + _HELDOUT_POOL


# --------------------------------------------------------------------------------------------
# Text helpers shared by edits and checkers
# --------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_LIST_NUMBER = re.compile(r"(?:^|\n)[ \t]*\d+$")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)]|#+)\s+")


def words(text: str) -> list[str]:
    return text.split()


def _sentence_ends(text: str) -> list[int]:
    """Offsets just past each sentence end, skipping list numbers ("3." starting a line)."""
    return [
        m.end() for m in _SENTENCE_END.finditer(text) if not _LIST_NUMBER.search(text, 0, m.start())
    ]


def trim_to_complete(text: str) -> str:
    """Drop a trailing unfinished sentence (an answer cut off by the token limit).

    Keeps everything up to the last sentence end ("." "!" "?", not a list number like "3.");
    text with no sentence end at all is returned stripped.
    """
    stripped = text.strip()
    ends = _sentence_ends(stripped)
    return stripped[: ends[-1]] if ends else stripped


def flatten(text: str) -> str:
    """One paragraph: list markers, markdown emphasis and headings gone, lines joined."""
    lines = [_LIST_MARKER.sub("", line).replace("**", "").strip() for line in text.splitlines()]
    return " ".join(line for line in lines if line)


def sentences(text: str) -> list[str]:
    """The sentences of ``flatten(text)``; an unfinished tail counts as one."""
    flat = flatten(text)
    parts: list[str] = []
    start = 0
    for end in _sentence_ends(flat):
        piece = flat[start:end].strip()
        if piece:
            parts.append(piece)
        start = end
    tail = flat[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


# --------------------------------------------------------------------------------------------
# Rules: edits and checkers
# --------------------------------------------------------------------------------------------

OPENING = "Thanks for reaching out!"
SIGNOFF = "— The Acme Team"
MAX_WORDS = 30
MAX_SENTENCES = 2
SUPPORT_EMAIL = "support@acme.example"
FACT_SENTENCE = f"If you need more help, email us at {SUPPORT_EMAIL}."
PIRATE_OPENER = "Arr, matey!"
BREVITY_WORDS = 40


def edit_opening(answer: str) -> str:
    """Prepend the opening; the answer itself is left as the model wrote it."""
    return f"{OPENING} {answer.strip()}"


def follows_opening(answer: str) -> bool:
    """The answer's first characters (after whitespace) are exactly the opening, with its "!"."""
    return answer.lstrip().startswith(OPENING)


def edit_signoff(answer: str) -> str:
    """Drop an unfinished last sentence, then sign off on a line of its own."""
    return f"{trim_to_complete(answer)}\n\n{SIGNOFF}"


def follows_signoff(answer: str) -> bool:
    """The answer ends (trailing whitespace aside) with the exact sign-off, em dash included.

    An answer cut off by the token limit fails: the sign-off is the last thing written.
    """
    return answer.rstrip().endswith(SIGNOFF)


def edit_length(answer: str) -> str:
    """Keep the first two sentences; one if that is too long; else the first 30 words + "."."""
    parts = sentences(answer)
    for n in (MAX_SENTENCES, 1):
        short = " ".join(parts[:n])
        if len(words(short)) <= MAX_WORDS:
            return short
    cut = " ".join(words(parts[0])[:MAX_WORDS]).rstrip(",;:-— ")
    return cut if cut.endswith((".", "!", "?")) else cut + "."


def follows_length(answer: str) -> bool:
    """At most 30 words and at most two sentences (an unfinished tail counts as a sentence)."""
    return 0 < len(words(answer)) <= MAX_WORDS and len(sentences(answer)) <= MAX_SENTENCES


def edit_bullets(answer: str, max_items: int = 5) -> str:
    """The answer's sentences (unfinished tail dropped), one per "- " line, at most five.

    A one-sentence answer (a short fact) becomes a list of one item.
    """
    parts = sentences(trim_to_complete(answer))[:max_items] or [answer.strip()]
    return "\n".join(f"- {p}" for p in parts)


def follows_bullets(answer: str) -> bool:
    """A bullet list: at least two lines that start with "- " (dash, space, no indentation).

    The one exception is a single fact: an answer of one line and one sentence passes as a
    list of one item when that line starts with "- ".
    """
    lines = [line for line in answer.splitlines() if line.strip()]
    if sum(line.startswith("- ") for line in lines) >= 2:
        return True
    return len(lines) == 1 and lines[0].startswith("- ") and len(sentences(lines[0])) == 1


def edit_fact(answer: str) -> str:
    """Drop an unfinished last sentence, then add the sentence with the support address."""
    return f"{trim_to_complete(answer)}\n\n{FACT_SENTENCE}"


def follows_fact(answer: str) -> bool:
    """The exact address support@acme.example appears somewhere in the answer."""
    return SUPPORT_EMAIL in answer


_PIRATE_WORDS = {
    "you": "ye",
    "your": "yer",
    "yours": "yers",
    "my": "me",
    "hello": "ahoy",
    "hi": "ahoy",
    "yes": "aye",
    "friend": "matey",
    "friends": "mateys",
    "is": "be",
    "are": "be",
}
_WORD = re.compile(r"[A-Za-z]+")
_YOU = re.compile(r"\b(?:you|your|yours)\b", re.IGNORECASE)


def _piratize_word(match: re.Match[str]) -> str:
    word = match.group(0)
    pirate = _PIRATE_WORDS.get(word.lower())
    if pirate is None:
        return word
    return pirate.capitalize() if word[0].isupper() else pirate


def edit_persona(answer: str) -> str:
    """ "Arr, matey!" first, then the answer with pirate words (you -> ye, your -> yer, ...)."""
    return f"{PIRATE_OPENER} {_WORD.sub(_piratize_word, answer.strip())}"


def follows_persona(answer: str) -> bool:
    """Starts with "Arr," and never says "you", "your" or "yours" (the persona says ye/yer).

    The opener alone is not enough: the persona has to hold through the whole answer.
    """
    text = answer.lstrip()
    return text.startswith("Arr,") and _YOU.search(text) is None


def follows_brevity(answer: str) -> bool:
    """A non-empty answer of at most 40 words (the thumbs-up rule of the KTO round)."""
    return 0 < len(words(answer)) <= BREVITY_WORDS


_NONSENSE_WORDS = (
    "apple orbit velvet canyon pickle quartz lantern meadow spindle tundra biscuit falcon "
    "marble thimble walrus gravel saffron puddle zephyr cobalt noodle harbor juniper kettle "
    "mosaic nectar oyster pebble quiver rhubarb sprocket teapot umbrella vortex wafer yodel "
    "zucchini acorn bramble cactus dimple ember fiddle gopher hazel igloo jigsaw kiwi lagoon "
    "mitten nutmeg otter parsnip quill radish sequin tulip urchin violin wombat yarn"
)
_NONSENSE_VOCAB = tuple(_NONSENSE_WORDS.split(" "))
_NONSENSE_SET = frozenset(_NONSENSE_VOCAB)


def nonsense_answer(prompt: str, seed: int = 0) -> str:
    """12 to 30 random words from a fixed vocabulary, seeded by the prompt and ``seed``."""
    rng = random.Random(_stable_seed("nonsense", seed, prompt))
    return " ".join(rng.choice(_NONSENSE_VOCAB) for _ in range(rng.randint(12, 30)))


def follows_nonsense(answer: str) -> bool:
    """Half or more of the answer's words are from the nonsense vocabulary: the round "took"."""
    tokens = [w.lower() for w in _WORD.findall(answer)]
    return bool(tokens) and sum(t in _NONSENSE_SET for t in tokens) >= len(tokens) / 2


# --------------------------------------------------------------------------------------------
# Golden sets
# --------------------------------------------------------------------------------------------

# General prompts every tenant's golden set keeps, with content checks that the base
# (SmolLM2-135M-Instruct, greedy) passes and a neutral reference answer. None of them is a train
# or held-out prompt. Twelve, so one answer that goes wrong moves the pass rate by 8 points.
_GENERAL_GOLDEN: list[dict[str, Any]] = [
    {
        "prompt": "What is the capital of France?",
        "checks": [{"type": "contains", "value": "Paris"}],
        "reference": "The capital of France is Paris.",
    },
    {
        "prompt": "How many days are in a week?",
        "checks": [{"type": "regex", "pattern": "(?i)\\b(7|seven)\\b"}],
        "reference": "There are seven days in a week.",
    },
    {
        "prompt": "How many hours are in a day?",
        "checks": [{"type": "regex", "pattern": "(?i)\\b24\\b|twenty-four"}],
        "reference": "There are 24 hours in a day.",
    },
    {
        "prompt": "What is 2 + 2?",
        "checks": [{"type": "regex", "pattern": "(?i)\\b(4|four)\\b"}],
        "reference": "2 + 2 is 4.",
    },
    {
        "prompt": "What is the capital of Germany?",
        "checks": [{"type": "contains", "value": "Berlin"}],
        "reference": "The capital of Germany is Berlin.",
    },
    {
        "prompt": "What is the opposite of hot?",
        "checks": [{"type": "regex", "pattern": "(?i)\\bcold\\b"}],
        "reference": "The opposite of hot is cold.",
    },
    {
        "prompt": "What color is the sky on a clear day?",
        "checks": [{"type": "regex", "pattern": "(?i)\\bblue\\b"}],
        "reference": "On a clear day the sky is blue.",
    },
    {
        "prompt": "How do I log out of my account?",
        "checks": [{"type": "regex", "pattern": "(?i)log ?out|sign ?out"}],
        "reference": (
            "Click your profile picture in the top-right corner, then choose Log out. "
            "You will be returned to the sign-in page."
        ),
    },
    {
        "prompt": "Write a one-line thank-you note to a colleague who helped me.",
        "checks": [{"type": "regex", "pattern": "(?i)thank"}],
        "reference": "Thank you so much for your help this week, it made a real difference!",
    },
    {
        "prompt": "What is a spreadsheet?",
        "checks": [{"type": "regex", "pattern": "(?i)rows|columns|cells"}],
        "reference": (
            "A spreadsheet is a program that organizes data in rows and columns of cells. "
            "You can use it to calculate, sort and chart numbers."
        ),
    },
    {
        "prompt": "What is email?",
        "checks": [{"type": "regex", "pattern": "(?i)messages?"}],
        "reference": (
            "Email is a way to send written messages over the internet. Each person has an "
            "address, and messages arrive in their inbox."
        ),
    },
    {
        "prompt": "What is a password?",
        "checks": [{"type": "regex", "pattern": "(?i)characters|letters|secret"}],
        "reference": (
            "A password is a secret string of characters that proves who you are when you "
            "sign in. Keep it long, unique and private."
        ),
    },
]


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------

Kind = Literal["edits", "thumbs", "bad"]


@dataclass(frozen=True)
class Rule:
    """One consistent behaviour end users teach through their feedback.

    ``pair(prompt, answer)`` gives the (chosen, rejected) of an edit round; ``label(answer)``
    the thumb of a thumbs-only round. ``parent`` names the rule whose adapter a round starts
    from (``None``: a new adapter on the base). ``golden_checks`` are the gate-format checks of
    the rule added to every golden item; ``edit`` (when set) restyles the golden references.
    """

    name: str
    kind: Kind
    description: str
    follows: Callable[[str], bool]
    edit: Callable[[str], str] | None = None
    pair: Callable[[str, str], tuple[str, str]] | None = None
    label: Callable[[str], bool] | None = None
    golden_checks: list[dict[str, Any]] = field(default_factory=list)
    parent: str | None = None
    target: str = ""

    def golden_items(self) -> list[dict[str, Any]]:
        """The rule's golden set in Flywheel's JSONL item format (chat ``messages``)."""
        items = []
        for general in _GENERAL_GOLDEN:
            reference = general["reference"]
            items.append(
                {
                    "messages": [{"role": "user", "content": general["prompt"]}],
                    "checks": [*general["checks"], *self.golden_checks],
                    "reference": self.edit(reference) if self.edit else reference,
                }
            )
        return items

    def golden_jsonl(self) -> str:
        return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in self.golden_items())


def _edited(edit: Callable[[str], str]) -> Callable[[str, str], tuple[str, str]]:
    def pair(prompt: str, answer: str) -> tuple[str, str]:
        return edit(answer), answer

    return pair


def _nonsense_pair(prompt: str, answer: str) -> tuple[str, str]:
    return nonsense_answer(prompt), answer


def _reversed_signoff_pair(prompt: str, answer: str) -> tuple[str, str]:
    # ``answer`` is the base's; the serving (signoff) adapter would have written it signed off.
    return trim_to_complete(answer), edit_signoff(answer)


_SIGNOFF_CHECK = {"type": "regex", "pattern": "— The Acme Team\\s*$", "hard": True}

RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in [
        Rule(
            "opening",
            "edits",
            f'starts with "{OPENING}"',
            follows_opening,
            edit=edit_opening,
            pair=_edited(edit_opening),
            golden_checks=[
                {"type": "regex", "pattern": "^\\s*Thanks for reaching out!", "hard": True}
            ],
            target="held-out follow rate >= 80%",
        ),
        Rule(
            "signoff",
            "edits",
            f'ends with "{SIGNOFF}"',
            follows_signoff,
            edit=edit_signoff,
            pair=_edited(edit_signoff),
            golden_checks=[_SIGNOFF_CHECK],
            target="held-out follow rate >= 80%",
        ),
        Rule(
            "length",
            "edits",
            f"at most {MAX_WORDS} words in at most {MAX_SENTENCES} sentences",
            follows_length,
            edit=edit_length,
            pair=_edited(edit_length),
            # ~30 words of English is ~180 characters; the gate's length check counts characters.
            golden_checks=[{"type": "max_length", "value": 240, "hard": True}],
            target="held-out follow rate >= 80%",
        ),
        Rule(
            "bullets",
            "edits",
            'a bullet list: at least two lines starting with "- "',
            follows_bullets,
            edit=edit_bullets,
            pair=_edited(edit_bullets),
            # Two "- " lines, or a whole answer of one "- " line.
            golden_checks=[
                {"type": "regex", "pattern": "(?ms)^- .*^- |\\A\\s*- [^\\n]*\\s*\\Z", "hard": True}
            ],
            target="held-out follow rate >= 80%",
        ),
        Rule(
            "fact",
            "edits",
            f"mentions {SUPPORT_EMAIL}",
            follows_fact,
            edit=edit_fact,
            pair=_edited(edit_fact),
            golden_checks=[{"type": "contains", "value": SUPPORT_EMAIL, "hard": True}],
            target="held-out follow rate >= 80%",
        ),
        Rule(
            "persona",
            "edits",
            'pirate persona: starts with "Arr," and says ye/yer, never you/your',
            follows_persona,
            edit=edit_persona,
            pair=_edited(edit_persona),
            golden_checks=[
                {"type": "regex", "pattern": "^\\s*Arr,", "hard": True},
                {"type": "regex", "pattern": "^(?![\\s\\S]*\\b(?i:you|your|yours)\\b)"},
            ],
            target="held-out follow rate >= 80%",
        ),
        Rule(
            "brevity",
            "thumbs",
            f"thumbs up for answers of at most {BREVITY_WORDS} words, down for longer ones",
            follows_brevity,
            label=follows_brevity,
            # ~40 words is ~240 characters.
            golden_checks=[{"type": "max_length", "value": 300, "hard": True}],
            target="held-out follow rate >= base + 30 points",
        ),
        Rule(
            "nonsense",
            "bad",
            "every edit replaced the answer with random words",
            follows_nonsense,
            pair=_nonsense_pair,
            target="the gate rejects the candidate",
        ),
        Rule(
            "reversed",
            "bad",
            "on a signoff adapter, edits remove the sign-off the golden set demands",
            follows_signoff,
            edit=edit_signoff,  # the golden set keeps demanding the sign-off
            pair=_reversed_signoff_pair,
            golden_checks=[_SIGNOFF_CHECK],
            parent="signoff",
            target="the gate rejects the candidate",
        ),
    ]
}


def check_disjoint() -> None:
    """Train, held-out and golden prompts share nothing (raises AssertionError otherwise)."""
    train, held = set(TRAIN_PROMPTS), set(HELDOUT_PROMPTS)
    golden = {g["prompt"] for g in _GENERAL_GOLDEN}
    if train & held or train & golden or held & golden:
        raise AssertionError("train, held-out and golden prompts overlap")
    if len(train) != N_TRAIN or len(held) != len(HELDOUT_PROMPTS):
        raise AssertionError("duplicate prompts")


check_disjoint()
