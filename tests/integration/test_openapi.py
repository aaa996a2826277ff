"""``/openapi.json``: a valid OpenAPI 3.1 document that agrees with the routes and the contract."""

from __future__ import annotations

import copy
import re

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from app import create_app
from config.settings import Settings

pytestmark = pytest.mark.integration

#: Every operation of the contract (docs: shared api-v1.md) with its success statuses.
CONTRACT = [
    ("POST", "/v1/users", {201}),
    ("POST", "/v1/tokens", {201}),
    ("DELETE", "/v1/tokens/current", {204}),
    ("DELETE", "/v1/tokens", {204}),
    ("GET", "/v1/me", {200}),
    ("POST", "/v1/messages", {202}),
    ("PUT", "/v1/messages/{id}", {202}),
    ("GET", "/v1/mailbox/inbox", {200}),
    ("GET", "/v1/mailbox/sent", {200}),
    ("GET", "/v1/messages/{id}", {200}),
    ("PUT", "/v1/messages/{id}/read", {204}),
    ("DELETE", "/v1/messages/{id}/read", {204}),
    ("DELETE", "/v1/messages/{id}", {204}),
    ("PUT", "/v1/groups/{name}", {200, 201}),
    ("GET", "/v1/groups", {200}),
    ("GET", "/v1/groups/{name}", {200}),
    ("DELETE", "/v1/groups/{name}", {204}),
    ("PUT", "/v1/groups/{name}/members/{username}", {200, 201}),
    ("DELETE", "/v1/groups/{name}/members/{username}", {204}),
    ("POST", "/v1/groups/{name}/messages", {202}),
    ("GET", "/v1/groups/{name}/messages", {200}),
    ("PUT", "/v1/groups/{name}/read-marker", {204}),
    ("PUT", "/v1/subscriptions/{sid}", {200, 201}),
    ("GET", "/v1/subscriptions/{sid}", {200}),
    ("DELETE", "/v1/subscriptions/{sid}", {204}),
    ("GET", "/v1/subscriptions/{sid}/messages", {200}),
    ("POST", "/v1/subscriptions/{sid}/ack", {200}),
    ("GET", "/healthz", {200}),
    ("GET", "/readyz", {200}),
    ("GET", "/openapi.json", {200}),
]
#: The contract's operations without a bearer token.
PUBLIC = {("POST", "/v1/users"), ("POST", "/v1/tokens"), ("GET", "/healthz"), ("GET", "/readyz"),
          ("GET", "/openapi.json")}
#: A readiness probe's 503 is its answer (the Health report with its checks), not a problem.
PROBE_ANSWERS: set[tuple[str, str, str]] = set()  # every error is problem+json, /readyz included


def shape(path: str) -> str:
    """Return ``path`` with its parameter names blanked (``/v1/messages/{}``), to compare paths."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def rule_path(rule: str) -> str:
    """Return a Flask rule as an OpenAPI path (``<message_id>`` → ``{message_id}``)."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One app for the module: the document depends on the routes, not on data or the broker."""
    tmp = tmp_path_factory.mktemp("openapi")
    application = create_app(Settings(
        amqp_url="amqp://guest:guest@127.0.0.1:1/",  # nothing here publishes; never the system broker
        database_url=f"sqlite:///{tmp}/postroom.db",
        var_dir=str(tmp / "var"),
        secret_keys=("test-secret-key",),
    ))
    yield application
    application.extensions["postroom"].publisher.close()


@pytest.fixture(scope="module")
def document(app) -> dict:
    """The served OpenAPI document."""
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def operations(document: dict) -> dict[tuple[str, str], dict]:
    """Return the document's operations by (METHOD, path shape)."""
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (method.upper(), shape(path)): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in methods
    }


def served(app) -> set[tuple[str, str]]:
    """Return the app's routes as (METHOD, path shape), without HEAD, OPTIONS and static."""
    return {
        (method, shape(rule_path(rule.rule)))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_is_a_valid_openapi_3_1_document(document):
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)
    # The validator does catch mistakes (a control for the line above): one path, its parameters lost.
    path = next(p for p in document["paths"] if "{" in p)
    item = copy.deepcopy(document["paths"][path])
    validate({**document, "paths": {path: item}}, cls=OpenAPIV31SpecValidator)
    for operation in item.values():
        operation.pop("parameters", None)
    with pytest.raises(OpenAPIValidationError):
        validate({**document, "paths": {path: item}}, cls=OpenAPIV31SpecValidator)


def test_every_route_is_documented_with_its_methods(app, document):
    documented = set(operations(document))
    missing = served(app) - documented
    assert not missing, f"routes missing from /openapi.json: {sorted(missing)}"
    # And nothing is documented that is not served.
    assert not documented - served(app), sorted(documented - served(app))
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            assert rule_path(rule.rule) in document["paths"], rule.rule  # the very parameter names too


@pytest.mark.parametrize("method, path, statuses", CONTRACT, ids=[f"{m} {p}" for m, p, _ in CONTRACT])
def test_every_contract_operation_is_served_and_documented(app, document, method, path, statuses):
    assert (method, shape(path)) in served(app), f"{method} {path} is not served"
    operation = operations(document).get((method, shape(path)))
    assert operation is not None, f"{method} {path} is not in /openapi.json"
    assert statuses <= {int(s) for s in operation["responses"]}, operation["responses"]
    assert ("security" in operation) == ((method, path) not in PUBLIC), "the bearer requirement is wrong"
    for status, response in operation["responses"].items():
        if int(status) >= 400 and (method, path, status) not in PROBE_ANSWERS:
            assert set(response["content"]) == {"application/problem+json"}, (status, response)


def test_errors_are_problem_json_with_a_code(document):
    problem = document["components"]["schemas"]["Problem"]
    assert {"status", "title", "detail", "code"} <= set(problem["properties"])
    assert {"status", "title", "detail", "code"} <= set(problem.get("required", []))
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


def test_new_mail_schema(document):
    schemas = document["components"]["schemas"]
    new_mail = schemas["NewMail"]
    assert {"to", "cc", "bcc", "subject", "body", "in_reply_to"} <= set(new_mail["properties"])
    assert new_mail.get("additionalProperties") is False  # unknown fields are refused, so say so
    for name in ("to", "cc", "bcc"):
        assert new_mail["properties"][name]["type"] == "array"
        assert new_mail["properties"][name]["items"] == {"type": "string"}
    for method, path in (("POST", "/v1/messages"), ("PUT", "/v1/messages/{id}")):
        body = operations(document)[(method, shape(path))]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/NewMail"}, (method, path)
    assert "Idempotency-Key" in {p["name"] for p in operations(document)[("POST", "/v1/messages")]["parameters"]}


def test_paging_parameters_of_the_folders(document):
    for folder in ("inbox", "sent"):
        operation = operations(document)[("GET", f"/v1/mailbox/{folder}")]
        query = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert {"limit", "after", "before", "unread"} <= query
        page = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert {"messages", "next"} <= set(document["components"]["schemas"][page]["properties"])
