"""pcapng: the format (`pcapng`: writer, reader, merge) and the export of a trace's
packets from its segment files (`export`)."""
