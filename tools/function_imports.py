"""First-party imports made inside functions, and whether each says why (``make check``).

ARCHITECTURE.md's rule: imports sit at the top of a module, except where a heavy optional
dependency (torch, transformers, TRL, PEFT, model-signing) or a real cycle forces otherwise,
and then a comment says so, on the import's line or on the comment line above its group of
imports.  This lists every first-party function-level import (``-v``) and exits 1 when one has
no reason.

    .venv/bin/python tools/function_imports.py [-v]
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOTS = ("gateway", "adapters", "feedback", "retrain")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Found:
    path: str
    line: int
    module: str
    reason: str | None


def _reason(lines: list[str], node: ast.ImportFrom | ast.Import) -> str | None:
    """The comment on the import's lines, or above the run of imports it belongs to."""
    for text in lines[node.lineno - 1 : node.end_lineno]:
        if "#" in text:
            return text.split("#", 1)[1].strip()
    at = node.lineno - 2
    while at >= 0 and lines[at].strip().startswith(("from ", "import ", ")")):
        at -= 1  # the group of imports this one belongs to
    while at >= 0 and lines[at].strip().startswith(("from ", "import ")) is False:
        text = lines[at].strip()
        if text.startswith("#"):
            block = [text]
            while at > 0 and lines[at - 1].strip().startswith("#"):
                at -= 1
                block.insert(0, lines[at].strip())
            return " ".join(line.lstrip("# ") for line in block)
        if text and not text.endswith((",", "(")):
            return None
        at -= 1
    return None


def _first_party(node: ast.ImportFrom | ast.Import) -> str | None:
    names = (
        [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
    )
    for name in names:
        if name.split(".")[0] in ROOTS:
            return name
    return None


def scan(root: Path = REPO) -> list[Found]:
    found: list[Found] = []
    for package in ROOTS:
        for path in sorted((root / package).rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            seen: set[int] = set()
            for node in ast.walk(ast.parse(source)):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for sub in ast.walk(node):
                    if not isinstance(sub, ast.ImportFrom | ast.Import) or sub.lineno in seen:
                        continue
                    seen.add(sub.lineno)
                    module = _first_party(sub)
                    if module is not None:
                        rel = str(path.relative_to(root))
                        found.append(Found(rel, sub.lineno, module, _reason(lines, sub)))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list every one")
    args = parser.parse_args()
    found = scan()
    missing = [f for f in found if f.reason is None]
    for f in found if args.verbose else missing:
        why = f.reason or "NO REASON GIVEN"
        print(f"{f.path}:{f.line}: {f.module}  # {why}")
    print(f"{len(found)} first-party imports inside functions, {len(missing)} without a reason")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
