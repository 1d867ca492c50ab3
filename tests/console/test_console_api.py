"""The admin API against the real console, cache server, catalog and download worker (conftest.py)."""

from __future__ import annotations

import time

import httpx

from cachetap.testing.waiting import wait_for

from cachetap.testing.console import MiB, prefetch_and_wait


def test_prefetch_download_serve_and_the_figures_that_follow(stack):
    entry = prefetch_and_wait(stack, "/small.iso")
    assert entry["stored_size"] == 2 * MiB and entry["fetched_bytes"] == 2 * MiB
    assert entry["cache_url"].startswith(stack.cache + f"/c/{entry['key']}/")
    for _ in range(3):  # three clients take it from the cache
        body = httpx.get(entry["cache_url"], timeout=30)
        assert body.status_code == 200 and len(body.content) == 2 * MiB
    with stack.client() as api:  # loopback reads need no token
        served = wait_for(lambda: api.get(f"/api/entries/{entry['key']}").json()["served_bytes"] >= 6 * MiB or None,
                          "the cache server's hit flush", timeout=60, step=0.5)
        assert served
        one = api.get(f"/api/entries/{entry['key']}").json()
        assert one["served_bytes"] == 6 * MiB and one["saved_bytes"] == 4 * MiB and one["hits"] >= 3
        overview = api.get("/api/overview").json()
        for period in ("today", "week", "all"):
            figures = overview["savings"][period]
            assert figures["gross_bytes"] >= 6 * MiB and figures["fetched_bytes"] >= 2 * MiB
            assert figures["saved_bytes"] == figures["gross_bytes"] - figures["fetched_bytes"]
        assert overview["store"]["objects"] >= 1 and overview["store"]["stored_bytes"] >= 2 * MiB
        assert overview["store"]["disk_free_bytes"] > 0
        points = api.get("/api/series", params={"range": "day"}).json()["points"]
        assert sum(p["served_bytes"] for p in points) >= 6 * MiB
        assert sum(p["fetched_bytes"] for p in points) >= 2 * MiB
        month = api.get("/api/series", params={"range": "month"}).json()
        assert month["period"] == 3600 and sum(p["served_bytes"] for p in month["points"]) >= 6 * MiB
        hosts = api.get("/api/hosts").json()
        assert hosts["by_saved"][0]["host"] == "files.test" and hosts["by_saved"][0]["saved_bytes"] >= 4 * MiB
        found = api.get("/api/catalog", params={"q": "small.iso", "sort": "saved"}).json()["entries"]
        assert [e["key"] for e in found] == [entry["key"]] and found[0]["freshness"].startswith("fresh")
        assert api.get("/api/catalog", params={"q": "no-such-%_thing"}).json()["entries"] == []
        task = api.get(f"/api/tasks/{entry['task_id']}").json()
        assert task["state"] == "SUCCESS" and task["result"]["size"] == 2 * MiB
        assert api.get("/api/tasks/00000000-0000-0000-0000-000000000000").status_code == 404
        assert api.get("/api/tasks/not-a-task").status_code == 400
        nodes = api.get("/api/nodes").json()
        assert {"capture", "analyze", "download", "schedule"} <= set(nodes["queues"])
        cache = next(n for n in nodes["nodes"] if "cache" in n["roles"] and n["public_url"] == stack.cache)
        assert nodes["queues"][f"download.{cache['name']}"] == 0  # the per-node download queue, drained
        assert nodes["beat"] == {"holder": None, "last_started": {}}  # no beat in this stack

        def free_from_the_registry():  # what the cache nodes' heartbeats say, not this machine's statfs
            caches = [n for n in api.get("/api/nodes").json()["nodes"] if n["live"] and "cache" in n["roles"]]
            return api.get("/api/overview").json()["store"]["disk_free_bytes"] == sum(n["free"] for n in caches)
        wait_for(free_from_the_registry, "disk free summed over the cache nodes", timeout=30, step=0.5)


def test_writes_need_the_token_even_on_loopback(stack):
    with stack.client() as api:
        answer = api.post("/api/prefetch", json={"url": stack.url("/image.iso")})
        assert answer.status_code == 401 and "admin token" in answer.json()["detail"]
        assert api.post("/api/prefetch", json={"url": stack.url("/image.iso")},
                        headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
        key = "0" * 32
        for action in ("purge", "revalidate", "retry"):
            assert api.post(f"/api/entries/{key}/{action}").status_code == 401
        # nothing happened: the URL was never counted
        assert api.get("/api/catalog", params={"q": "image.iso"}).json()["entries"] == []


def test_cross_origin_writes_and_rebound_reads_are_refused(stack):
    with stack.client(token=True) as api:
        other = api.post("/api/prefetch", json={"url": stack.url("/image.iso")},
                         headers={"Origin": "http://evil.example"})
        assert other.status_code == 403
    with stack.client() as api:  # a DNS-rebinding page: loopback peer, but a Host of its own
        assert api.get("/api/overview", headers={"Host": "evil.example"}).status_code == 401
        assert api.get("/overview").headers["X-Frame-Options"] == "DENY"
    with httpx.Client(base_url=stack.console, timeout=30) as api:
        assert api.get("/api/overview", headers={"Host": "evil.example",
                                                 "Authorization": f"Bearer {stack.token}"}).status_code == 200


def test_failures_are_listed_with_their_reason_and_purge_and_revalidate_act(stack):
    with stack.client(token=True) as api:
        gone = api.post("/api/prefetch", json={"url": stack.url("/gone.iso")}).json()
        assert gone["outcome"] == "rejected" and "404" in gone["reason"]
        broken = api.post("/api/prefetch", json={"url": stack.url("/broken.iso")}).json()
        assert broken["outcome"] == "admitted"

        def failed():
            return [f for f in api.get("/api/downloads").json()["failures"] if f["key"] == broken["key"]]
        failure = wait_for(failed, "the broken download to fail", timeout=120, step=0.3, detail=stack.log_tail)[0]
        assert failure["reason"].startswith("download: ") and failure["url"] == stack.url("/broken.iso")
        again = api.post(f"/api/entries/{broken['key']}/retry").json()
        assert again["outcome"] == "admitted" and again["task_id"]
        assert api.post("/api/prefetch", json={"url": "ftp://files.test/x"}).status_code == 400
        entry = prefetch_and_wait(stack, "/image.iso")
        assert api.post(f"/api/entries/{entry['key']}/revalidate").json()["outcome"] == "fresh"
        purged = api.post(f"/api/entries/{entry['key']}/purge").json()
        assert purged["removed"] and purged["file"] == "deleted"
        assert api.get(f"/api/entries/{entry['key']}").status_code == 404
        assert api.post(f"/api/entries/{entry['key']}/purge").status_code == 404


def test_openapi_documents_every_endpoint(stack):
    with stack.client() as api:
        schema = api.get("/api/openapi.json").json()
        assert {"/api/overview", "/api/prefetch", "/api/entries/{key}/purge", "/api/tasks/{task_id}"} <= set(schema["paths"])
        page = api.get("/api").text
        assert "/api/entries/{key}/revalidate" in page


def test_overview_sums_the_rates_capture_nodes_report_in_their_heartbeats(stack):
    from cachetap.store.catalog import open_catalog

    with stack.client() as api:
        assert api.get("/api/overview").json()["rates"]["redirects_per_s"] is None  # no capture yet
    catalog = open_catalog(stack.settings.effective_database_url)
    try:
        now = time.time()
        for name, gets, redirects in (("cap-a", 120.5, 30.25), ("cap-b", 10.0, 2.0)):
            catalog.nodes.beat(name, "capture", now, report={"interface": "eth1", "gets_per_s": gets,
                                                             "redirects_per_s": redirects})
        with stack.client() as api:
            rates = api.get("/api/overview").json()["rates"]
            assert (rates["capture_gets_per_s"], rates["redirects_per_s"]) == (130.5, 32.25)
            shown = {n["name"]: n for n in api.get("/api/nodes").json()["nodes"]}
            assert shown["cap-a"]["reports"]["capture"]["redirects_per_s"] == 30.25
    finally:
        for name in ("cap-a", "cap-b"):
            catalog.nodes.forget(name)
        catalog.engine.dispose()
