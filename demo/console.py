"""`make ui`: the operator console (Dagster webserver + daemon) on the demo's instance.

Runs `dagster-webserver` and `dagster-daemon` on the demo's home, the two processes a Dagster
deployment runs, rather than `dagster dev`, which warns about the repository's own instance
file and kept its code servers alive for a minute after Ctrl-C. Ctrl-C (or SIGTERM) stops both
within a few seconds (see demo/services.py), and so do SIGTERM and a closed terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo.home import NotADemoHome, claim  # noqa: E402
from demo.services import ServiceError, Services, stop_on_signals, wait_http  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make ui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)

    from resources.settings import get_settings

    try:
        dagster_home = claim(get_settings().home)
    except NotADemoHome as error:
        print(f"make ui: {error}", file=sys.stderr)
        return 1
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    bin_dir = Path(sys.executable).parent
    workspace = str(REPO / "workspace.yaml")
    url = f"http://{args.host}:{args.port}"

    stop_on_signals()
    try:
        with Services(env) as services:
            daemon = services.start("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", workspace])
            webserver = services.start("dagster-webserver", [str(bin_dir / "dagster-webserver"), "-w", workspace, "-h", args.host, "-p", str(args.port)])
            wait_http(f"{url}/server_info", "dagster-webserver", webserver)
            print(f"\nOperator console on {url} (DAGSTER_HOME={dagster_home}). Ctrl-C stops it.\n", flush=True)
            while daemon.poll() is None and webserver.poll() is None:
                time.sleep(0.5)
            print("make ui: a Dagster process exited on its own; stopping the other", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("\nOperator console stopped.", flush=True)
        return 0
    except ServiceError as error:
        print(f"make ui: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
