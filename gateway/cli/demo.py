"""``flywheel demo loop``: the whole feedback loop against a running gateway, step by step.

It creates its own tenant through the admin API, registers a signed demo adapter and a golden
set, sends completions with the `openai`-compatible API, posts synthetic edits through the
public feedback API, runs a retrain round here (same database and artifact store as the
gateway), gates and signs the candidate, promotes it through the admin API, and checks that the
next completion is served by the new version.  Any failed step exits non-zero.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import typer

from gateway.cli.common import clean_errors, out, run_db
from gateway.config import Settings
from gateway.db.session import Database
from gateway.errors import FlywheelError

app = typer.Typer(no_args_is_help=True, help="Demonstrations.")

TOPICS = ["billing", "refunds", "shipping", "passwords", "invoices", "plans", "orders", "returns",
          "accounts", "settings", "upgrades", "coupons", "delivery", "payments", "taxes", "support"]  # fmt: skip
GOOD = "Thank you for asking about {topic}. We are happy to help."


class StepFailed(FlywheelError):
    pass


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 400:
        raise StepFailed(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


async def _loop(db: Database, s: Settings, url: str, rounds_of_feedback: int) -> None:
    from adapters.demo import build_demo_adapter
    from gateway.bootstrap import resolve_base
    from gateway.services.admin_tokens import local_admin_token
    from retrain.rounds import prepare, run_round

    token = local_admin_token(s)
    if token is None:
        raise StepFailed("no admin token (FLYWHEEL_ADMIN_TOKEN or <data_dir>/admin-token)")
    admin = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        name = f"loop-{uuid.uuid4().hex[:6]}"
        tenant = _check(
            await http.post("/admin/tenants", json={"name": name}, headers=admin), "create tenant"
        )
        key = {"Authorization": f"Bearer {tenant['api_key']}"}
        out(f"[1] tenant {name} created through the admin API")

        base = await asyncio.to_thread(resolve_base, s)
        src = s.data_dir / "models" / "demo-loop-adapter"
        if not (src / "adapter_config.json").exists():
            await asyncio.to_thread(build_demo_adapter, base.path, src, seed=7)
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
            {"messages": [{"role": "user", "content": f"Tell me about {t}"}], "reference": GOOD.format(topic=t),
             "checks": [{"type": "max_length", "value": 5000, "hard": True}]}
            for t in ("prices", "hours", "stock")
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
            f"[3] golden set v{g['version']} frozen ({g['items']} items, sha256 {g['content_hash'][:12]})"
        )

        served_before = ""
        count = 0
        for i in range(rounds_of_feedback):
            for topic in TOPICS:
                body = {"model": "support", "max_tokens": 12, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Tell me about {topic} #{i}"}]}  # fmt: skip
                r = await http.post("/v1/chat/completions", json=body, headers=key)
                completion = _check(r, "completion")
                served_before = r.headers.get("x-flywheel-adapter-version", "")
                fb = {
                    "completion_id": completion["id"],
                    "edited_output": GOOD.format(topic=topic),
                    "id": f"demo-{completion['id']}",
                }
                _check(await http.post("/v1/feedback", json=fb, headers=key), "feedback")
                count += 1
        out(
            f"[4] {count} completions served by {served_before}, {count} edits posted via /v1/feedback"
        )

        # The gateway writes completion rows in batches; wait until they are all in the database.
        deadline = time.monotonic() + 60
        while True:
            prepared = None
            try:
                prepared = await prepare(db, s, tenant=name, adapter="support", seed=1)
            except FlywheelError:
                if time.monotonic() > deadline:
                    raise
            if prepared is not None and prepared.counts["edit pairs"] >= count:
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)  # polling the database for the batched writes to land
        assert prepared is not None
        out("[5] round plan:\n    " + prepared.describe().replace("\n", "\n    "))
        outcome = await run_round(db, s, prepared, seed=1)
        metrics = {
            k: round(v, 4)
            for k, v in outcome.metrics.items()
            if k in ("train_loss", "rewards/margins", "rewards/accuracies")
        }
        out(
            f"[6] round {outcome.round_id}: candidate support@{outcome.candidate_version}, metrics {metrics}"
        )
        out("[7] " + outcome.gate_summary.replace("\n", "\n    "))
        if not outcome.gate_passed:
            raise StepFailed("the gate rejected the candidate")
        verified = _check(
            await http.post(
                f"/admin/adapters/{name}/support/versions/{outcome.candidate_version}/verify",
                headers=admin,
            ),
            "verify signature",
        )
        out(
            f"[8] signature of support@{verified['version']} verifies against the trusted public key"
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
            f"[9] promoted v{swap['from_version']} -> v{swap['to_version']} in {swap['seconds']:.3f}s"
        )
        r = await http.post(
            "/v1/chat/completions",
            json={
                "model": "support",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Tell me about refunds"}],
            },
            headers=key,
        )
        _check(r, "completion after promotion")
        served = r.headers.get("x-flywheel-adapter-version")
        if served != f"support@{outcome.candidate_version}":
            raise StepFailed(f"expected support@{outcome.candidate_version} to serve, got {served}")
        out(f"[10] next completion served by {served}: the loop is closed")


@app.command("loop")
@clean_errors
def loop(
    url: str = typer.Option(None, help="Gateway URL (default FLYWHEEL_GATEWAY_URL or host:port)."),
    rounds: int = typer.Option(2, help="Feedback passes over the 16 demo topics."),
) -> None:
    """Run feedback -> retrain -> gate -> sign -> promote against a running gateway."""

    async def go(db: Database, s: Settings) -> None:
        await _loop(db, s, url or s.resolved_gateway_url, rounds)

    run_db(go)
