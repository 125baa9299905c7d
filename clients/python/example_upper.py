"""Example Python container: answers every request with its payload upper-cased.

Environment (as a node gives its children): REEF_NODE, REEF_CA, REEF_ALIAS.
With --ask ALIAS:TEXT it also requests ALIAS once after attaching and prints the reply.
Prints "attached ALIAS" once attached; stops on SIGTERM, or when stdin closes if it
was started from a pipe (a node starts its children with stdin on /dev/null).
"""

import argparse
import os
import signal
import sys
import threading

from reef_container import Container, RemoteError


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ask", help="ALIAS:TEXT to request once after attaching")
    args = parser.parse_args()

    alias = os.environ.get("REEF_ALIAS", "py-upper")
    container = Container(
        node=os.environ.get("REEF_NODE", "127.0.0.1:7400"),
        ca_path=os.environ.get("REEF_CA", ".reef/tls/ca.pem"),
        alias=alias,
        name="upper",
        handler=lambda payload, origin: payload.upper(),
    )
    print(f"attached {alias}", flush=True)

    if args.ask:
        target, _, text = args.ask.partition(":")
        try:
            reply = container.request(target, text.encode(), timeout=5.0)
            print(f"reply from {target}: {reply.decode()}", flush=True)
        except (RemoteError, TimeoutError) as error:
            print(f"error from {target}: {error}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if not os.environ.get("REEF_TOKEN"):
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set() and not container.closed.is_set():
        stop.wait(0.2)
    container.close()


if __name__ == "__main__":
    main()
