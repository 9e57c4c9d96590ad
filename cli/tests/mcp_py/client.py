"""Drives `tailor mcp` over stdio with the official MCP Python client (PyPI `mcp`).

Usage: client.py TAILOR_BIN PROFILE MODE [--model PATH] [--ask]
  MODE: `auto` (the client probes `server/discover`, 2026-07-28+, and falls back) or `legacy`
  (the `initialize` handshake, as desktop assistants of the 2025 protocol revisions do).
  --ask: also ask the personal model about a remembered fact (needs the real model).

Checks as it goes (an AssertionError fails it) and prints one JSON line of findings at the end.
Run by cli/tests/mcp.rs, which makes the venv.
"""

import argparse
import asyncio
import json

import anyio
import os
import sys

import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

EXPECTED_TOOLS = {"remember", "recall", "forget", "give_feedback", "ask_personal_model"}


def text_of(result):
    return "".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def call_ok(client, name, args):
    r = await client.call_tool(name, args)
    assert not r.is_error, f"{name}({args}) failed: {text_of(r)}"
    assert isinstance(r.structured_content, dict), f"{name}: no structured content: {r}"
    # The text block carries the same JSON for clients that ignore structured content.
    assert json.loads(text_of(r)) == r.structured_content, f"{name}: text and structured content differ"
    return r.structured_content


async def call_err(client, name, args, needle):
    r = await client.call_tool(name, args)
    assert r.is_error, f"{name}({args}) should fail, got {r.structured_content}"
    msg = text_of(r)
    assert needle in msg, f"{name}({args}): {msg!r} lacks {needle!r}"
    return msg


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tailor")
    ap.add_argument("profile")
    ap.add_argument("mode", choices=["auto", "legacy"])
    ap.add_argument("--model")
    ap.add_argument("--ask", action="store_true")
    a = ap.parse_args()

    args = ["mcp", "--profile", a.profile, "--threads", "2"]
    if a.model:
        args += ["--model", a.model]
    # The client passes only a few variables to the server; the model cache must be named.
    env = {k: os.environ[k] for k in ("TAILOR_HOME",) if k in os.environ}
    params = StdioServerParameters(command=a.tailor, args=args, env=env)
    found = {"mode": a.mode}
    # Resource-list changes: notifications on handshake-era connections, a listen stream on
    # 2026-07-28 ones. Counted here.
    changed = {"n": 0, "event": anyio.Event()}

    def saw_change():
        changed["n"] += 1
        changed["event"].set()

    async def on_message(message):
        if isinstance(message, types.ResourceListChangedNotification):
            saw_change()

    async def reset_changes():
        # Let the notifications of earlier calls arrive, then forget them.
        await anyio.sleep(0.5)
        changed["event"] = anyio.Event()

    async def wait_change(what):
        with anyio.fail_after(10):
            await changed["event"].wait()
        changed["event"] = anyio.Event()
        found.setdefault("changes", []).append(what)

    # No client-side response cache: every list below must come from the server.
    async with Client(params, mode=a.mode, cache=None, read_timeout_seconds=120, message_handler=on_message) as client, anyio.create_task_group() as tg:
        found["protocol_version"] = client.protocol_version
        await client.send_ping()
        if client.protocol_version == "2026-07-28":
            listening = anyio.Event()

            async def listen():
                async with client.listen(resources_list_changed=True) as sub:
                    assert sub.honored.resources_list_changed, sub.honored
                    listening.set()
                    async for event in sub:
                        if event.__class__.__name__ == "ResourcesListChanged":
                            saw_change()

            tg.start_soon(listen)
            with anyio.fail_after(10):
                await listening.wait()

        tools = await client.list_tools()
        names = {t.name for t in tools.tools}
        assert names == EXPECTED_TOOLS, names
        by_name = {t.name: t for t in tools.tools}
        assert by_name["remember"].input_schema["required"] == ["text"], by_name["remember"].input_schema
        assert by_name["recall"].annotations.read_only_hint is True
        assert by_name["forget"].annotations.destructive_hint is True
        found["tools"] = sorted(names)

        # remember -> recall -> forget.
        dog = await call_ok(client, "remember", {"text": "My dog is called Biscuit."})
        assert dog["action"] == "inserted", dog
        await wait_change("remember")
        tea = await call_ok(client, "remember", {"text": "I drink green tea every morning.", "importance": 0.9})
        assert tea["id"] != dog["id"]
        # A near-duplicate updates the same memory.
        again = await call_ok(client, "remember", {"text": "My dog is called Biscuit"})
        assert again["id"] == dog["id"] and again["action"] in ("updated", "unchanged"), again
        found["remembered"] = [dog["id"], tea["id"]]

        hits = (await call_ok(client, "recall", {"query": "what is the name of my dog", "limit": 2}))["memories"]
        assert hits and hits[0]["id"] == dog["id"], hits
        assert "Biscuit" in hits[0]["text"]
        assert all(isinstance(h["score"], float) for h in hits)
        found["recall_top"] = hits[0]

        # Resources: the list resource and one per memory.
        res = await client.list_resources()
        uris = {r.uri for r in res.resources}
        assert {"memory://all", f"memory://{dog['id']}", f"memory://{tea['id']}"} <= uris, uris
        one = await client.read_resource(f"memory://{dog['id']}")
        assert "Biscuit" in one.contents[0].text, one
        every = json.loads((await client.read_resource("memory://all")).contents[0].text)
        assert sorted(m["id"] for m in every) == sorted([dog["id"], tea["id"]]), every
        templates = await client.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == ["memory://{id}"]
        try:
            await client.read_resource("memory://999999")
            raise AssertionError("reading a missing memory should fail")
        except MCPError as e:
            found["missing_resource_error"] = e.error.code

        # Feedback.
        await reset_changes()
        fb = await call_ok(client, "give_feedback", {"prompt": "What is my dog called?", "answer": "Rex.", "correction": "Biscuit."})
        assert isinstance(fb["id"], int)
        # The correction is mirrored into a memory (and the resource list changes).
        assert isinstance(fb.get("memory_id"), int), fb
        await wait_change("give_feedback")
        fb2 = await call_ok(client, "give_feedback", {"prompt": "Hi", "answer": "Hello!", "thumbs": "up"})
        assert fb2["id"] != fb["id"]
        # Two events are below the default threshold (3): no background run yet.
        assert fb["training"] == {"started": False} and fb2["training"] == {"started": False}, (fb, fb2)

        # Tool errors come back as isError results, and the server keeps serving.
        errors = [
            await call_err(client, "remember", {"text": "   "}, "empty"),
            await call_err(client, "recall", {"query": "dog", "limit": 0}, "limit"),
            await call_err(client, "forget", {}, "id"),
            await call_err(client, "forget", {"all": True}, "confirm"),
            await call_err(client, "forget", {"id": 999999}, "999999"),
            await call_err(client, "give_feedback", {"prompt": "a", "answer": "b"}, "exactly one"),
            await call_err(client, "give_feedback", {"prompt": "a", "answer": "b", "chosen": "x"}, "together"),
            await call_err(client, "ask_personal_model", {"question": "hi", "max_tokens": 100000}, "max_tokens"),
        ]
        found["tool_errors"] = errors
        # A wrongly typed argument is the protocol's invalid-params error, or a tool error.
        try:
            r = await client.call_tool("recall", {"query": 3})
            assert r.is_error, r
        except MCPError as e:
            assert e.error.code == -32602, e.error
        try:
            await client.call_tool("no_such_tool", {})
            raise AssertionError("an unknown tool should fail")
        except MCPError as e:
            found["unknown_tool_error"] = e.error.code

        if a.ask:
            ans = await call_ok(client, "ask_personal_model", {"question": "What is my dog called?", "max_tokens": 24})
            found["answer"] = ans
            assert dog["id"] in [m["id"] for m in ans["memories_used"]], ans
            assert "Biscuit" in ans["answer"], ans
            alone = await call_ok(client, "ask_personal_model", {"question": "What is my dog called?", "max_tokens": 4, "use_memory": False})
            assert alone["memories_used"] == [], alone

        # Forget one, then the rest.
        await reset_changes()
        out = await call_ok(client, "forget", {"id": dog["id"]})
        assert out["forgotten"] == 1
        await wait_change("forget")
        hits = (await call_ok(client, "recall", {"query": "what is the name of my dog", "limit": 5}))["memories"]
        assert dog["id"] not in [h["id"] for h in hits], hits
        uris = {r.uri for r in (await client.list_resources()).resources}
        assert f"memory://{dog['id']}" not in uris, uris
        await call_err(client, "forget", {"id": dog["id"]}, str(dog["id"]))
        out = await call_ok(client, "forget", {"all": True, "confirm": True})
        assert out["forgotten"] == 2, out  # the tea, and the mirrored correction
        every = json.loads((await client.read_resource("memory://all")).contents[0].text)
        assert every == [], every
        tg.cancel_scope.cancel()
    print(json.dumps(found))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BaseException as e:  # an ExceptionGroup from the client's task group included
        import traceback

        traceback.print_exc()
        sys.exit(1)
