"""The two server-sent event streams of the API (one helper serves both)."""

import json
import time

from pyinspect.config import database_path
from pyinspect.store import Store
from pyinspect.store.rows import FlowRow, IndexCapture, JourneyRow
from pyinspect.web.app import create_app


def _chunks(resp):
    for chunk in resp.response:
        yield chunk.decode() if isinstance(chunk, bytes) else chunk


def _data(chunk):
    return [json.loads(line[6:]) for line in chunk.splitlines() if line.startswith("data: ")]


def test_timeline_and_flow_streams_send_new_rows(state_root):
    now = time.time_ns()
    with Store(database_path(state_root)) as store:
        store.insert_events([{"ts_ns": now, "kind": "exec", "pid": 7, "comm": "pq-old"}])
    app = create_app(state_root)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app.config['PYINSPECT_TOKEN']}"

    resp = client.get("/api/timeline/stream?after_id=0&seconds=5", buffered=False)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    chunks = _chunks(resp)
    assert next(chunks).startswith("retry: ")
    assert [e["comm"] for e in _data(next(chunks))] == ["pq-old"]
    resp.close()

    resp = client.get("/api/flows/stream?seconds=5", buffered=False)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    chunks = _chunks(resp)
    assert next(chunks).startswith("retry: ")
    assert next(chunks) == ": keepalive\n\n"  # only flows stored after the request
    with Store(database_path(state_root)) as store, store.batch():
        # as the tracer stores it: the flow and its first packet in one transaction (a
        # flow without packets is not listed)
        fid = store.insert_flow(
            FlowRow(1, "tcp", "10.9.0.2", 4000, "10.9.0.1", 8088, first_ns=now, last_ns=now)
        )
        store.add_journeys([JourneyRow(1, fid, [IndexCapture(1, 0, now, 1, "in", 74)])])
    for chunk in chunks:
        if chunk.startswith("id: "):
            (flow,) = _data(chunk)
            assert flow["orig_dport"] == 8088 and flow["orig_src"] == "10.9.0.2"
            break
    else:
        raise AssertionError("the new flow was never streamed")
    resp.close()


def test_a_reconnecting_browser_resumes_after_its_last_event_id(state_root):
    now = time.time_ns()
    with Store(database_path(state_root)) as store:
        store.insert_events(
            [{"ts_ns": now + i, "kind": "exec", "pid": 7, "comm": f"pq-{i}"} for i in range(3)]
        )
        ids = [r["id"] for r in store.db.query("SELECT id FROM events ORDER BY id")]
    app = create_app(state_root)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app.config['PYINSPECT_TOKEN']}"
    for last, want in ((str(ids[0]), ["pq-1", "pq-2"]), ("junk", ["pq-0", "pq-1", "pq-2"])):
        resp = client.get(
            "/api/timeline/stream?after_id=0&seconds=1",
            headers={"Last-Event-ID": last},
            buffered=False,
        )
        got = []
        for chunk in _chunks(resp):
            if chunk.startswith(": keepalive"):
                break
            got += [e["comm"] for e in _data(chunk)]
        assert got == want
        resp.close()
