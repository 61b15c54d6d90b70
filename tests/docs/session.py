"""A Python session for one docs page: runs its ```python blocks in order, in one namespace.

Started by tests/docs/runner.py as `python session.py REPLY_FD` in the page's
working directory. Each line on stdin is a JSON object {"file", "line", "source"};
the block runs in a fresh `__main__` module (as a script would: task names come
out as `__main__.fn`), and one JSON line goes back on REPLY_FD: {"ok": true} or
{"ok": false, "error": traceback}. A block may use top-level `await` (as in an
asyncio REPL); the session keeps one event loop for them. EOF ends the session.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import json
import os
import sys
import traceback
import types


def main() -> int:
    reply = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    sys.path.insert(0, os.getcwd())  # file blocks (main.py, tasks.py) are importable
    page = types.ModuleType("__main__")
    page.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = page
    loop: asyncio.AbstractEventLoop | None = None
    for line in sys.stdin:
        request = json.loads(line)
        # Pad with blank lines so tracebacks give the line numbers of the .md file.
        source = "\n" * request["line"] + request["source"]
        try:
            code = compile(source, request["file"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, page.__dict__)  # noqa: S307 - running the docs is the point
            if code.co_flags & inspect.CO_COROUTINE:
                loop = loop or asyncio.new_event_loop()
                loop.run_until_complete(result)
        except BaseException:  # noqa: BLE001 - reported to the test, which fails
            sys.stdout.flush()
            reply.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")
            continue
        sys.stdout.flush()
        reply.write(json.dumps({"ok": True}) + "\n")
    if loop is not None:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
