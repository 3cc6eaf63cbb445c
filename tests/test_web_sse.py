"""The two server-sent event streams of the API (one helper serves both)."""

import json
import time

from pyinspect.config import database_path
from pyinspect.store import Store
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
    with Store(database_path(state_root)) as store:
        store.db["flows"].insert(
            {
                "session_id": 1,
                "proto": "tcp",
                "orig_src": "10.9.0.2",
                "orig_sport": 4000,
                "orig_dst": "10.9.0.1",
                "orig_dport": 8088,
                "first_ns": now,
                "last_ns": now,
            }
        )
    for chunk in chunks:
        if chunk.startswith("id: "):
            (flow,) = _data(chunk)
            assert flow["orig_dport"] == 8088 and flow["orig_src"] == "10.9.0.2"
            break
    else:
        raise AssertionError("the new flow was never streamed")
    resp.close()
