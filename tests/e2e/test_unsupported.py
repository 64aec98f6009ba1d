"""What the SDKs can call and corral does not serve answers a Daytona-shaped error that the
SDK turns into a DaytonaError saying what is not supported, never a raw generated-client
exception: computer use (answered by the edge, the agent is not asked), the pre-sandbox
workspace API, and unknown main-API routes."""

import asyncio

import pytest
from daytona import AsyncDaytona, DaytonaConfig, DaytonaError

NOT_SUPPORTED = "computer use is not supported by corral"


def test_computer_use_raises_a_clear_daytona_error(sandbox):
    cu = sandbox.computer_use
    calls = [
        ("start", cu.start),
        ("status", cu.get_status),
        ("screenshot", cu.screenshot.take_full_screen),
        ("click", lambda: cu.mouse.click(10, 10)),
        ("move", lambda: cu.mouse.move(5, 5)),
        ("type", lambda: cu.keyboard.type("hi")),
        ("display", cu.display.get_info),
        ("stop", cu.stop),
    ]
    for name, call in calls:
        with pytest.raises(DaytonaError) as e:
            call()
        assert NOT_SUPPORTED in str(e.value), (name, str(e.value))
        assert e.value.status_code == 501, (name, e.value.status_code)
    # Positive control: the same sandbox's toolbox works.
    assert sandbox.process.exec("echo fine").result.strip() == "fine"


def test_computer_use_async_sdk(server, sandbox):
    async def go():
        async with AsyncDaytona(DaytonaConfig(api_key=server.key, api_url=f"{server.url}/api")) as d:
            sb = await d.get(sandbox.id)
            with pytest.raises(DaytonaError, match=NOT_SUPPORTED):
                await sb.computer_use.start()
            with pytest.raises(DaytonaError, match=NOT_SUPPORTED):
                await sb.computer_use.mouse.click(1, 1)

    asyncio.run(asyncio.wait_for(go(), 60))


def test_raw_shapes(server, sandbox):
    status, body = server.request("POST", f"/toolbox/{sandbox.id}/computeruse/start")
    assert status == 501, body
    assert body["statusCode"] == 501 and body["error"] == "Not Implemented", body
    assert body["code"] == "COMPUTER_USE_NOT_SUPPORTED" and NOT_SUPPORTED in body["message"], body
    # An unknown main-API route: 404 naming method and path, in Daytona's shape.
    status, body = server.request("GET", "/api/no-such-thing")
    assert status == 404 and body["message"] == "no route for GET /api/no-such-thing", body
    assert body["code"] == "NOT_FOUND" and body["error"] == "Not Found", body
