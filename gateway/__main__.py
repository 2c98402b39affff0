"""``python -m gateway --host 127.0.0.1 --port 8766``: run the webhook gateway."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from gateway.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description="Algor webhook gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
