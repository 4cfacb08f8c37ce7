"""`geoloc locate` — being built (see the open issue)."""

from geoloc.cli import app  # noqa: F401
