"""What pyinspect reads of the host: its containers, interfaces, processes and facts.

discovery (every container, whichever runtime started it), vethmap (veth pairs in every
netns), hostinfo (kernel, cgroups, firewall backends), stats (`docker stats`'s numbers),
events (the process/cgroup timeline).
"""
