"""A scripted SMTP peer on 127.0.0.1, built on the sans-IO ``ServerConnection``.

It runs its own asyncio loop in a thread, so tests can point Petrel's client (in
process, or a real ``petrel serve``) at it and script how it misbehaves: refuse a
recipient with 4xx/5xx, drop the connection at some command, stall, or lack
DSN/8BITMIME/SMTPUTF8 in its EHLO. Every finished message is recorded.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from petrel.smtp import (
    NEED_DATA,
    PAUSED,
    DataChunk,
    EndOfData,
    Event,
    Extensions,
    Mail,
    Rcpt,
    Reply,
    ServerConnection,
    StartTls,
)
from petrel.smtp import replies as r
from smtp_driver import answer

HOST = "peer.test"


@dataclass
class Received:
    sender: str
    params: object
    recipients: list[tuple[str, object]]
    data: bytes


@dataclass
class PeerScript:
    extensions: Extensions = field(default_factory=Extensions)
    greeting: Reply | None = None  # None: the normal 220
    policy: dict[type[Event], Callable[[Event], Reply]] = field(default_factory=dict)
    drop_on: type[Event] | None = None  # close the connection instead of answering
    stall_on: type[Event] | None = None  # never answer (the client must time out)
    lmtp: bool = False  # speak LMTP (RFC 2033)
    tls: ssl.SSLContext | None = None  # answer STARTTLS with this server context
    # LMTP: the replies after the text, one per accepted recipient (given their addresses)
    lmtp_end: Callable[[list[str]], list[Reply]] | None = None


class ScriptedPeer:
    def __init__(self, script: PeerScript | None = None) -> None:
        self.script = script or PeerScript()
        self.messages: list[Received] = []
        self.connections = 0
        self.tls_sessions = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> ScriptedPeer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        script = self.script
        conn = ServerConnection(HOST, extensions=script.extensions, lmtp=script.lmtp)
        writer.write(conn.send(script.greeting or r.greeting(HOST, "now")))
        sender = ""
        params: object = None
        rcpts: list[tuple[str, object]] = []
        data = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    chunk = await reader.read(65536)
                    conn.receive_data(chunk)
                    if not chunk:
                        return
                    continue
                if event is PAUSED:
                    return
                assert isinstance(event, Event)
                if script.drop_on is not None and isinstance(event, script.drop_on):
                    return
                if script.stall_on is not None and isinstance(event, script.stall_on):
                    await asyncio.sleep(3600)
                if isinstance(event, DataChunk):
                    data += event.data
                    continue
                if not event.needs_reply:
                    continue
                if isinstance(event, EndOfData) and script.lmtp_end is not None:
                    self.messages.append(Received(sender, params, list(rcpts), bytes(data)))
                    replies = script.lmtp_end([a for a, _ in rcpts])
                    writer.write(conn.send_per_recipient(replies))
                    await writer.drain()
                    continue
                if isinstance(event, StartTls) and script.tls is not None:
                    writer.write(conn.send(r.READY_FOR_TLS))
                    await writer.drain()
                    await writer.start_tls(script.tls)
                    conn.tls_established()
                    self.tls_sessions += 1
                    continue
                reply = answer(conn, event, policy=script.policy, host=HOST)
                if isinstance(event, Mail) and reply.code < 300:
                    sender, params, rcpts, data = (
                        str(event.sender or ""),
                        event.params,
                        [],
                        bytearray(),
                    )
                elif isinstance(event, Rcpt) and reply.code < 300:
                    rcpts.append((str(event.recipient), event.params))
                elif isinstance(event, EndOfData) and reply.code < 300:
                    self.messages.append(Received(sender, params, list(rcpts), bytes(data)))
                writer.write(conn.send(reply))
                await writer.drain()
        finally:
            writer.close()
