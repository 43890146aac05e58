"""MCP tools, resources and prompts for querying the past (issue 6). Registered on server.app.mcp."""
