"""Example Python container: answers requests with their payload upper-cased, counts
them in the node's state, and takes notes sent to it.

Requests: `count` answers how many requests it has answered (kept in state namespace
`py`, key `<alias>.answered`, by compare-and-set: the count survives restarts);
`crash` makes the process exit with status 3, for the node to restart it; anything
else comes back upper-cased, with header `answered-by` naming the process.
Sends: each is printed (to the container's log).
Commands (`reef command py-upper shout WORDS…`): `shout` answers its arguments upper-cased.

With --ask ALIAS:TEXT it also requests ALIAS once after attaching and prints the reply.
Prints "attached ALIAS" once attached. Stops on SIGTERM.
"""

import argparse
import os

from reef_sdk import Conflict, RemoteError, Reply, run

NAMESPACE = "py"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ask", help="ALIAS:TEXT to request once after attaching")
    args = parser.parse_args()

    def count_key(container):
        return f"{container.alias}.answered"

    def bump(container):
        """Adds one to the count in state; retried when another writer got there first."""
        state = container.state
        while True:
            current = state.get(NAMESPACE, count_key(container))
            value, revision = current if current else (b"0", 0)
            try:
                state.put(NAMESPACE, count_key(container), str(int(value) + 1).encode(), expected_revision=revision)
                return
            except Conflict:
                continue

    def on_request(message):
        if message.payload == b"crash":
            print("asked to crash: exiting with 3", flush=True)
            os._exit(3)
        if message.payload == b"count":
            current = message.container.state.get(NAMESPACE, count_key(message.container))
            return current[0] if current else b"0"
        bump(message.container)
        return Reply(message.payload.upper(), {"answered-by": str(os.getpid())})

    def on_message(message):
        print(f"note from {message.origin}: {message.payload.decode(errors='replace')}", flush=True)

    def on_start(container):
        print(f"attached {container.alias}", flush=True)
        if args.ask:
            target, _, text = args.ask.partition(":")
            try:
                reply = container.request(target, text.encode(), timeout=5.0)
                print(f"reply from {target}: {reply.decode()}", flush=True)
            except (RemoteError, TimeoutError) as error:
                print(f"error from {target}: {error}", flush=True)

    def on_command(name, command_args):
        if name == "shout":
            return " ".join(command_args).upper()
        raise NotImplementedError(f"py-upper knows the command 'shout', not {name!r}")

    run(
        "upper",
        on_request=on_request,
        on_message=on_message,
        on_start=on_start,
        alias="py-upper",
        on_command=on_command,
    )


if __name__ == "__main__":
    main()
