"""One review from the command line: the decisions opened, the server started on 127.0.0.1,
its URL printed (and opened), served until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from geoloc.review.decisions import Decisions
from geoloc.review.server import ReviewServer
from geoloc.review.session import ReviewSet


def serve_review(db: Path, results: list, *, port: int = 0, again: bool = False, open_browser: bool = True,
                 apply_options: dict | None = None, say: Callable[[str], None] = print,
                 on_ready: Callable[[ReviewServer], None] | None = None) -> None:
    """Serve the review of ``results`` until interrupted (Ctrl-C) or ``server.shutdown()``."""
    from geoloc.errors import UsageError

    with Decisions(db) as decisions:
        review = ReviewSet(results, decisions, again=again)
        try:
            server = ReviewServer(review, port, apply_options=apply_options)
        except OSError as exc:
            raise UsageError(f"--port {port}: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
        with server:
            left = f"; {review.left_out} decided earlier not shown (--again shows them)" if review.left_out else ""
            say(f"reviewing {len(review.items)} photos{left}")
            say(f"review page: {server.url}")
            say("Ctrl-C stops the server; nothing is written until you press Apply on the page")
            if open_browser:
                import webbrowser

                webbrowser.open(server.url)
            if on_ready is not None:
                on_ready(server)
            try:
                server.serve_forever(poll_interval=0.2)
            except KeyboardInterrupt:
                pass
            say("review server stopped; decisions are kept (run geoloc review again to resume)")
