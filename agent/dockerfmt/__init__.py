"""Docker's text forms: Go templates (`-f`, `--format`), `ps`/`top` rows, `--since` times."""
