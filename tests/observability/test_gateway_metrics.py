"""``/metrics`` through the real gateway over loopback, after HTTP and node traffic."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from mainspring.gateway import Gateway
from mainspring.observability import PROMETHEUS_CONTENT_TYPE, Telemetry
from tests.observability import workload
from tests.observability.support import Samples, parse, total
from tests.observability.traffic import check_every_family, make_node, queue_and_fence


async def test_metrics_over_http_show_every_family_and_the_requests(tmp_path: Path) -> None:
    workload.ATTEMPTS.clear()
    telemetry = Telemetry(workflow_counts_interval_s=0.05)
    async with make_node(str(tmp_path / "g.db"), telemetry) as node:
        gateway = Gateway(node)
        url = await gateway.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as session:

                async def read() -> Samples:
                    async with session.get(f"{url}/metrics") as response:
                        assert response.status == 200
                        assert response.headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
                        return parse(await response.text())

                for workflow_type, workflow_id, value in (
                    ("obs.order", "o-1", 7),
                    ("obs.waiting", "w-1", None),
                    ("obs.doomed", "d-1", None),
                ):
                    body = {"id": workflow_id, "input": value}
                    async with session.post(
                        f"{url}/v1/workflows/{workflow_type}", json=body
                    ) as response:
                        assert response.status == 201, await response.text()
                assert await node.workflows.result("o-1", timeout_s=20) == 7
                async with session.get(f"{url}/v1/workflows/o-1") as response:
                    assert response.status == 200
                async with session.get(f"{url}/v1/workflows/nobody") as response:
                    assert response.status == 404
                await queue_and_fence(node, read)
                samples = await read()
        finally:
            await gateway.stop(drain_timeout_s=5)
    check_every_family(samples)
    start = {"route": "/v1/workflows/{type}", "method": "POST", "status": "201"}
    assert total(samples, "mainspring_http_requests_total", **start) == 3
    get = {"route": "/v1/workflows/{id}", "method": "GET"}
    assert total(samples, "mainspring_http_requests_total", status="200", **get) == 1
    assert total(samples, "mainspring_http_requests_total", status="404", **get) == 1
    assert total(samples, "mainspring_http_requests_total", route="/metrics") >= 2
    assert total(samples, "mainspring_http_request_duration_seconds_count", **get) == 2
    assert total(samples, "mainspring_http_request_duration_seconds_sum", **get) > 0
