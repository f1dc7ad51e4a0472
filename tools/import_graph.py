"""The package-level import graph: which layer imports which (``make import-graph``).

Counts every import grimp sees, including the ones inside functions; ``--no-type-checking``
leaves out ``if TYPE_CHECKING:`` imports, as the layer contract does.  Cycles between groups
are listed at the end (there should be none).
"""

from __future__ import annotations

import argparse
import itertools

import grimp

ROOTS = ("gateway", "adapters", "feedback", "retrain")


def group(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "gateway" and len(parts) > 1:
        return f"gateway.{parts[1]}"
    return parts[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-type-checking", action="store_true")
    args = parser.parse_args()
    graph = grimp.build_graph(*ROOTS, exclude_type_checking_imports=args.no_type_checking)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = group(module), group(imported)
            if a != b:
                edges.setdefault(a, set()).add(b)
    for source in sorted(edges):
        print(f"{source} -> {', '.join(sorted(edges[source]))}")
    cycles = [(a, b) for a, b in itertools.combinations(sorted(edges), 2)
              if b in edges.get(a, ()) and a in edges.get(b, ())]  # fmt: skip
    print(
        f"\n{len(cycles)} two-way pair(s) between groups"
        + "".join(f"\n  {a} <-> {b}" for a, b in cycles)
    )


if __name__ == "__main__":
    main()
