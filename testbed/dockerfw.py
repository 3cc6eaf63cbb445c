"""Docker's firewall layouts, written by hand into a namespace of the caller's:

- `nft_ruleset()`: Docker's nftables backend (one native table `ip docker-bridges`, verdict
  maps per bridge, no iptables tables at all), loaded with `nft -f -`;
- `iptables_nft_rules()`: Docker's iptables layout (DOCKER, DOCKER-USER,
  DOCKER-ISOLATION-STAGE-1/2) for iptables-nft-restore.

Both publish host port `hport` to `ctr_ip:80` on bridge `br` (subnet `subnet`) and
MASQUERADE the subnet. Used by tests/test_trace_nft.py and tests/test_doctor_nft.py.
"""

TABLE = "docker-bridges"


def nft_ruleset(br, subnet, ctr_ip, hport=8088, cport=80):
    """Docker's nftables backend for one bridge and one published port (nft -f text)."""
    return f"""
table ip {TABLE} {{
    map filter-forward-in-jumps {{
        type ifname : verdict
        elements = {{ "{br}" : jump filter-forward-in__{br} }}
    }}
    map filter-forward-out-jumps {{
        type ifname : verdict
        elements = {{ "{br}" : jump filter-forward-out__{br} }}
    }}
    map nat-postrouting-in-jumps {{
        type ifname : verdict
        elements = {{ "{br}" : jump nat-postrouting-in__{br} }}
    }}
    map nat-postrouting-out-jumps {{
        type ifname : verdict
        elements = {{ "{br}" : jump nat-postrouting-out__{br} }}
    }}
    chain filter-FORWARD {{
        type filter hook forward priority filter; policy accept;
        oifname vmap @filter-forward-in-jumps
        iifname vmap @filter-forward-out-jumps
    }}
    chain nat-OUTPUT {{
        type nat hook output priority -100; policy accept;
        ip daddr != 127.0.0.0/8 fib daddr type local counter jump nat-prerouting-and-output
    }}
    chain nat-POSTROUTING {{
        type nat hook postrouting priority srcnat; policy accept;
        iifname vmap @nat-postrouting-out-jumps
        oifname vmap @nat-postrouting-in-jumps
    }}
    chain nat-PREROUTING {{
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local counter jump nat-prerouting-and-output
    }}
    chain nat-prerouting-and-output {{
        iifname != "{br}" tcp dport {hport} counter dnat to {ctr_ip}:{cport} comment "DNAT"
    }}
    chain raw-PREROUTING {{
        type filter hook prerouting priority raw; policy accept;
        iifname != "{br}" ip daddr {ctr_ip} counter drop comment "DROP DIRECT ACCESS"
    }}
    chain filter-forward-in__{br} {{
        ct state established,related counter accept
        ip daddr {ctr_ip} tcp dport {cport} counter accept comment "PUBLISHED PORT"
        counter drop comment "DROP"
    }}
    chain filter-forward-out__{br} {{
        ct state established,related counter accept
        counter accept comment "OUTGOING"
    }}
    chain nat-postrouting-in__{br} {{
    }}
    chain nat-postrouting-out__{br} {{
        oifname != "{br}" ip saddr {subnet} counter masquerade comment "MASQUERADE"
    }}
}}
"""


def iptables_nft_rules(br, subnet, ctr_ip, hport=8088, cport=80):
    """Docker's iptables layout for iptables-nft-restore (FORWARD policy DROP)."""
    return f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {subnet} ! -o {br} -j MASQUERADE
-A DOCKER -i {br} -j RETURN
-A DOCKER ! -i {br} -p tcp -m tcp --dport {hport} -j DNAT --to-destination {ctr_ip}:{cport}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o {br} -j DOCKER
-A FORWARD -i {br} ! -o {br} -j ACCEPT
-A FORWARD -i {br} -o {br} -j ACCEPT
-A DOCKER -d {ctr_ip}/32 ! -i {br} -o {br} -p tcp -m tcp --dport {cport} -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o {br} -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""
