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


@bp.get("/containers/<ref>")
def container(ref):
    return render_template("container.html", c=overview().container_detail(ref))


@bp.get("/interfaces/<netns>/<ifname>")
def interface(netns, ifname):
    return render_template("interface.html", row=overview().interface(netns, ifname))


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


@bp.get("/doctor/fix")
def doctor_confirm():
    """The confirmation page of a fix: the finding as it stands now and its commands."""
    check, container, port = fix_args(request.args)
    pending = overview().doctor_pending(check, container, port)
    return render_template(
        "doctor_fix.html", check=check, container=container, port=port, pending=pending
    )


@bp.post("/doctor/fix")
def doctor_fix():
    check, container, port = fix_args(request.form)
    results = overview().doctor_fix(
        check, container, port, confirmed=request.form.get("confirm") == "yes"
    )
    return render_template(
        "doctor_fix.html", check=check, container=container, port=port, results=results
    )


def fix_args(src):
    from .api import fix_args as parse

    return parse(src)


@bp.get("/runbooks/<name>")
def runbook(name):
    return render_template("runbook.html", name=name, html=overview().runbook_html(name))
