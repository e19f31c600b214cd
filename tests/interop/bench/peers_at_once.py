#!/usr/bin/env python3
"""N IKE SAs initiated at once right after both charons started, timed over vici.

Driven by bench/peers-at-once.sh, which (re)creates both gateway containers before every
measurement (fresh charons: the qkd plugin's key buffers start empty), sets the KME
simulator's latency and calls `run` once per round, latency and configuration; `report`
prints the table from the samples collected.

`run`: load N connections on both gateways (untimed), register for ike-updown/child-updown
on gw-a's event session, then send N asynchronous vici `initiate` requests (timeout -1:
charon answers at once and sets the SA up in the background) back to back on gw-a's
command session. t0 is taken just before the first request; a tunnel's time-to-up is the
arrival of gw-a's `child-updown` (up) event for its CHILD SA (installed on both sides by
then). Waits until every tunnel is up or has failed (ike-updown down before its CHILD came
up), at most --timeout seconds.

The N "peers" are N connections from gw-a to gw-b: they differ in IKE identity (gw-a uses
pNNN.gw-a.example per connection, so no IKE SA replaces another) and in CHILD selectors
(UDP port 20000+i by protocol number: the images lack /etc/protocols). They all share one
QKD peer (SAE pair sae-a/sae-b, found by the remote address of qkd.conf's peers.tunnel):
N exchanges drawing on one peer's key supply and one KME link, within the plugin's
per-peer share of its KME request budget at once. That is harder on the plugin than N
distinct peers would be (which each have their own buffers, but share max_kme_requests).
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vici_bench import CONFIGS, Gateway, kme_admin, s  # noqa: E402  (after the path)

import vici  # noqa: E402  (vici_bench says how to install it)

DEFAULT_CONFIGS = "x25519,x25519-ke1_mlkem768,recommended"
FLOOR = "x25519"
# Targets: recommended median <= x25519 median + 2 KME round trips; last <= 1.2 x x25519's.
TARGET_CONFIG = "recommended"
MEDIAN_KME_RTTS = 2
LAST_RATIO = 1.2
PORT0 = 20000
SECRET_ID = "peers-at-once"


def conn_name(i):
    return f"p{i:03d}"


def initiator_id(i):
    return f"p{i:03d}.gw-a.example"


def load_peers(gw, n, ike, esp, initiator, keyingtries):
    """N connections to the other gateway and one PSK for all their identities."""
    env = gw.env
    for i in range(n):
        me, other = (initiator_id(i), env["REMOTE_ID"]) if initiator else (env["LOCAL_ID"], initiator_id(i))
        port = f"[17/{PORT0 + i}]"
        gw.cmd.request("load-conn", {conn_name(i): {
            "version": "2",
            "local_addrs": [env["LOCAL_ADDR"]],
            "remote_addrs": [env["REMOTE_ADDR"]],
            "proposals": [ike],
            "rekey_time": "4h",
            "unique": "never",
            "keyingtries": str(keyingtries),
            "local": {"auth": "psk", "id": me},
            "remote": {"auth": "psk", "id": other},
            "children": {"net": {
                "local_ts": [env["LOCAL_TS"] + port],
                "remote_ts": [env["REMOTE_TS"] + port],
                "esp_proposals": [esp],
                "rekey_time": "1h",
                "start_action": "none",
            }},
        }})
    gw_b_id = env["REMOTE_ID"] if initiator else env["LOCAL_ID"]
    owners = [gw_b_id] + [initiator_id(i) for i in range(n)]
    gw.cmd.request("load-shared", {"id": SECRET_ID, "type": "IKE", "data": os.environ["PSK"], "owners": owners})


def ike_names(gw):
    """Connections with an IKE SA in any state (connecting, established, ...)."""
    return {s(k) for entry in gw.cmd.list_sas() for k in entry}


def wait_ups(gw, n, t0, timeout):
    """Arrival (s after t0) of each connection's CHILD up, and the connections that failed:
    an IKE SA that went down, or (after 2 s without events) one no longer there at all, e.g.
    "peer not responding" before it was established, which raises no ike-updown."""
    up, failed = {}, set()
    deadline = t0 + timeout
    while len(up) + len(failed - set(up)) < n:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        ev = gw.drain_event(min(left, 2.0))
        if ev is None:
            gone = {conn_name(i) for i in range(n)} - set(up) - ike_names(gw)
            failed |= gone
            continue
        t, kind, msg = ev
        # {"up": "yes" (absent: down), <connection>: {the IKE SA}}
        is_up = s(msg.get("up")) == "yes"
        for name in (s(k) for k, v in msg.items() if isinstance(v, dict)):
            if kind == "child-updown" and is_up and name not in up:
                up[name] = t - t0
            elif kind == "ike-updown" and not is_up and name not in up:
                failed.add(name)
    return up, failed - set(up)


def run(args):
    env = os.environ
    gws = []
    for side, name in (("A", "gw-a"), ("B", "gw-b")):
        genv = {k: env[f"{side}_{k}"] for k in ("LOCAL_ADDR", "REMOTE_ADDR", "LOCAL_ID", "REMOTE_ID", "LOCAL_TS", "REMOTE_TS")}
        gws.append(Gateway(name, env[f"{side}_VICI"], genv))
    a, b = gws
    for ev in ("ike-updown", "child-updown"):
        a.ev._register_unregister(ev, True)
    _, ike, esp = next(c for c in CONFIGS if c[0] == args.config)
    kme_admin(env["KME_CONTAINER"], "latency", str(args.latency))
    load_peers(b, args.peers, ike, esp, False, args.keyingtries)
    load_peers(a, args.peers, ike, esp, True, args.keyingtries)
    a.flush_events()

    t0 = time.perf_counter()
    for i in range(args.peers):
        a.cmd.request("initiate", {"ike": conn_name(i), "child": "net", "timeout": -1, "loglevel": -1})
    fired = time.perf_counter() - t0
    up, failed = wait_ups(a, args.peers, t0, args.timeout)

    times = sorted(up.values())
    rec = {
        "round": args.round, "latency": args.latency, "config": args.config, "peers": args.peers,
        "up": times, "failed": len(failed), "down": args.peers - len(times), "fired": fired,
        "load": os.getloadavg()[0],
    }
    med = f"{statistics.median(times) * 1000:.0f}" if times else "-"  # of those up
    last = f"{times[-1] * 1000:.0f}" if times else "-"
    print(f"    round {args.round} KME +{args.latency} ms {args.config}: {len(times)}/{args.peers} up, "
          f"median {med} ms, last {last} ms of those up, {rec['down']} down ({len(failed)} failed), "
          f"{args.peers} initiates sent in {fired * 1000:.0f} ms, load {rec['load']:.2f}", flush=True)
    with open(args.json, "a") as f:
        f.write(json.dumps(rec) + "\n")


def report(args):
    recs = [json.loads(line) for line in open(args.json)]
    lats = sorted({r["latency"] for r in recs})
    names = [c[0] for c in CONFIGS if any(r["config"] == c[0] for r in recs)]
    rounds = sorted({r["round"] for r in recs})
    by = {(r["round"], r["latency"], r["config"]): r for r in recs}
    n = recs[0]["peers"]

    def med(r):
        # Over all N tunnels: one that never came up counts as infinitely late.
        return statistics.median(r["up"] + [float("inf")] * r["down"])

    def last(r):
        # A tunnel that never came up makes "last" the timeout: unbounded.
        return r["up"][-1] if r["up"] and r["down"] == 0 else float("inf")

    def ms(x):
        return "never" if x == float("inf") else f"{x * 1000:.0f} ms"

    print(f"\n    {len(rounds)} rounds, {n} IKE SAs initiated at once on freshly started charons, "
          f"timeout {args.timeout:.0f} s; median/last time to CHILD up on gw-a"
          f"\n    over all N (a tunnel never up counts as never: median 'never' when half stayed down); ratios vs {FLOOR} of the same round")
    for lat in lats:
        print(f"\n    KME +{lat} ms | up (of {n} x rounds) | never up | median | last | median of those up | median ratio | last ratio |")
        for name in names:
            rs = [by[(rd, lat, name)] for rd in rounds if (rd, lat, name) in by]
            allup = [t for r in rs for t in r["up"]]
            down = sum(r["down"] for r in rs)
            row = [name, f"{len(allup)}/{n * len(rs)}", f"{down} ({'+'.join(str(r['down']) for r in rs)})",
                   ms(statistics.median(med(r) for r in rs)), ms(statistics.median(last(r) for r in rs)),
                   ms(statistics.median(allup)) if allup else "-"]
            if (rounds[0], lat, FLOOR) in by:
                mr = [med(r) / med(by[(r["round"], lat, FLOOR)]) for r in rs if (r["round"], lat, FLOOR) in by]
                lr = [last(r) / last(by[(r["round"], lat, FLOOR)]) for r in rs if (r["round"], lat, FLOOR) in by]
                row += [f"{statistics.median(x):.2f} ({min(x):.2f}-{max(x):.2f})" for x in (mr, lr)]
            print("    | " + " | ".join(row) + " |")
    print(f"\n    targets ({TARGET_CONFIG} vs {FLOOR} of the same round, median over rounds; a tunnel that never came up misses):")
    for lat in lats:
        pairs = [(by[(rd, lat, TARGET_CONFIG)], by[(rd, lat, FLOOR)]) for rd in rounds
                 if (rd, lat, TARGET_CONFIG) in by and (rd, lat, FLOOR) in by]
        if not pairs:
            continue
        slack = MEDIAN_KME_RTTS * lat / 1000.0  # the knob delays each KME answer by lat
        dm = statistics.median(med(r) - med(f) for r, f in pairs)
        lr = statistics.median(last(r) / last(f) for r, f in pairs)
        print(f"      KME +{lat} ms, median {TARGET_CONFIG} - {FLOOR}: {ms(dm)} "
              f"(target <= {slack * 1000:.0f} ms): {'met' if dm <= slack else 'MISSED'}")
        print(f"      KME +{lat} ms, last {TARGET_CONFIG} / {FLOOR}: {lr:.2f} (target <= {LAST_RATIO:.1f}): "
              + ("met" if lr <= LAST_RATIO else "MISSED"))
        for r, f in pairs:
            if r["down"] or f["down"]:
                print(f"        round {r['round']}: {r['down']} of {TARGET_CONFIG}'s and {f['down']} of {FLOOR}'s tunnels never came up")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run", help="one measurement on freshly started charons")
    r.add_argument("--config", required=True, choices=[c[0] for c in CONFIGS])
    r.add_argument("--latency", type=int, default=0, help="KME simulator latency (ms), set before loading")
    r.add_argument("--round", type=int, default=1)
    r.add_argument("--peers", type=int, default=100)
    r.add_argument("--keyingtries", type=int, default=1, help="swanctl's default is 1 (no retry)")
    r.add_argument("--timeout", type=float, default=60.0)
    r.add_argument("--json", required=True, help="append the sample (one JSON line) here")
    p = sub.add_parser("report", help="the table of all samples")
    p.add_argument("--json", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    try:
        run(args) if args.mode == "run" else report(args)
    except vici.exception.CommandException as e:
        sys.exit(f"peers_at_once.py: vici command failed: {e}")


if __name__ == "__main__":
    main()
