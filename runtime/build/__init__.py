"""`pyinspect build`: Dockerfiles, multi-stage builds and a layer cache (see docs/build.md).

dockerfile parses, planner picks stages, builder runs steps through cache, steps
executes RUN/COPY/ADD/WORKDIR, layerdiff turns an upper dir into an OCI layer.
"""

from .builder import BuildOptions, BuildResult, Interrupted, Progress, build

__all__ = ["BuildOptions", "BuildResult", "Interrupted", "Progress", "build"]
