"""The demo tenants' adapters on a real base: two house styles, trained at first start.

Random LoRA weights turn a real model's text into garbage, so on a real base each demo tenant
gets an adapter trained (seeded, on CPU, with the same ``train_round`` a retraining round uses)
on a few answers written in its own house style:

* ``terse`` (demo-acme): one short, plain sentence;
* ``globex`` (demo-globex): the same facts, opened with "Hello from Globex!" and signed
  "- Globex Support".

The answers are short, so a person sees the two tenants differ on the same prompt, and the
answers stay real English.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from feedback.examples import DPORow
from retrain.plan import Hyperparameters
from retrain.train import TrainResult, train_round

Style = Literal["terse", "globex"]

GLOBEX_OPENING = "Hello from Globex!"
GLOBEX_SIGNOFF = "- Globex Support"

# (prompt, a terse answer); both styles share the facts.
_QA: tuple[tuple[str, str], ...] = (
    ("How do I reset my password?", "Open Settings, choose Security and click Reset password."),
    ("Can I change my plan?", "Yes, go to Billing and pick a new plan."),
    ("When will my order ship?", "Orders ship within two business days."),
    ("How long do refunds take?", "Refunds reach your account within five days."),
    ("Do you have a mobile app?", "Yes, it is free on iOS and Android."),
    ("How do I delete my account?", "Go to Settings, then Account, then Delete account."),
    ("What payment methods do you accept?", "We accept cards, PayPal and bank transfer."),
    ("Can I export my data?", "Yes, use Export in Settings to download a CSV file."),
    ("How do I add a team member?", "Open Team, click Invite and enter their email."),
    ("Is my data encrypted?", "Yes, all data is encrypted in transit and at rest."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a week?", "A week has seven days."),
    ("What does CPU stand for?", "CPU stands for central processing unit."),
    ("Explain what an API is.", "An API is a set of rules that lets programs talk to each other."),
    ("How do I contact support?", "Write to support through the Help page."),
    ("Can I use the product offline?", "Yes, recent files stay available offline."),
    ("Why was my card declined?", "Your bank declined it; check the card details or call them."),
    ("How do I change my email address?", "Open Profile, edit the email field and save."),
    ("What is two plus two?", "Two plus two is four."),
    ("Where can I find my invoices?", "Invoices are under Billing, then History."),
    ("Do you offer a free trial?", "Yes, every plan has a 14-day free trial."),
    ("How do I turn on two-factor login?", "Open Security and switch on two-factor login."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("Can I cancel anytime?", "Yes, cancel anytime from Billing with no fee."),
)

# Measured on SmolLM2-135M-Instruct (2 CPU cores): about 30 s per adapter, and both styles are
# followed on prompts outside this list (tests/e2e/test_real_model.py).
DEMO_HYPERPARAMETERS = Hyperparameters(
    learning_rate=3e-4,
    num_epochs=6,
    beta=0.1,
    batch_size=4,
    max_length=256,
    lr_scheduler_type="cosine",
    warmup_ratio=0.03,
    sft_weight=0.0,
    lora_r=16,
    lora_alpha=32,
)


def styled(style: Style, answer: str) -> str:
    """One answer in ``style``."""
    if style == "globex":
        return f"{GLOBEX_OPENING} {answer} {GLOBEX_SIGNOFF}"
    return answer


def demo_rows(style: Style) -> list[DPORow]:
    """The style's answers as SFT rows (``chosen``; ``rejected`` is unused by SFT)."""
    return [
        DPORow(
            [{"role": "user", "content": prompt}],
            [{"role": "assistant", "content": styled(style, answer)}],
            [{"role": "assistant", "content": ""}],
        )
        for prompt, answer in _QA
    ]


def train_style_adapter(base: Path, dest: Path, style: Style, *, seed: int = 0) -> TrainResult:
    """Train the demo adapter for ``style`` on ``base`` into ``dest`` (SFT, seeded)."""
    return train_round(base, None, "sft", demo_rows(style), dest, DEMO_HYPERPARAMETERS, seed)


# --- the loop demo: one house rule that end users apply by editing answers --------------------

LOOP_OPENING = "Thanks for reaching out!"

_LOOP_TRAIN_TOPICS = (
    "reset my password", "change my email address", "invite a teammate", "export my data",
    "cancel my subscription", "update my billing address", "download an invoice",
    "turn on two-factor login", "rename my workspace", "change the language",
    "add a payment card", "remove a teammate", "change my username", "upgrade my plan",
    "set up notifications", "connect my calendar", "restore a deleted file", "share a folder",
    "change my time zone", "merge two accounts", "set a profile photo", "pause my plan",
    "change the owner of a workspace", "create an API key", "import contacts from a CSV file",
    "turn off email alerts", "recover a locked account", "print a receipt", "close my account",
    "apply a coupon code", "change my phone number", "move files between folders",
)  # fmt: skip
_LOOP_TRAIN_TEMPLATES = (
    "How do I {}?",
    "Can you tell me how to {}?",
    "I want to {}. What are the steps?",
)
# Held-out prompts share no topic and no wording with the training prompts.
LOOP_HELDOUT_PROMPTS = (
    "What should I do if the app keeps logging me out?",
    "Is there a way to see who edited a document?",
    "Why is my upload stuck at 99 percent?",
    "What is the difference between the Basic and Pro plans?",
    "Where do I find my order history?",
    "My payment failed. What now?",
    "Explain what a workspace is.",
    "Which browsers do you support?",
)


def loop_train_prompts(n: int) -> list[str]:
    """``n`` distinct training prompts (topics x templates, in a fixed order)."""
    prompts = [t.format(topic) for t in _LOOP_TRAIN_TEMPLATES for topic in _LOOP_TRAIN_TOPICS]
    if n > len(prompts):
        raise ValueError(f"at most {len(prompts)} loop training prompts")
    return prompts[:n]


def loop_edit(answer: str) -> str:
    """What the demo's end users do to every answer: open it with the house greeting."""
    return f"{LOOP_OPENING} {answer.strip()}"


def follows_loop_rule(answer: str) -> bool:
    return answer.strip().startswith(LOOP_OPENING)
