"""A registry client for the OCI Distribution API (v2): login, pull, push.

reference.py   Docker's image name rules (default registry, library/, host:port/)
credentials.py Docker's config.json (`auths`), mode 0600
client.py      HTTP: scheme choice, Basic and Bearer auth, manifests, blobs, uploads
pull.py        manifest/index -> verified blobs -> the image store
push.py        the image store -> blobs (HEAD first) -> manifest
"""
