"""The trace view: a session (or one flow) as a ladder diagram, live while it runs.

Pages and JSON come from `pyinspect.dashboard.ladder`; the drawing is web/static/ladder.js (SVG
in the page, no library). Streams go through the server's stream hub (web/streams.py).
"""

from flask import Blueprint, current_app, jsonify, render_template

from ..dashboard import ladder
from .api import int_arg, stream_response
from .streams import Feed

bp = Blueprint("traceview", __name__)
ID = 2**63 - 1


def root():
    return current_app.extensions["pyinspect"].root


@bp.get("/traces/<int:session_id>")
def trace_page(session_id):
    flow = int_arg("flow", None, 1, ID)
    info = ladder.session_info(root(), session_id)
    return render_template("trace.html", s=info, flow=flow)


@bp.get("/api/traces/<int:session_id>")
def trace_session(session_id):
    return jsonify(ladder.session_info(root(), session_id))


@bp.get("/api/traces/<int:session_id>/ladder")
def trace_ladder(session_id):
    return jsonify(ladder.view(root(), session_id, int_arg("flow", None, 1, ID)))


@bp.get("/api/traces/<int:session_id>/ladder/stream")
def trace_ladder_stream(session_id):
    """New journeys (journey id past after_id) as server-sent events."""
    return _stream("ladder", session_id)


@bp.get("/api/traces/<int:session_id>/drops/stream")
def trace_drops_stream(session_id):
    """New drops (drop id past after_id) as server-sent events."""
    return _stream("drops", session_id)


def _stream(kind, session_id):
    flow = int_arg("flow", None, 1, ID)
    after = int_arg("after_id", 0, 0, ID)
    seconds = int_arg("seconds", 600, 1, 3600)
    ladder.session_info(root(), session_id)  # 404 for an unknown session
    return stream_response(Feed(kind, (session_id, flow)), after, seconds)
