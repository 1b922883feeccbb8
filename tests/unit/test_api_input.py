"""The managers' API refuses bad input before it touches the store: the bearer token, Azure's
resource-name rule (URL and body), the body size limits and duplicate keys (JSON bodies and
YAML files). Each refusal is Azure's error shape naming the field path and the value.

The real FastAPI app, through Starlette's TestClient; the store is a fake that records every
call (a refusal must leave it untouched)."""
import json
import threading

import pytest
import yaml
from fastapi.testclient import TestClient

from manager import api
from muxlab.fabric.lab import ModelError
from muxlab.lb.azure import NAME_RULE, LoadBalancer, load_document
from tests.unit.conftest import DEFAULT_LBS, default_lbs, fabric

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeStore:
    """What the routes use of manager.store.Store, in memory; `calls` lists every use."""

    def __init__(self, lbs=None, invalid=()):
        self.calls: list[str] = []
        self.lbs = dict(lbs or {})
        self._invalid = [dict(i) for i in invalid]
        self.fabric = fabric()

    def snapshot(self):
        self.calls.append("snapshot")
        return {"synced": True, "nb_cfg": 1, "seeded": True, "load_balancers": dict(self.lbs),
                "invalid": list(self._invalid), "allocations": {}, "mtu_remedies": [], "health": [], "hosts": [],
                "muxes": []}

    def invalid(self):
        self.calls.append("invalid")
        return list(self._invalid)

    def invalid_reason(self, name):
        self.calls.append("invalid")
        return next((i["reason"] for i in self._invalid if i["name"] == name), None)

    def change(self, edit):
        self.calls.append("change")
        updates = edit(dict(self.lbs))
        for name, lb in updates.items():
            if lb is None:
                self.lbs.pop(name, None)
                self._invalid = [i for i in self._invalid if i["name"] != name]
            else:
                self.lbs[name] = lb
        return 7, {n: lb for n, lb in updates.items() if lb is not None}


@pytest.fixture
def store(monkeypatch):
    s = FakeStore(default_lbs())
    monkeypatch.setattr(api, "_store", s)
    monkeypatch.setattr(api, "_token", TOKEN.encode())
    return s


@pytest.fixture
def client(store):
    return TestClient(api.app)


def refused(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if code:
        assert err["code"] == code, err
    return err


def detail(err, target):
    found = [d for d in err["details"] if d["target"] == target]
    assert found, f"no detail at {target}: {err['details']}"
    return found[0]


def web_body():
    return LoadBalancer.model_validate(default_lbs()["web"]).model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------- bearer token


def test_no_authorization_header_is_401_with_a_bearer_challenge(client, store):
    r = client.get("/loadBalancers")
    err = refused(r, 401, "AuthenticationFailed")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "'Authorization' header is missing" in err["message"]
    assert store.calls == []


def test_wrong_token_is_401_invalid_token(client, store):
    r = client.put("/loadBalancers/web", json=web_body(), headers={"Authorization": "Bearer not-the-token"})
    refused(r, 401, "InvalidAuthenticationToken")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert store.calls == []


def test_other_scheme_is_401(client, store):
    r = client.get("/loadBalancers", headers={"Authorization": f"Basic {TOKEN}"})
    err = refused(r, 401, "InvalidAuthenticationToken")
    assert "Bearer <token>" in err["message"]
    assert store.calls == []


def test_openapi_document_is_open_and_declares_the_bearer_scheme(client, store):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert r.json()["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": api._bearer.model.description}
    assert client.get("/docs").status_code == 200
    assert store.calls == []


def test_the_right_token_passes(client, store):
    r = client.get("/loadBalancers", headers={"Authorization": f"bearer {TOKEN}"})   # the scheme is case-insensitive
    assert r.status_code == 200
    assert {lb["name"] for lb in r.json()["value"]} == set(default_lbs())


def test_manager_without_a_token_file_refuses_everything(client, store, monkeypatch, tmp_path):
    monkeypatch.setattr(api, "_token", None)
    monkeypatch.setattr(api, "TOKEN_FILE", str(tmp_path / "api-token"))
    monkeypatch.setattr(api.load_token, "__defaults__", (str(tmp_path / "api-token"),))
    err = refused(client.get("/loadBalancers", headers=AUTH), 503, "ManagerMisconfigured")
    assert "no API token" in err["message"]
    assert store.calls == []


# ---------------------------------------------------------------- names in the URL

BAD_NAMES = [
    ("space", "a b", "a%20b"),
    ("newline", "web\n", "web%0A"),
    ("non-ASCII", "wéb", "w%C3%A9b"),
    ("200 characters", "x" * 200, "x" * 200),
    ("81 characters", "x" * 81, "x" * 81),
    ("leading hyphen", "-web", "-web"),
    ("leading period", ".web", ".web"),
    ("trailing period", "web.", "web."),
    ("trailing hyphen", "web-", "web-"),
    ("other punctuation", "web!", "web%21"),
]


@pytest.mark.parametrize("name,encoded", [b[1:] for b in BAD_NAMES], ids=[b[0] for b in BAD_NAMES])
def test_bad_load_balancer_name_in_the_url_is_400_before_any_store_call(client, store, name, encoded):
    for method in ("GET", "PUT"):
        r = client.request(method, f"/loadBalancers/{encoded}", json=web_body() if method == "PUT" else None,
                           headers=AUTH)
        err = refused(r, 400, "InvalidResourceName")
        d = detail(err, "path.name")
        assert (d["value"], d["message"]) == (name, NAME_RULE)
    assert store.calls == []


def test_slash_in_a_url_name_is_400_not_another_route(client, store):
    err = refused(client.put("/loadBalancers/a%2Fb", json=web_body(), headers=AUTH), 400, "InvalidResourceName")
    assert (detail(err, "path")["value"], detail(err, "path")["message"]) == ("a/b", NAME_RULE)
    err = refused(client.delete("/loadBalancers/web/backendAddressPools/x%2f..", headers=AUTH), 400)
    assert detail(err, "path")["value"] == "x/.."
    assert store.calls == []


def test_bad_child_and_mux_names_in_the_url(client, store):
    err = refused(client.put("/loadBalancers/web/backendAddressPools/-pool", json={}, headers=AUTH), 400,
                  "InvalidResourceName")
    assert detail(err, "path.pool")["value"] == "-pool"
    err = refused(client.delete("/loadBalancers/web/inboundNatRules/ssh.", headers=AUTH), 400)
    assert detail(err, "path.rule")["value"] == "ssh."
    err = refused(client.put("/muxes/mux%201", json={"drained": True}, headers=AUTH), 400)
    assert detail(err, "path.mux")["value"] == "mux 1"
    err = refused(client.post("/loadBalancers/web/loadBalancingRules/%C3%A9/health", headers=AUTH), 400)
    assert detail(err, "path.rule")["message"] == NAME_RULE
    assert store.calls == []


def test_delete_refuses_a_bad_name_unless_an_invalid_row_has_it(client, store):
    err = refused(client.delete("/loadBalancers/a%20b", headers=AUTH), 400, "InvalidResourceName")
    assert detail(err, "path.name")["value"] == "a b"
    assert "change" not in store.calls


@pytest.mark.parametrize("name", ["w", "x" * 80, "web_", "a.b-c_d", "9lives"])
def test_edge_names_azure_allows_are_accepted(client, store, name):
    r = client.put(f"/loadBalancers/{name}", json=web_body(), headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name


# ---------------------------------------------------------------- names in bodies


@pytest.mark.parametrize("name", ["a/b", "a b", "", "x" * 200, "-web", "web.", "pool\n", "pööl"],
                         ids=["slash", "space", "empty", "200", "leading-hyphen", "trailing-period", "newline", "non-ascii"])
def test_bad_child_name_in_a_body_is_400_naming_the_field(client, store, name):
    body = web_body()
    body["properties"]["backendAddressPools"][0]["name"] = name
    err = refused(client.put("/loadBalancers/web", json=body, headers=AUTH), 400, "InvalidRequestFormat")
    d = detail(err, "properties.backendAddressPools[0].name")
    assert (d["value"], d["message"]) == (name, NAME_RULE)
    assert store.calls == []


def test_bad_names_deeper_in_a_body(client, store):
    body = web_body()
    body["properties"]["backendAddressPools"][0]["properties"]["loadBalancerBackendAddresses"][0]["name"] = "vm 1"
    body["properties"]["probes"][0]["name"] = "probe."
    body["name"] = "not valid!"
    err = refused(client.put("/loadBalancers/web", json=body, headers=AUTH), 400)
    assert detail(err, "properties.backendAddressPools[0].properties.loadBalancerBackendAddresses[0].name")["value"] == "vm 1"
    assert detail(err, "properties.probes[0].name")["message"] == NAME_RULE
    assert detail(err, "name")["value"] == "not valid!"
    assert store.calls == []


def test_arm_expression_as_the_body_name_is_still_accepted(client, store):
    body = {**web_body(), "name": "[parameters('lbName')]"}
    assert client.put("/loadBalancers/web", json=body, headers=AUTH).status_code == 200


def test_bad_names_in_apply_and_swap_bodies(client, store):
    err = refused(client.post("/applyLoadBalancers", json={"loadBalancers": {"bad name": web_body()}}, headers=AUTH), 400)
    d = detail(err, "loadBalancers.bad name")
    assert (d["value"], d["message"]) == ("bad name", NAME_RULE)
    err = refused(client.post("/swapFrontends", json={"loadBalancers": ["web", "we/b"]}, headers=AUTH), 400)
    assert detail(err, "loadBalancers[1]")["value"] == "we/b"
    assert store.calls == []


def test_pool_body_name_must_be_valid_too(client, store):
    err = refused(client.put("/loadBalancers/web/backendAddressPools/web", json={"name": "we b"}, headers=AUTH), 400)
    assert detail(err, "name")["message"] == NAME_RULE
    assert store.calls == []


def test_bad_load_balancer_name_in_a_file(tmp_path):
    path = tmp_path / "lbs.yml"
    raw = yaml.safe_load(DEFAULT_LBS.read_text())
    raw["loadBalancers"]["web\n"] = raw["loadBalancers"].pop("web")   # a quoted key with a newline
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelError) as exc:
        load_document(path)
    assert ("loadBalancers.web\n.name", "web\n", NAME_RULE) in exc.value.problems


# ---------------------------------------------------------------- body size


def test_body_above_one_mib_is_413_before_parsing(client, store):
    body = json.dumps({**web_body(), "tags": {"pad": "x" * api.MAX_BODY}})
    r = client.put("/loadBalancers/web", content=body, headers={**AUTH, "Content-Type": "application/json"})
    err = refused(r, 413, "RequestEntityTooLarge")
    assert str(api.MAX_BODY) in err["message"] and "1 MiB" in err["message"]
    assert store.calls == []


def test_streamed_body_without_length_is_cut_at_the_limit(client, store):
    def chunks():
        yield b'{"properties": {"x": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}}'
    r = client.put("/loadBalancers/web", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    err = refused(r, 413, "RequestEntityTooLarge")
    assert str(api.MAX_BODY) in err["message"]
    assert store.calls == []


def test_apply_has_a_larger_limit(client, store):
    assert api.body_limit("/applyLoadBalancers") == api.MAX_APPLY_BODY == 32 << 20
    lbs = {f"lb{i}": web_body() for i in range(2)}
    body = json.dumps({"loadBalancers": lbs, "pad": "x" * (2 << 20)})   # 2 MiB: above 1 MiB, below 32 MiB
    r = client.post("/applyLoadBalancers", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code != 413, r.text
    assert "change" in store.calls


def test_apply_above_its_limit_is_413(client, store):
    r = client.post("/applyLoadBalancers", content=b"{" + b" " * api.MAX_APPLY_BODY + b"}",
                    headers={**AUTH, "Content-Type": "application/json"})
    assert str(api.MAX_APPLY_BODY) in refused(r, 413)["message"]
    assert store.calls == []


def test_unauthenticated_large_body_is_401_not_read(client, store):
    r = client.put("/loadBalancers/web", content=b"x" * (api.MAX_BODY + 1), headers={"Content-Type": "application/json"})
    refused(r, 401)


# ---------------------------------------------------------------- duplicate keys


def test_duplicate_key_in_a_json_body_is_400_naming_object_and_key(client, store):
    text = json.dumps(web_body())
    text = text.replace('"properties": {', '"properties": {"frontendIPConfigurations": [], ', 1)
    assert text.startswith('{"properties": {"frontendIPConfigurations": [], "frontendIPConfigurations": [{')
    err = refused(client.put("/loadBalancers/web", content=text, headers={**AUTH, "Content-Type": "application/json"}),
                  400, "InvalidRequestFormat")
    d = detail(err, "properties")
    assert d["value"] == "frontendIPConfigurations" and "duplicate key 'frontendIPConfigurations'" in d["message"]
    assert store.calls == []


def test_duplicate_key_deep_in_a_json_body(client, store):
    text = json.dumps(web_body()).replace('"port": 8080', '"port": 8080, "port": 9090', 1)
    err = refused(client.put("/loadBalancers/web", content=text, headers={**AUTH, "Content-Type": "application/json"}), 400)
    assert detail(err, "properties.probes[0].properties")["value"] == "port"
    top = '{"loadBalancers": {}, "prune": true, "prune": false}'
    err = refused(client.post("/applyLoadBalancers", content=top, headers={**AUTH, "Content-Type": "application/json"}), 400)
    assert detail(err, "(body)")["value"] == "prune"
    assert store.calls == []


def test_duplicate_load_balancer_in_a_yaml_file_names_key_and_lines(tmp_path):
    path = tmp_path / "lbs.yml"
    text = DEFAULT_LBS.read_text()
    web = text[text.index("  web:"):]
    path.write_text(text + web)   # `web` again, at the end of loadBalancers
    first = text[:text.index("  web:")].count("\n") + 1
    again = text.count("\n") + 1
    with pytest.raises(ModelError) as exc:
        load_document(path)
    (problem,) = [p for p in exc.value.problems if p[1] == "web"]
    assert problem[0] == "loadBalancers"
    assert f"duplicate key 'web' (line {again}; first at line {first})" == problem[2]


def test_duplicate_nested_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "lbs.yml"
    path.write_text("loadBalancers:\n  a:\n    properties:\n      probes: []\n      probes: []\n")
    with pytest.raises(ModelError) as exc:
        load_document(path)
    assert exc.value.problems == [("loadBalancers.a.properties", "probes", "duplicate key 'probes' (line 5; first at line 4)")]


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "lbs.yml"
    raw = yaml.safe_load(DEFAULT_LBS.read_text())["loadBalancers"]["bench"]
    body = json.dumps(raw)
    path.write_text(f"base: &b {body}\nloadBalancers:\n  x:\n    <<: *b\n    location: here\n")
    with pytest.raises(ModelError) as exc:   # `base` is no field of the file: proves it parsed, merged, then validated
        load_document(path)
    assert [p[0] for p in exc.value.problems] == ["base"]


def test_duplicate_key_in_a_json_file(tmp_path):
    path = tmp_path / "lbs.json"
    path.write_text('{"loadBalancers": {"a": {"properties": {}}, "a": {"properties": {}}}}')
    with pytest.raises(ModelError) as exc:
        load_document(path)
    assert exc.value.problems[0][:2] == ("loadBalancers", "a") and "line 1" in exc.value.problems[0][2]


# ---------------------------------------------------------------- invalid stored rows


@pytest.fixture
def poisoned(monkeypatch):
    s = FakeStore(default_lbs(), invalid=[{"name": "bad", "reason": "spec is not JSON: Expecting value"},
                                          {"name": "a b", "reason": "name 'a b' " + NAME_RULE}])
    monkeypatch.setattr(api, "_store", s)
    monkeypatch.setattr(api, "_token", TOKEN.encode())
    return s


def test_get_of_an_invalid_row_is_409_with_its_reason(poisoned):
    client = TestClient(api.app)
    err = refused(client.get("/loadBalancers/bad", headers=AUTH), 409, "StoredLoadBalancerInvalid")
    assert detail(err, "bad")["message"] == "spec is not JSON: Expecting value"
    assert "DELETE it" in err["message"]
    err = refused(client.put("/loadBalancers/bad/backendAddressPools/p", json={}, headers=AUTH), 409)
    assert detail(err, "bad")["message"].startswith("spec is not JSON")
    assert {lb["name"] for lb in client.get("/loadBalancers", headers=AUTH).json()["value"]} == set(default_lbs())


def test_delete_of_an_invalid_row_deletes_it_whatever_its_name(poisoned):
    client = TestClient(api.app)
    assert client.delete("/loadBalancers/bad", headers=AUTH).json() == {"deleted": "bad"}
    assert client.delete("/loadBalancers/a%20b", headers=AUTH).json() == {"deleted": "a b"}
    assert poisoned._invalid == [] and set(poisoned.lbs) == set(default_lbs())
    refused(client.delete("/loadBalancers/bad", headers=AUTH), 404, "NotFound")


def test_apply_with_prune_removes_invalid_rows_too(poisoned):
    client = TestClient(api.app)
    body = {"loadBalancers": {"web": web_body()}, "prune": True}
    assert client.post("/applyLoadBalancers", json=body, headers=AUTH).status_code == 200
    assert set(poisoned.lbs) == {"web"} and poisoned._invalid == []


# ---------------------------------------------------------------- HTTPS, the token and the name checked (client)


def test_client_verifies_the_managers_name_against_the_lab_ca(tmp_path):
    """A TLS server with manager1's certificate (the lab's PKI), reached by address: the client
    sends the name given per URL as SNI and checks the certificate against it and the lab CA,
    and sends the token."""
    import http.server
    import ssl

    from muxlab.cli.api import Api
    from muxlab.errors import MuxlabError
    from muxlab.pki import ensure_pki

    pki = ensure_pki(tmp_path, fabric())
    token = (pki / "api-token").read_text().strip()
    seen = {"sni": [], "auth": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen["auth"].append(self.headers.get("Authorization"))
            ok = self.headers.get("Authorization") == f"Bearer {token}"
            body = json.dumps({"value": []} if ok else {"error": {"code": "InvalidAuthenticationToken",
                                                                   "message": "The access token is invalid."}}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "manager1" / "node.crt", pki / "manager1" / "node.key")
    ctx.sni_callback = lambda sock, name, _ctx: seen["sni"].append(name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        ca = pki / "ca.crt"
        assert Api([url], timeout=5, token=token, ca=ca, names=["manager1"]).load_balancers() == {}
        assert seen == {"sni": ["manager1"], "auth": [f"Bearer {token}"]}
        with pytest.raises(MuxlabError, match="TLS verification failed"):   # another manager's name
            Api([url], timeout=5, token=token, ca=ca, names=["manager2"]).get("/loadBalancers")
        assert seen["sni"][-1] == "manager2"
        with pytest.raises(MuxlabError, match="TLS verification failed"):   # no name: the address is checked
            Api([url], timeout=5, token=token, ca=ca).get("/loadBalancers")
        with pytest.raises(MuxlabError, match="TLS verification failed"):   # not the lab's CA: the system's
            Api([url], timeout=5, token=token, names=["manager1"]).get("/loadBalancers")
        with pytest.raises(MuxlabError, match="401") as exc:
            Api([url], timeout=5, token="wrong", ca=ca, names=["manager1"]).get("/loadBalancers")
        assert exc.value.status == 401
        assert len(seen["auth"]) == 2   # the refused handshakes never got as far as a request
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- classic cloud services

def cloud_service_body(xml=None):
    from pathlib import Path
    import yaml
    here = Path(__file__).resolve().parents[2] / "examples" / "cloudservice"
    roles = yaml.safe_load((here / "ProbeTenant.roles.yml").read_text())
    return {"serviceDefinition": xml if xml is not None else (here / "ProbeTenant.csdef").read_text(), **roles}


def test_a_service_definition_is_stored_as_its_load_balancer(client, store):
    r = client.put("/cloudServices/ProbeTenant", json=cloud_service_body(), headers=AUTH)
    assert r.status_code == 201, r.text
    lb = store.lbs["ProbeTenant"]
    assert lb.properties.cloudService.name == "ProbeTenant"
    assert {x.name for x in lb.properties.loadBalancingRules} == {"FE_External_Http", "FE_External_Tcp",
                                                                   "FE_External_Udp", "HTTP_Probe"}


def test_a_bad_service_definition_names_the_element_and_changes_nothing(client, store):
    xml = cloud_service_body()["serviceDefinition"].replace('port="10001"', 'port="70000"')
    err = refused(client.put("/cloudServices/ProbeTenant", json=cloud_service_body(xml), headers=AUTH), 400)
    assert any("FE_External_Tcp" in d["target"] and "70000" in json.dumps(d) for d in err["details"]), err
    assert "change" not in store.calls


def test_the_url_names_the_service(client, store):
    err = refused(client.put("/cloudServices/Other", json=cloud_service_body(), headers=AUTH), 400)
    assert detail(err, "serviceDefinition.ServiceDefinition/@name")
    assert "change" not in store.calls
