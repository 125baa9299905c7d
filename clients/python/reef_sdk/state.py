"""reef.v1.State from Python: versioned keys with compare-and-set, and watches."""

import grpc

from reef.v1 import state_pb2, state_pb2_grpc


class Conflict(Exception):
    """A compare-and-set found another revision than the one expected."""


class State:
    """The node's key-value state, over the container's own channel."""

    def __init__(self, channel, timeout=5.0):
        self._stub = state_pb2_grpc.StateStub(channel)
        self._timeout = timeout

    def get(self, namespace, key):
        """The key's (value, mod_revision), or None when it does not exist."""
        response = self._stub.Get(state_pb2.GetRequest(namespace=namespace, key=key), timeout=self._timeout)
        if not response.HasField("kv"):
            return None
        return response.kv.value, response.kv.mod_revision

    def put(self, namespace, key, value, expected_revision=None):
        """Writes the key and returns the new revision. With `expected_revision` (0: the
        key must not exist) it is a compare-and-set that raises Conflict when the key
        moved on."""
        request = state_pb2.PutRequest(namespace=namespace, key=key, value=value)
        if expected_revision is not None:
            request.expected_revision = expected_revision
        try:
            return self._stub.Put(request, timeout=self._timeout).revision
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION):
                raise Conflict(error.details()) from error
            raise

    def delete(self, namespace, key, prefix=False):
        """Deletes the key (or every key under the prefix); returns how many went."""
        request = state_pb2.DeleteRequest(namespace=namespace, key=key, prefix=prefix)
        return self._stub.Delete(request, timeout=self._timeout).deleted

    def watch(self, namespace, prefix="", start_revision=0):
        """Yields (kind, key, value, mod_revision) for each change, kind "put" or
        "delete", from `start_revision` (0: from now on). Runs until the caller stops
        iterating or the channel closes."""
        request = state_pb2.WatchKeysRequest(namespace=namespace, prefix=prefix, start_revision=start_revision)
        for response in self._stub.Watch(request):
            for event in response.events:
                kind = "delete" if event.kind == state_pb2.WatchEvent.KIND_DELETE else "put"
                yield kind, event.kv.key, event.kv.value, event.kv.mod_revision
