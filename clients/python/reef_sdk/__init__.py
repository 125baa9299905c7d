"""Write reef containers in Python.

    from reef_sdk import Reply, run

    def upper(message):
        return message.payload.upper()

    run("upper", on_request=upper)

`run` registers with the node named by the environment a node gives the processes it
spawns (REEF_NODE, REEF_CA, REEF_ALIAS, REEF_TOKEN, REEF_CERT, REEF_KEY), attaches,
calls the handlers for what arrives, and returns on SIGTERM. Inside a handler, or from
anything holding the `Container`, `send`, `request` and `state` reach the rest of reef.

The generated stubs (`reef.v1`) must be importable: `python -m grpc_tools.protoc -I proto
--python_out=OUT --grpc_python_out=OUT proto/reef/v1/*.proto` makes them, and
`clients/python/run` does it once.
"""

from .container import Container, Message, RemoteError, Reply, run
from .state import Conflict, State

__all__ = ["Conflict", "Container", "Message", "RemoteError", "Reply", "State", "run"]
