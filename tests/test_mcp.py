"""`gram-local mcp` as a real stdio process, driven by the official SDK's own client."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp")
from mcp.client import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402
from service_process import REPO  # noqa: E402


def _server(model: Path) -> StdioServerParameters:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "gram_local", "mcp", "-m", str(model), "--max-think-tokens", "8", "--ctx", "1024", "--max-responses", "3"],
        env=env,
    )


async def _session(model: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with Client(_server(model), read_timeout_seconds=300) as client:
        tools = (await client.list_tools()).tools
        seen["tools"] = {t.name: t.input_schema for t in tools}
        seen["compare"] = await client.call_tool("compare", {"question": "What is 2+2?", "a": "4", "b": "5", "swap": True})
        seen["rank"] = await client.call_tool("rank", {"question": "What is 2+2?", "responses": ["4", "5", "four"]})
        seen["too_many"] = await client.call_tool("best-of-n", {"question": "q", "responses": ["1", "2", "3", "4"]})
        seen["bad_type"] = await client.call_tool("compare", {"question": "q", "a": "x", "b": 5})
        seen["empty"] = await client.call_tool("compare", {"question": "q", "a": "", "b": "y"})
    return seen


def test_mcp_tools_have_typed_inputs_and_return_the_cli_json(smollm2_path: Path) -> None:
    seen = asyncio.run(_session(smollm2_path))
    tools = seen["tools"]
    assert set(tools) == {"compare", "vote", "rank", "best-of-n"}
    assert tools["compare"]["properties"]["swap"]["type"] == "boolean"
    assert set(tools["compare"]["required"]) == {"question", "a", "b"}
    assert tools["rank"]["properties"]["responses"]["type"] == "array"
    assert tools["vote"]["properties"]["k"]["type"] == "integer"

    compare = seen["compare"]
    assert not compare.is_error
    result = compare.structured_content
    assert result["winner"] in ("a", "b", "tie") and [j["order"] for j in result["judgments"]] == ["AB", "BA"]
    assert result["settings"]["swap"] is True and result["settings"]["max_think_tokens"] == 8
    ranked = seen["rank"].structured_content
    assert sorted(ranked["ranking"]) == [0, 1, 2]

    assert seen["too_many"].is_error and "limit of 3" in seen["too_many"].content[0].text
    assert seen["bad_type"].is_error
    assert seen["empty"].is_error and "InputError" in seen["empty"].content[0].text
    for failed in ("too_many", "bad_type", "empty"):
        assert "Traceback" not in seen[failed].content[0].text
