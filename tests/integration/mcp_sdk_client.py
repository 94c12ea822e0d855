"""Drives `execute-local-task mcp` with the official MCP Python SDK.

Usage: mcp_sdk_client.py BINARY SPEC_PATH. Lists the tools, runs the spec with
`run_task` (following `running` answers with `get_run`), asks `config` (an object) and
`log` (an array: text only), then asks a second server for the run with `get_run`, and
prints one JSON line: {"tools": [...], "is_error": bool, "result": {...}, "progress":
[...], "config_files": N, "logged": [...run ids], "restarted": {...}}.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def field(result, *names):
    # The SDK's result fields are snake_case in 2.x and camelCase in 1.x.
    for name in names:
        if hasattr(result, name):
            return getattr(result, name)
    raise AttributeError(names[0])


async def main(binary, spec_path):
    # The SDK gives the server only a few variables by default; the test's are needed.
    params = StdioServerParameters(command=binary, args=["mcp"], env=dict(os.environ))
    progress = []

    async def on_progress(value, total, message):
        progress.append(message)

    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            result = await session.call_tool(
                "run_task",
                {"spec": spec_path, "wait_seconds": 50},
                progress_callback=on_progress,
            )
            structured = field(result, "structured_content", "structuredContent")
            while structured.get("status") == "running":
                result = await session.call_tool(
                    "get_run", {"run_id": structured["run_id"], "wait_seconds": 50}
                )
                structured = field(result, "structured_content", "structuredContent")
            config = await session.call_tool("config", {})
            config = field(config, "structured_content", "structuredContent")
            log = await session.call_tool("log", {"limit": 5})
            logged = json.loads(log.content[0].text)
    # A new server, as after a restart: it answers for the run the first one finished.
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            again = await session.call_tool("get_run", {"run_id": structured["run_id"]})
            restarted = field(again, "structured_content", "structuredContent")
    print(
        json.dumps(
            {
                "tools": [tool.name for tool in tools.tools],
                "is_error": bool(field(result, "is_error", "isError")),
                "result": structured,
                "progress": progress,
                "config_files": len(config["files"]),
                "logged": [run["run_id"] for run in logged],
                "restarted": restarted,
            }
        )
    )


asyncio.run(main(sys.argv[1], sys.argv[2]))
