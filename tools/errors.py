"""Errors the agent reads: each names the field or thing at fault and the fix."""


class ToolError(Exception):
    """A refusal or failure meant for the caller; nothing was changed when it is raised."""
