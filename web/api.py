"""The JSON API under /api/: the same data the pages show, from the same `Overview` calls."""

from flask import Blueprint, Response, abort, current_app, jsonify, request, send_file

from ..errors import UnavailableError, UsageError
from . import streams
from .streams import Feed

bp = Blueprint("api", __name__)


def overview():
    return current_app.extensions["pyinspect"]


def int_arg(name, default, lo, hi):
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"bad {name}: {raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise UsageError(f"bad {name}: {value} is outside {lo}..{hi}")
    return value


@bp.get("/host")
def host():
    return jsonify(overview().host())


@bp.get("/containers")
def containers():
    return jsonify(overview().containers())


@bp.get("/containers/<ref>")
def container(ref):
    return jsonify(overview().container(ref))


@bp.get("/containers/<ref>/detail")
def container_detail(ref):
    return jsonify(overview().container_detail(ref))


@bp.get("/containers/<ref>/stats")
def container_stats(ref):
    return jsonify(overview().container_stats(ref))


@bp.get("/map")
def vethmap():
    return jsonify(overview().interfaces())


@bp.get("/timeline")
def timeline():
    rows = overview().timeline(
        container=request.args.get("container") or None,
        kinds=request.args.getlist("kind") or None,
        since_ns=int_arg("since_ns", None, 0, 2**63 - 1),
        after_id=int_arg("after_id", None, 0, 2**63 - 1),
        limit=int_arg("limit", 100, 1, 1000),
        offset=int_arg("offset", 0, 0, 10**9),
    )
    return jsonify(rows)


@bp.get("/timeline/stream")
def timeline_stream():
    """Server-sent events: each new timeline row as one `data:` line."""
    container = request.args.get("container") or None
    after = int_arg("after_id", None, 0, 2**63 - 1)
    seconds = int_arg("seconds", 300, 1, 3600)
    if after is None:
        after = overview().last_event_id()
    return stream_response(Feed("timeline", (container,)), after, seconds)


def stream_response(feed, after, seconds):
    """A text/event-stream of `feed` past `after` for `seconds`: handed to the server's
    stream hub when it has one, else a generator in this thread."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    resumed = request.headers.get("Last-Event-ID", "")
    if resumed.isascii() and resumed.isdigit() and len(resumed) < 19:
        after = max(after, int(resumed))  # a browser reconnecting: from what it has
    try:
        handed = streams.open_stream(request.environ, feed, after, seconds)
    except streams.Busy as exc:
        raise UnavailableError(f"live stream refused: {exc}", "close some dashboard tabs") from None
    if handed:  # no Content-Length: the hub writes the rest
        body = iter([streams.RETRY])
    else:
        ov = overview()
        body = streams.sse_generator(lambda last: feed.fetch(ov, last), after, seconds)
    return Response(body, mimetype="text/event-stream", headers=headers)


@bp.get("/flows")
def flows():
    return jsonify(overview().flows(session_id=int_arg("session", None, 1, 2**63 - 1)))


@bp.get("/flows/stream")
def flows_stream():
    session = int_arg("session", None, 1, 2**63 - 1)
    seconds = int_arg("seconds", 300, 1, 3600)
    return stream_response(Feed("flows", (session,)), overview().last_flow_id(), seconds)


@bp.get("/traces")
def sessions():
    return jsonify(overview().sessions())


@bp.post("/traces")
def start_trace():
    data = request.get_json(silent=True) or request.form
    container = (data.get("container") or "").strip()
    if not container:
        raise UsageError("start trace: a container name is required")
    duration = data.get("duration") or 30
    try:
        duration = float(duration)
    except (TypeError, ValueError):
        raise UsageError(f"start trace: bad duration {duration!r}") from None
    session = overview().start_trace(
        container, duration=duration, bpf_filter=data.get("filter") or None
    )
    return jsonify(session), 201


@bp.post("/traces/<int:session_id>/stop")
def stop_trace(session_id):
    return jsonify(overview().stop_trace(session_id))


@bp.get("/traces/<int:session_id>/pcap")
def trace_pcap(session_id):
    """The session's merged pcapng, or one flow of it (`?flow=ID`)."""
    flow = int_arg("flow", None, 1, 2**63 - 1)
    data, name = overview().export_pcap(session_id, flow_id=flow)
    return send_file(
        data, mimetype="application/vnd.tcpdump.pcap", as_attachment=True, download_name=name
    )


@bp.get("/pcaps/<path:name>")
def pcap_file(name):
    """A file from the pcap store by name; nothing outside it can be reached."""
    path = overview().pcap_path(name)
    if path is None:
        abort(404, f"no such capture: {name}")
    return send_file(
        path, mimetype="application/vnd.tcpdump.pcap", as_attachment=True, download_name=path.name
    )


@bp.get("/doctor")
def doctor():
    return jsonify(overview().findings())


def fix_args(src):
    """(check, container or None, port or None) of a fix request; UsageError if bad."""
    check = (src.get("check") or "").strip()
    if not check:
        raise UsageError("doctor fix: which check? (check=NAME)")
    port = src.get("port") or None
    if port is not None:
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise UsageError(f"doctor fix: bad port {port!r}") from None
    return check, (src.get("container") or "").strip() or None, port


@bp.post("/doctor/fix")
def doctor_fix():
    data = request.get_json(silent=True) or request.form
    check, container, port = fix_args(data)
    confirmed = data.get("confirm") in ("yes", True)
    return jsonify(overview().doctor_fix(check, container, port, confirmed=confirmed))
