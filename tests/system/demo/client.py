"""The test's hands inside the container, run as the app's user:

    python client.py delay TASK ARG...   -> prints the new task's id
    python client.py show ID...          -> prints one JSON object per task
"""

import json
import sys

sys.path.insert(0, "/srv/demo")

import demoapp  # noqa: E402


def main(command: str, *args: str) -> None:
    if command == "delay":
        task = getattr(demoapp, args[0]).delay(*args[1:])
        print(task.id)
    elif command == "show":
        for task_id in args:
            task = demoapp.manager.get(task_id)
            if task is None:
                print(json.dumps({"id": task_id, "status": None}))
                continue
            status = task.status()
            print(json.dumps({"id": task_id, "status": str(status), "attempts": task.attempts,
                              "result": task.result if status == "success" else None}))
    else:
        raise SystemExit(f"client.py: unknown command {command!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
