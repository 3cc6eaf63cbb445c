"""HTML pages: each view asks `Overview` for data and renders a template; no logic here."""

from flask import Blueprint, Response, current_app, render_template, request

bp = Blueprint("views", __name__)


def overview():
    return current_app.extensions["pyinspect"]


def page_args():
    """limit/offset from the query string, bounded."""
    from .api import int_arg

    return int_arg("limit", 100, 1, 1000), int_arg("offset", 0, 0, 10**9)


@bp.get("/")
def host():
    return render_template("host.html", host=overview().host())


@bp.get("/containers")
def containers():
    return render_template("containers.html", containers=overview().containers())


@bp.get("/topology")
def topology():
    svg = overview().topology_svg()
    return render_template("topology.html", svg=svg)


@bp.get("/topology.svg")
def topology_svg():
    return Response(overview().topology_svg(), mimetype="image/svg+xml")


@bp.get("/timeline")
def timeline():
    limit, offset = page_args()
    container = request.args.get("container") or None
    kinds = request.args.getlist("kind") or None
    rows = overview().timeline(container=container, kinds=kinds, limit=limit, offset=offset)
    return render_template(
        "timeline.html", rows=rows, container=container, kinds=kinds, limit=limit, offset=offset
    )


@bp.get("/flows")
def flows():
    session = request.args.get("session", type=int)
    return render_template(
        "flows.html", flows=overview().flows(session_id=session), session=session
    )


@bp.get("/traces")
def sessions():
    return render_template(
        "sessions.html", sessions=overview().sessions(), containers=overview().containers()
    )


@bp.get("/doctor")
def doctor():
    return render_template("doctor.html", findings=overview().findings())


@bp.get("/runbooks/<name>")
def runbook(name):
    return render_template("runbook.html", name=name, text=overview().runbook(name))
