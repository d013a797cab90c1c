"""Single-flight on its own: one leader per key at a time, every joiner gets its result."""

from __future__ import annotations

import asyncio

import pytest

from postfix_rest_api_connector.service.single_flight import SingleFlight


async def test_the_first_asker_leads_and_the_others_get_its_result() -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    assert flights.join("k") is None
    first, second = flights.join("k"), flights.join("k")
    assert first is not None
    assert second is first, "every joiner waits on the same future"
    assert flights.join("other") is None, "another key has a leader of its own"

    flights.finish("k", 7)

    assert await first == 7
    assert flights.join("k") is None, "the next ask after the result leads anew"


async def test_a_leader_alone_makes_no_future() -> None:
    """The common case costs no future: only a second asker makes one."""
    flights: SingleFlight[str, int] = SingleFlight()
    assert flights.join("k") is None
    flights.finish("k", 1)  # nobody joined: nothing to resolve, and no error
    assert flights.join("k") is None


async def test_a_cancelled_joiner_does_not_cancel_the_others() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    assert flights.join("k") is None
    shared = flights.join("k")
    assert shared is not None
    quitter = asyncio.ensure_future(asyncio.shield(shared))
    stayer = asyncio.ensure_future(asyncio.shield(shared))
    await asyncio.sleep(0)
    quitter.cancel()

    flights.finish("k", 3)

    assert await stayer == 3
    with pytest.raises(asyncio.CancelledError):
        await quitter
