"""A store made the way pyinspect made them before packets moved into segment files:
schema version 5, packet bytes in the `packets` table (tests of the migration)."""

import time

import sqlite_utils
from scapy.all import IP, TCP, UDP, Ether, raw

from pyinspect.store import MIGRATIONS

T0 = 1_764_417_600_000_000_000
CLIENT, HOSTIP, CIP = "192.168.77.2", "192.168.77.10", "172.18.0.2"
DNAT = f"ct 42 DNAT {CLIENT}:40000->{HOSTIP}:8088 => {CIP}:80"
OLD_VERSION = 5


def frame(src, dst, sport, dport, flags="S", proto="tcp", pad=0):
    l4 = (
        TCP(sport=sport, dport=dport, flags=flags)
        if proto == "tcp"
        else UDP(sport=sport, dport=dport)
    )
    return raw(Ether() / IP(src=src, dst=dst) / l4 / (b"GET / HTTP/1.0\r\n\r\n" + bytes(pad)))


def make_old_store(path):
    """Schema version 5 with three sessions (two of `test`, one of `other`), their capture
    points, a NAT flow, packets (comments, directions, NULL len, a point missing from
    capture_points, equal timestamps) and hops that point at packets."""
    db = sqlite_utils.Database(str(path))
    db["schema_version"].create(
        {"version": int, "description": str, "applied_ns": int}, pk="version", if_not_exists=True
    )
    for version, (description, step) in enumerate(MIGRATIONS[:OLD_VERSION], start=1):
        step(db)
        db["schema_version"].insert(
            {"version": version, "description": description, "applied_ns": time.time_ns()}
        )
    for n, (name, cid, t0) in enumerate(
        [
            ("test", "ab" * 32, T0),
            ("test", "ab" * 32, T0 + 5 * 10**9),
            ("other", "cd" * 32, T0 + 9 * 10**9),
        ]
    ):
        sid = (
            db["trace_sessions"]
            .insert(
                {
                    "container_id": cid,
                    "container_name": name,
                    "started_ns": t0,
                    "stopped_ns": t0 + 10**9,
                    "snaplen": 160,
                    "status": "stopped",
                    "summary": None,
                }
            )
            .last_pk
        )
        up = (
            db["capture_points"]
            .insert({"session_id": sid, "name": "eth0", "description": "uplink", "linktype": 1})
            .last_pk
        )
        veth = (
            db["capture_points"]
            .insert(
                {
                    "session_id": sid,
                    "name": "vethab12cd3",
                    "description": f"veth: host end of {name}'s veth",
                    "linktype": 1,
                }
            )
            .last_pk
        )
        db["capture_points"].insert(
            {
                "session_id": sid,
                "name": "eth0",
                "description": f"container: eth0 in {name}",
                "linktype": 1,
            }
        )
        fid = (
            db["flows"]
            .insert(
                {
                    "session_id": sid,
                    "ct_id": 42,
                    "proto": "tcp",
                    "orig_src": CLIENT,
                    "orig_sport": 40000,
                    "orig_dst": HOSTIP,
                    "orig_dport": 8088,
                    "reply_src": CIP,
                    "reply_sport": 80,
                    "reply_dst": CLIENT,
                    "reply_dport": 40000,
                    "nat": "dnat",
                    "first_ns": t0 + 100,
                    "last_ns": t0 + 400,
                }
            )
            .last_pk
        )
        rows = [  # (point, dt, frame, direction, comment, flow_id, len) - out of order
            (
                veth,
                200,
                frame(CLIENT, CIP, 40000, 80),
                "out",
                "ct 42 filter:FORWARD:rule:3",
                fid,
                None,
            ),
            (up, 100, frame(CLIENT, HOSTIP, 40000, 8088), "in", DNAT, fid, 1500),
            (veth, 300, frame(CIP, CLIENT, 80, 40000, "SA"), "in", None, None, None),
            (up, 400, frame(HOSTIP, CLIENT, 8088, 40000, "SA"), "out", "ct 42 SNAT", fid, 90),
            (up, 50, frame("192.168.77.3", HOSTIP, 5353, 53, proto="udp"), None, None, None, None),
            (
                up,
                900,
                frame("192.168.77.3", HOSTIP, 1234, 22, pad=n * 3),
                "in",
                "drop: no rule \u2192 \u00fc",
                None,
                None,
            ),
            (77, 900, frame(CLIENT, HOSTIP, 1, 2), "in", None, None, 1500),  # unknown point
        ]
        ids = []
        for p, dt, d, dr, c, f, ln in rows:
            ids.append(
                db["packets"]
                .insert(
                    {
                        "session_id": sid,
                        "point_id": p,
                        "ts_ns": t0 + dt,
                        "data": d,
                        "len": ln,
                        "caplen": len(d),
                        "direction": dr,
                        "comment": c,
                        "flow_id": f,
                    }
                )
                .last_pk
            )
        db["hops"].insert_all(
            [
                {
                    "session_id": sid,
                    "flow_id": fid,
                    "packet_id": ids[1],
                    "ts_ns": t0 + 100,
                    "table_name": "nat",
                    "chain": "PREROUTING",
                    "rule_num": 1,
                    "rule_text": "-j DNAT",
                    "verdict": "DNAT",
                },
                {
                    "session_id": sid,
                    "flow_id": fid,
                    "packet_id": ids[0],
                    "ts_ns": t0 + 200,
                    "table_name": "filter",
                    "chain": "FORWARD",
                    "rule_num": 3,
                    "rule_text": "-j ACCEPT",
                    "verdict": "ACCEPT",
                },
            ]
        )
    db.close()
    return path
