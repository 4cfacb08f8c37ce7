"""A CliRunner for tests about something other than verification (writers, trips, evaluation
mechanics, damaged databases): `locate` and `eval` verify with dense cells alone unless the
test names a verifier. The default verifier (dense, then XFeat + LighterGlue on the first five)
costs about 0.4 s more a query on one core, paid by tests that do not look at it; it has its
own tests on real photos (test_learned, test_rerank, test_locate_cli's out-of-coverage test).
"""

from __future__ import annotations

from typer.testing import CliRunner


class DenseRunner(CliRunner):
    def invoke(self, cli, args=None, **kwargs):
        args = [str(a) for a in args] if args is not None else None
        if args and args[0] in ("locate", "eval") and "--verifier" not in args:
            args = [args[0], "--verifier", "dense", *args[1:]]
        return super().invoke(cli, args, **kwargs)
