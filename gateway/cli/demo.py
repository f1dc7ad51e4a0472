"""``flywheel demo loop``: the whole feedback loop against a running gateway, step by step.

It creates its own tenant through the admin API, registers a fresh signed adapter and a golden
set, asks held-out questions, sends completions through the OpenAI-compatible API, and posts
edits that apply one house rule (open with a greeting) through the public feedback API. It then
runs a retraining round here (same database and artifact store as the gateway), gates and signs
the candidate, promotes it through the admin API, and asks the held-out questions again: the
rule-follow rate before and after, with a few answers, is the point. Any failed step exits
non-zero.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import typer

from adapters.base_models import resolve_base
from adapters.demo import build_demo_adapter
from gateway.cli.common import clean_errors, out, run_db
from gateway.core.admin_tokens import local_admin_token
from gateway.core.config import Settings
from gateway.core.db.session import Database
from gateway.core.errors import FlywheelError
from gateway.engine.base import is_demo_base

app = typer.Typer(no_args_is_help=True, help="Demonstrations.")


class StepFailed(FlywheelError):
    pass


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 400:
        raise StepFailed(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


async def _ask(
    http: httpx.AsyncClient, key: dict[str, str], prompts: list[str], max_tokens: int
) -> list[tuple[str, str, str]]:
    """(completion id, answer, serving version) for each prompt, sent concurrently so the
    engine batches them."""

    async def one(prompt: str) -> tuple[str, str, str]:
        body = {"model": "support", "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
        r = await http.post("/v1/chat/completions", json=body, headers=key)
        completion = _check(r, "completion")
        text = completion["choices"][0]["message"]["content"] or ""
        return completion["id"], text, r.headers.get("x-flywheel-adapter-version", "")

    results: list[tuple[str, str, str]] = []
    for start in range(0, len(prompts), 16):
        results += await asyncio.gather(*(one(p) for p in prompts[start : start + 16]))
    return results


def _show(prompts: list[str], answers: list[str], shown: int = 3) -> None:
    for prompt, answer in list(zip(prompts, answers, strict=True))[:shown]:
        out(f"      Q: {prompt}")
        out(f"      A: {' '.join(answer.split())[:160]}")


def _rate(answers: list[str]) -> str:
    from retrain.demo import follows_loop_rule  # deferred: TRL and torch

    hits = sum(follows_loop_rule(a) for a in answers)
    return f"{hits}/{len(answers)} ({hits / len(answers):.0%})"


async def _loop(db: Database, s: Settings, url: str, n_edits: int) -> None:
    # deferred: TRL and torch
    from retrain.demo import LOOP_HELDOUT_PROMPTS, LOOP_OPENING, loop_edit, loop_train_prompts
    from retrain.rounds import prepare, run_round  # deferred: TRL and torch

    token = local_admin_token(s)
    if token is None:
        raise StepFailed(
            "no admin token: set FLYWHEEL_ADMIN_TOKEN, or run where <data_dir>/admin-token is "
            "(development), or create one with `flywheel admin token-create`"
        )
    admin = {"Authorization": f"Bearer {token}"}
    base = await asyncio.to_thread(resolve_base, s)
    tiny = is_demo_base(base.path)
    # The tiny random base only shows mechanics: its text is noise, and a LoRA moves it only at
    # a much larger learning rate (tests/retrain/test_retrain_core.py measures why).
    overrides: dict[str, Any] = {"learning_rate": 3e-3, "num_epochs": 5} if tiny else {}
    max_tokens = 12 if tiny else 48
    heldout = list(LOOP_HELDOUT_PROMPTS)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        name = f"loop-{uuid.uuid4().hex[:6]}"
        tenant = _check(
            await http.post("/admin/tenants", json={"name": name}, headers=admin), "create tenant"
        )
        key = {"Authorization": f"Bearer {tenant['api_key']}"}
        out(f"[1] tenant {name} created through the admin API")

        # A fresh adapter: on a real base LoRA starts as a no-op (B = 0), so v1 answers exactly
        # like the base; on the tiny base a random one, as the mechanics demo always did.
        src = s.data_dir / "models" / ("demo-loop-adapter" + ("" if tiny else "-fresh"))
        if not (src / "adapter_config.json").exists():
            scale = 0.5 if tiny else 0.0
            await asyncio.to_thread(build_demo_adapter, base.path, src, seed=7, scale=scale)
        added = _check(
            await http.post(
                "/admin/adapters",
                json={"tenant": name, "name": "support", "path": str(src), "sign": True},
                headers=admin,
            ),
            "register adapter",
        )
        out(f"[2] adapter support@{added['version']} registered, signed={added['signed']}")

        golden = [
            {"messages": [{"role": "user", "content": q}],
             "reference": loop_edit("I can help with that. Here is what to do."),
             "checks": [{"type": "max_length", "value": 5000, "hard": True}]}
            for q in ("What are your opening hours?", "How do I reach a human?", "Is my data safe?")
        ]  # fmt: skip
        g = _check(
            await http.post(
                "/admin/golden",
                json={"tenant": name, "adapter": "support", "items": golden},
                headers=admin,
            ),
            "golden set",
        )
        out(
            f"[3] golden set v{g['version']} frozen before any feedback ({g['items']} items, "
            f"sha256 {g['content_hash'][:12]})"
        )

        before = [a for _, a, _ in await _ask(http, key, heldout, max_tokens)]
        out(
            f"[4] the house rule end users will apply: open every answer with {LOOP_OPENING!r}."
            f" Held-out prompts following it now: {_rate(before)}"
        )
        _show(heldout, before)

        prompts = loop_train_prompts(n_edits)
        served = await _ask(http, key, prompts, max_tokens)
        for completion_id, answer, _ in served:
            fb = {
                "completion_id": completion_id,
                "edited_output": loop_edit(answer),
                "id": f"demo-{completion_id}",
            }
            _check(await http.post("/v1/feedback", json=fb, headers=key), "feedback")
        out(
            f"[5] {len(served)} completions served by {served[-1][2]}, each edited by its end "
            "user through /v1/feedback"
        )

        # The gateway writes completion rows in batches; wait until they are all in the database.
        deadline = time.monotonic() + 60
        while True:
            prepared = None
            try:
                prepared = await prepare(
                    db, s, tenant=name, adapter="support", seed=1, overrides=overrides
                )
            except FlywheelError:
                if time.monotonic() > deadline:
                    raise
            if prepared is not None and prepared.counts["edit pairs"] >= len(served):
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)  # polling the database for the batched writes to land
        assert prepared is not None
        out("[6] round plan:\n    " + prepared.describe().replace("\n", "\n    "))
        outcome = await run_round(db, s, prepared, seed=1, progress=_progress)
        out(
            f"[7] round {outcome.round_id}: candidate support@{outcome.candidate_version} in "
            f"{sum(outcome.timings.values()):.0f}s"
        )
        out("[8] " + outcome.gate_summary.replace("\n", "\n    "))
        if not outcome.gate_passed:
            raise StepFailed("the gate rejected the candidate; the serving version is unchanged")
        verified = _check(
            await http.post(
                f"/admin/adapters/{name}/support/versions/{outcome.candidate_version}/verify",
                headers=admin,
            ),
            "verify signature",
        )
        swap = _check(
            await http.post(
                f"/admin/adapters/{name}/support/promote",
                json={"version": outcome.candidate_version, "reason": "demo loop"},
                headers=admin,
            ),
            "promote",
        )
        out(
            f"[9] signature of support@{verified['version']} verified; promoted "
            f"v{swap['from_version']} -> v{swap['to_version']} in {swap['seconds']:.3f}s"
        )
        after = await _ask(http, key, heldout, max_tokens)
        versions = {v for _, _, v in after}
        if versions != {f"support@{outcome.candidate_version}"}:
            raise StepFailed(
                f"expected support@{outcome.candidate_version} to serve, got {versions}"
            )
        answers = [a for _, a, _ in after]
        out(
            f"[10] held-out prompts following the rule: {_rate(before)} before, "
            f"{_rate(answers)} after, served by {versions.pop()}: the loop is closed"
        )
        _show(heldout, answers)


def _progress(event: dict[str, Any]) -> None:
    out("      " + str(event.get("line", "")))


@app.command("loop")
@clean_errors
def loop(
    url: str = typer.Option(None, help="Gateway URL (default FLYWHEEL_GATEWAY_URL or host:port)."),
    edits: int = typer.Option(96, help="Completions to send and edit (at most 96)."),
) -> None:
    """Run feedback -> retrain -> gate -> sign -> promote against a running gateway, and show
    the held-out answers before and after."""

    async def go(db: Database, s: Settings) -> None:
        await _loop(db, s, url or s.resolved_gateway_url, edits)

    run_db(go)
