"""`gram-local serve`: the judge as a local HTTP service (Starlette + uvicorn, the `serve` extra).

    bodies.py   request JSON -> a checked call on the judge (no web stack)
    worker.py   the engine thread every request shares, and awaiting its results from asyncio
    streams.py  server-sent reasoning events and a batch's JSONL lines
    app.py      routes, errors as JSON, the API key, CORS, one log line per request
    state.py    what handlers share (the worker once loaded, the limits, the key)
    openapi.py  the OpenAPI document          page.html  the page at `/`
    server.py   binding, loading, signals
    mcp_server.py  the same operations as MCP tools over stdio (the `mcp` extra)

The judging code (judge, runner, engine) knows nothing of this package.
"""
