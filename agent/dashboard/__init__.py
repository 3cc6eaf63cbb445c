"""What the dashboard shows, as JSON-ready data: the Flask app (pyinspect.web) renders it.

overview (the pages' data), containerinfo (one container), ladder (a trace as capture
points), topology and charts (SVG drawn on the server).
"""
