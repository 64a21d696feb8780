"""The OpenAPI document is valid and describes exactly the routes the server registers."""

from __future__ import annotations

from openapi_spec_validator import validate

from mainspring.gateway.routes import ROUTES
from tests.gateway.support import Served


def router_operations(served: Served) -> set[tuple[str, str]]:
    operations = set()
    for route in served.gateway.app.router.routes():
        resource = route.resource
        assert resource is not None
        operations.add((resource.canonical, route.method.lower()))
    return operations


async def test_the_served_document_is_valid_and_matches_the_router(served_memory: Served) -> None:
    """``/openapi.json`` validates as OpenAPI 3.1, and its paths and methods are exactly the
    aiohttp router's (both come from one route table)."""
    status, document, _ = await served_memory.call("GET", "/openapi.json", token=None)
    assert status == 200
    validate(document)
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    assert router_operations(served_memory) == documented
    assert len(ROUTES) == len(documented)
    operation_ids = [
        operation["operationId"]
        for operations in document["paths"].values()
        for operation in operations.values()
    ]
    assert len(set(operation_ids)) == len(operation_ids)


async def test_secured_routes_are_marked(served_memory: Served) -> None:
    """With tokens, every /v1 operation names the bearer scheme and documents 401; the
    operational routes (health, readiness, metrics, the document itself) need nothing."""
    paths = served_memory.gateway.openapi["paths"]
    for path, operations in paths.items():
        for operation in operations.values():
            secured = "security" in operation
            assert secured == path.startswith("/v1/"), path
            if secured:
                assert "401" in operation["responses"], path
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert "401" not in paths[path]["get"]["responses"], path


async def test_query_parameters_are_documented_as_validated(served_memory: Served) -> None:
    """The documented bounds of ``wait`` are the ones the server enforces."""
    paths = served_memory.gateway.openapi["paths"]
    (wait,) = [p for p in paths["/v1/workflows/{id}"]["get"]["parameters"] if p["name"] == "wait"]
    maximum = wait["schema"]["maximum"]
    status, _, _ = await served_memory.call("GET", f"/v1/workflows/x?wait={maximum}")
    assert status == 404
    status, _, _ = await served_memory.call("GET", f"/v1/workflows/x?wait={maximum + 1}")
    assert status == 422
