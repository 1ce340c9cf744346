"""A worker's ETRN over the control socket, in process: the manager's reply comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from petrel import smtp
from petrel.intake.pickup import PickupPoke
from petrel.server.control import ControlServer, ask_etrn, control_path


class Manager:
    """Just enough of a queue manager: mail waits for far.test only."""

    def etrn(self, node: str) -> smtp.Reply:
        if node == "far.test":
            return smtp.reply(250, "2.0.0", f"Queuing for node {node} started")
        return smtp.reply(251, "2.0.0", f"No messages waiting for node {node}")

    def __getattr__(self, name: str) -> Any:  # the QueueControl operations: unused here
        raise AssertionError(f"{name} was not expected")


def test_ask_etrn_relays_the_managers_own_reply(tmp_path: Path) -> None:
    path = control_path(tmp_path)

    async def main() -> list[smtp.Reply]:
        control = ControlServer(path)
        assert control.bind()
        manager = Manager()
        await control.start(manager, etrn=manager.etrn)
        try:
            poke = PickupPoke(tmp_path / "queue", etrn=lambda node: ask_etrn(path, node))
            return [
                await asyncio.to_thread(poke.etrn, node)
                for node in ("far.test", "near.test", "#queue")
            ]
        finally:
            await control.close()

    started, nothing, queue = asyncio.run(main())
    assert str(started) == "250 2.0.0 Queuing for node far.test started"
    assert str(nothing) == "251 2.0.0 No messages waiting for node near.test"
    assert str(queue) == "458 4.0.0 Unable to queue messages for node #queue"


def test_no_server_to_ask_is_458_never_a_guess(tmp_path: Path) -> None:
    unable = "458 4.0.0 Unable to queue messages for node far.test"
    assert str(ask_etrn(control_path(tmp_path), "far.test")) == unable
    assert str(PickupPoke(tmp_path / "queue").etrn("far.test")) == unable  # petrel sendmail
