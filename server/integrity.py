"""MCP tools for research integrity and smarter search (issue 7). Registered on server.app.mcp."""
