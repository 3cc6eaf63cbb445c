"""The Flask dashboard: `create_app(root)` wires pages, the JSON API, auth and metrics.

The app never talks to the kernel itself; every page and API call goes through
`pyinspect.dashboard.overview`, the same library calls the CLI makes.
"""

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from ..dashboard.overview import Overview
from ..errors import PyinspectError
from . import api, auth, metrics, traceview, views


def create_app(root, *, token=None, hosts=None, test_config=None, tracer_factory=None):
    """A dashboard over the store under `root`. Every request needs `token` (a random one
    when None: `app.config["PYINSPECT_TOKEN"]`) and a Host that `hosts` (an
    auth.HostPolicy; loopback names on any port when None) allows."""
    app = Flask(__name__)
    app.config.update(
        PYINSPECT_ROOT=str(root),
        PYINSPECT_TOKEN=token or auth.new_token(),
        PYINSPECT_HOSTS=hosts or auth.HostPolicy(),
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=1 << 20,  # request bodies: a trace's options, a fix's arguments
    )
    if test_config:
        app.config.update(test_config)
    app.extensions["pyinspect"] = Overview(root, tracer_factory=tracer_factory)
    auth.install(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp, url_prefix="/api")
    app.register_blueprint(traceview.bp)

    @app.get("/metrics", endpoint="metrics")
    def _metrics():
        return Response(metrics.render(app.extensions["pyinspect"]), mimetype=metrics.CONTENT_TYPE)

    @app.errorhandler(PyinspectError)
    def _library_error(exc):
        status = {2: 400, 3: 404, 4: 409, 5: 503}.get(exc.exit_code, 400)
        return _error(status, str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        return _error(exc.code, exc.description)

    return app


def _error(status, message):
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        return jsonify({"error": message}), status
    return render_template("error.html", status=status, message=message), status
