"""A watcher that never reads: it holds at most its buffer, then is dropped; the turns
it watches are never held up, and the hub keeps nothing of it afterwards."""

from __future__ import annotations

import anyio

from engine.events import NodeStarted, RunStarted
from engine.server.live import LiveHub


def test_a_stalled_watcher_is_dropped_at_its_buffer_and_never_blocks_the_turn() -> None:
    async def main() -> None:
        hub = LiveHub(buffer=8)
        with hub.watch("s") as stalled, hub.watch("s") as reader:
            hub.publish("s", RunStarted("r", "turn", "start"))
            got = [await reader.receive()]
            for i in range(1000):  # publish never waits: the stalled watcher is cut
                hub.publish("s", NodeStarted("r", f"n{i}", "h"))
                got.append(await reader.receive())  # the one that reads keeps up
            assert len(got) == 1001 and hub.watched("s")
            held = [item async for item in stalled]  # what it held, then its end
            assert len(held) == 8 and isinstance(held[0], RunStarted)
            assert stalled.statistics().current_buffer_used == 0
            assert len(hub._channels["s"].watchers) == 1  # only the reader is left
        hub.publish("s", "the result")
        assert not hub._channels  # nothing kept once the turn ended and all left

    anyio.run(main)
