"""ChannelPool: one grpc.aio channel (and stub, and ExecuteMany stream) per plugin address,
created once and reused."""

from __future__ import annotations

import grpc

from mcp_sdk.proto import protocol_pb2_grpc
from mcp_server.protocols.call_streams import CallStreams


class ChannelPool:
    """Channels by address. Closing the pool closes every channel. `call_streams`: carry plain
    calls over each instance's ExecuteMany stream (see call_streams.py)."""

    def __init__(
        self, max_message_bytes: int, credentials: grpc.ChannelCredentials | None = None, call_streams: bool = True
    ) -> None:
        self.streams = CallStreams(self.get, max_message_bytes, enabled=call_streams)
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, protocol_pb2_grpc.ProtocolServiceStub] = {}
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 0),  # the engine owns retries
        ]

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(address, self._credentials, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return channel

    def stub(self, address: str) -> protocol_pb2_grpc.ProtocolServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            stub = self._stubs[address] = protocol_pb2_grpc.ProtocolServiceStub(self.get(address))
        return stub

    async def discard(self, address: str) -> None:
        await self.streams.discard(address)
        self._stubs.pop(address, None)
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        await self.streams.close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
