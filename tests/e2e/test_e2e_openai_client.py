"""End to end: a real `flywheel serve` process driven by the official `openai` client.

Tenants and adapters are created through the `flywheel` CLI, as an operator would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tools.harness import free_port, wait_until_up

pytestmark = pytest.mark.slow
FLYWHEEL = [sys.executable, "-m", "gateway.cli.main"]


@dataclass
class Server:
    url: str
    env: dict[str, str]
    key_a: str
    key_b: str

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [*FLYWHEEL, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def server(
    fresh_database_url: str,
    demo_base: Path,
    demo_adapters: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("e2e")
    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(data),
        "FLYWHEEL_DATABASE_URL": fresh_database_url,
        "FLYWHEEL_BASE_MODEL": str(demo_base),
        "FLYWHEEL_BASE_MODEL_NAME": "demo-base",
        "FLYWHEEL_DEMO_BOOTSTRAP": "false",
        "FLYWHEEL_PORT": str(port),
        "FLYWHEEL_DEFAULT_RPM": "1000",
    }
    srv = Server(f"http://127.0.0.1:{port}", env, "", "")
    srv.key_a = srv.cli("tenants", "create", "acme").strip()
    srv.key_b = srv.cli("tenants", "create", "globex").strip()
    assert srv.key_a.startswith("fw-") and "\n" not in srv.key_a
    srv.cli(
        "adapters", "add", "--tenant", "acme", "--name", "support", "--sign", str(demo_adapters[0])
    )
    srv.cli(
        "adapters",
        "add",
        "--tenant",
        "globex",
        "--name",
        "support",
        "--sign",
        str(demo_adapters[1]),
    )
    srv.cli(
        "adapters",
        "add",
        "--tenant",
        "globex",
        "--name",
        "private",
        "--sign",
        str(demo_adapters[2]),
    )
    # A log file, not a pipe: nothing reads the gateway's output while it runs, and a full
    # pipe would block its logging.
    log = data / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*FLYWHEEL, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"{srv.url}/readyz", proc, log)
        yield srv
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def client(srv: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0)


def test_chat_and_stream(server: Server) -> None:
    c = client(server, server.key_a)
    resp = c.chat.completions.create(
        model="support", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )
    assert resp.id.startswith("chatcmpl-") and resp.model == "support"
    assert resp.usage is not None and resp.usage.completion_tokens >= 1
    stream = c.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == resp.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    raw = c.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert raw.headers["x-flywheel-adapter-version"] == "support@1"


def test_text_completion(server: Server) -> None:
    resp = client(server, server.key_a).completions.create(
        model="support", prompt="Hello", max_tokens=4, temperature=0
    )
    assert resp.object == "text_completion" and resp.choices[0].finish_reason in ("stop", "length")


def test_models(server: Server) -> None:
    ids = sorted(m.id for m in client(server, server.key_b).models.list())
    assert ids == ["demo-base", "private", "support"]
    assert sorted(m.id for m in client(server, server.key_a).models.list()) == [
        "demo-base",
        "support",
    ]


def test_errors_map_to_openai_exceptions(server: Server) -> None:
    a = client(server, server.key_a)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        client(server, "fw-wrong").chat.completions.create(model="support", messages=msgs)
    with pytest.raises(openai.NotFoundError):
        a.chat.completions.create(model="private", messages=msgs)  # globex's adapter
    with pytest.raises(openai.BadRequestError):
        a.chat.completions.create(model="support", messages=[])
    with pytest.raises(openai.BadRequestError):
        a.chat.completions.create(model="support", messages=msgs, max_tokens=10**8)
    with pytest.raises(openai.APIStatusError) as big:
        a.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "x" * 2_000_000}]
        )
    assert big.value.status_code == 413


def test_rate_limit_and_revocation(server: Server) -> None:
    key = server.cli("tenants", "create", "tiny", "--rpm", "1").strip()
    c = client(server, key)
    msgs = [{"role": "user", "content": "hi"}]
    c.chat.completions.create(model="demo-base", messages=msgs, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as exc:
        c.chat.completions.create(model="demo-base", messages=msgs, max_tokens=2)
    assert int(exc.value.response.headers["retry-after"]) >= 1
    key_id = server.cli("keys", "list", "tiny").split()[0]
    server.cli("keys", "revoke", key_id)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="demo-base", messages=msgs, max_tokens=2)
    new_key = server.cli("keys", "rotate", "acme").strip()
    with pytest.raises(openai.AuthenticationError):
        client(server, server.key_a).models.list()
    assert client(server, new_key).models.list()
    server.key_a = new_key
