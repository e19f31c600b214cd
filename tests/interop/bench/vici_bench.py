#!/usr/bin/env python3
"""What users do, timed over vici: several proposal layouts side by side.

Driven by bench/vici-bench.sh, which starts the KME simulator and two strongSwan 6.1.0
charons whose vici sockets are bind-mounted to the host. This one process talks to both
charons (strongSwan's own `vici` package): a command session and an event session per
gateway. Nothing timed goes through swanctl or docker exec, and nothing is arranged to suit
the key supply: no untimed rekeys that announce keys, no pauses between timed operations.

Per round, per KME latency (set once per block with the simulator's admin command, not
timed), per configuration (order rotated every round): load-conn on both gateways, one
untimed warm-up setup, then
  (a) IKE+CHILD setups back to back: the synchronous vici `initiate` round trip on gw-a; the
      IKE SA is terminated, untimed, before each one;
  (b) CHILD SAs created one after another in one IKE SA: vici `initiate` of the child in the
      established IKE SA (a CREATE_CHILD_SA each, with the layout's PFS key exchange), timed
      as a whole; reported as SAs per second;
  (c) PFS CHILD rekeys back to back: vici `rekey` on one gateway until the `child-rekey`
      event of that gateway arrives (raised once the new outbound SA is installed); the next
      rekey starts when the peer's `child-rekey` event (old SA deleted) has arrived. Rekeys
      alternate between gw-a and gw-b.
Ratios are of medians (rates for b) measured in the same round and block, then the median
over rounds.
"""

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import time

try:
    import vici
    from vici.protocol import Packet, Message
except ImportError:  # the scenario installs it; say so if run by hand
    sys.exit("vici_bench.py needs strongSwan's vici package: pip install vici")

CONFIGS = [
    # name, IKE proposals, ESP proposals
    ("x25519", "aes256gcm16-prfsha384-x25519", "aes256gcm16-x25519"),
    ("x25519-ke1_mlkem768", "aes256gcm16-prfsha384-x25519-ke1_mlkem768", "aes256gcm16-x25519-ke1_mlkem768"),
    ("x25519-ke1_qkd", "aes256gcm16-prfsha384-x25519-ke1_qkd", "aes256gcm16-x25519-ke1_qkd"),
    ("recommended", "aes256gcm16-prfsha384-x25519-ke1_qkd", "aes256gcm16-qkd"),
    ("qkd alone", "aes256-sha384-qkd", "aes256gcm16-qkd"),
]
DEFAULT_CONFIGS = "x25519,x25519-ke1_mlkem768,recommended"
# metric -> the layout the others are compared with; "create" is a rate (higher is better).
FLOORS = {"setup": "x25519-ke1_mlkem768", "create": "x25519", "rekey": "x25519"}
# Issue 16's targets: (metric, config, KME latency or None for any, bound on the ratio).
# For "create" the ratio is config rate / floor rate and must be at least the bound.
TARGETS = [
    ("create", "recommended", 25, 0.9),
    ("setup", "recommended", 25, 1.10),
    ("rekey", "recommended", 0, 1.05),
]

CONN = "tunnel"
CHILD = "net"


def s(v):
    return v.decode() if isinstance(v, bytes) else v


class Gateway:
    def __init__(self, name, sock_path, env):
        self.name = name
        self.cmd = vici.Session(self._connect(sock_path))
        self.ev = vici.Session(self._connect(sock_path))
        self.ev._register_unregister("child-rekey", True)
        self.env = env  # LOCAL_ADDR, REMOTE_ADDR, LOCAL_ID, REMOTE_ID, LOCAL_TS, REMOTE_TS
        self.pending = []  # events read but not consumed: (time, type, msg)

    @staticmethod
    def _connect(path):
        deadline = time.time() + 30
        while True:
            try:
                sk = socket.socket(socket.AF_UNIX)
                sk.connect(path)
                return sk
            except OSError:
                sk.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def load(self, ike, esp, children=0):
        """The tunnel, plus `children` CHILD configs of their own (one UDP port each:
        strongSwan establishes no duplicate of a CHILD SA with the same selectors; protocol
        17 by number, the images have no /etc/protocols)."""
        extra = {
            f"c{i}": {
                "local_ts": [f"{self.env['LOCAL_TS']}[17/{10000 + i}]"],
                "remote_ts": [f"{self.env['REMOTE_TS']}[17/{10000 + i}]"],
                "esp_proposals": [esp],
                "rekey_time": "1h",
                "start_action": "none",
            }
            for i in range(children)
        }
        conn = {
            CONN: {
                "version": "2",
                "local_addrs": [self.env["LOCAL_ADDR"]],
                "remote_addrs": [self.env["REMOTE_ADDR"]],
                "proposals": [ike],
                "rekey_time": "4h",
                "local": {"auth": "psk", "id": self.env["LOCAL_ID"]},
                "remote": {"auth": "psk", "id": self.env["REMOTE_ID"]},
                "children": {
                    CHILD: {
                        "local_ts": [self.env["LOCAL_TS"]],
                        "remote_ts": [self.env["REMOTE_TS"]],
                        "esp_proposals": [esp],
                        "rekey_time": "1h",
                        "start_action": "none",
                    },
                    **extra,
                },
            }
        }
        try:
            self.cmd.request("unload-conn", {"name": CONN})
        except vici.exception.CommandException:
            pass
        self.cmd.request("load-conn", conn)

    def terminate_all(self):
        try:
            self.cmd.request("terminate", {"ike": CONN, "timeout": 5000, "loglevel": -1})
        except vici.exception.CommandException:
            pass  # nothing to terminate

    def ike_sas(self):
        return [sa for sa in self.cmd.list_sas({"ike": CONN})]

    def installed_child_id(self):
        for entry in self.ike_sas():
            for ike in entry.values():
                if s(ike.get("state")) != "ESTABLISHED":
                    continue
                for child in ike.get("child-sas", {}).values():
                    if s(child.get("name")) == CHILD and s(child.get("state")) == "INSTALLED":
                        return s(child["uniqueid"])
        raise RuntimeError(f"{self.name}: no installed CHILD SA {CHILD}")

    def drain_event(self, timeout):
        """Wait for one child-rekey event; its arrival time or None on timeout."""
        if self.pending:
            return self.pending.pop(0)
        r, _, _ = select.select([self.ev.transport.socket], [], [], timeout)
        if not r:
            return None
        pkt = Packet.parse(self.ev.transport.receive())
        t = time.perf_counter()
        if pkt.response_type != Packet.EVENT:
            raise RuntimeError(f"{self.name}: unexpected vici packet type {pkt.response_type}")
        return t, s(pkt.event_type), Message.deserialize(pkt.payload)

    def flush_events(self):
        self.pending.clear()
        while self.drain_event(0) is not None:
            pass


def kme_admin(container, *args):
    out = subprocess.run(
        ["docker", "exec", container, "qkd-kme-sim", "admin", "--url", "http://127.0.0.1:8000", *args],
        check=True, capture_output=True, text=True, timeout=60,
    )
    return out.stdout


def create_children(a, n):
    """n CHILD SAs created one after another in gw-a's established IKE SA; seconds in all."""
    t0 = time.perf_counter()
    for i in range(n):
        a.cmd.request("initiate", {"ike": CONN, "child": f"c{i}", "timeout": 15000, "loglevel": -1})
    return time.perf_counter() - t0


def child_count(gw):
    return sum(len(ike.get("child-sas", {})) for entry in gw.ike_sas() for ike in entry.values())


def setup_once(gws):
    a, b = gws
    a.terminate_all()
    b.terminate_all()
    t0 = time.perf_counter()
    a.cmd.request("initiate", {"ike": CONN, "child": CHILD, "timeout": 15000, "loglevel": -1})
    return time.perf_counter() - t0


def rekey_once(initiator, responder):
    cid = initiator.installed_child_id()
    initiator.flush_events()
    responder.flush_events()
    t0 = time.perf_counter()
    res = initiator.cmd.request("rekey", {"child-id": cid})
    ev = initiator.drain_event(10)
    if ev is None:
        raise RuntimeError(f"{initiator.name}: no child-rekey event within 10 s (rekey answered {res})")
    dt = ev[0] - t0
    # The peer raises its child-rekey when the old SA is deleted: the rekey is over.
    if responder.drain_event(10) is None:
        raise RuntimeError(f"{responder.name}: no child-rekey event within 10 s")
    return dt


def rekeys(gws, n):
    a, b = gws
    return [rekey_once(*((a, b) if i % 2 == 0 else (b, a))) for i in range(n)]


def setups(gws, n):
    return [setup_once(gws) for _ in range(n)]


def med_ms(xs):
    return statistics.median(xs) * 1000.0


def metric_value(sample, metric):
    """Median seconds (setup, rekey) or SAs per second (create) of one round's samples."""
    if metric == "create":
        n, secs = sample["create"]
        return n / secs
    return statistics.median(sample[metric])


def ratio(samples, lat, metric, name, rnd):
    floor = FLOORS[metric]
    return metric_value(samples[lat][name][rnd], metric) / metric_value(samples[lat][floor][rnd], metric)


def show(metric, v):
    return f"{v:.1f}/s" if metric == "create" else f"{v * 1000:.1f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--setups", type=int, default=30, help="timed IKE+CHILD setups per config and round")
    ap.add_argument("--children", type=int, default=300, help="CHILD SAs created one after another per config and round")
    ap.add_argument("--rekeys", type=int, default=20, help="timed CHILD rekeys per config and round")
    ap.add_argument("--latencies", default="0,25")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated names")
    ap.add_argument("--json", help="write all samples here")
    ap.add_argument("--kem", default="", help="the charons' charon.plugins.qkd.kem (for the labels)")
    ap.add_argument("--dh-group", default="curve25519", help="the charons' charon.plugins.qkd.dh_group (for the labels)")
    args = ap.parse_args()

    env = os.environ
    gws = []
    for side, name in (("A", "gw-a"), ("B", "gw-b")):
        genv = {k: env[f"{side}_{k}"] for k in ("LOCAL_ADDR", "REMOTE_ADDR", "LOCAL_ID", "REMOTE_ID", "LOCAL_TS", "REMOTE_TS")}
        gws.append(Gateway(name, env[f"{side}_VICI"], genv))
    kme = env["KME_CONTAINER"]
    wanted = args.configs.split(",")
    configs = [c for c in CONFIGS if c[0] in wanted]
    latencies = [int(x) for x in args.latencies.split(",")]
    metrics = [m for m in ("setup", "create", "rekey") if FLOORS[m] in wanted]
    for gw in gws:
        v = gw.cmd.version()
        print(f"    {gw.name}: {s(v['daemon'])} {s(v['version'])} ({s(v['machine'])})", flush=True)
    print(f"    load: {os.getloadavg()}", flush=True)

    # samples[lat][cfg] = list over rounds of {"setup": [...], "create": (n, s), "rekey": [...]}
    samples = {lat: {c[0]: [] for c in configs} for lat in latencies}
    t_start = time.time()
    for rnd in range(args.rounds):
        for lat in latencies:
            kme_admin(kme, "latency", str(lat))
            rot = rnd % len(configs)
            order = configs[rot:] + configs[:rot]
            for name, ike, esp in order:
                for gw in gws:
                    gw.terminate_all()
                    gw.load(ike, esp, args.children)
                setup_once(gws)  # the one warm-up setup
                setup = setups(gws, args.setups)
                create = create_children(gws[0], args.children)
                made = child_count(gws[0])
                if made < args.children + 1:
                    raise RuntimeError(f"{name}: {made} CHILD SAs after {args.children} initiates")
                for gw in gws:
                    gw.terminate_all()
                setup_once(gws)
                rk = rekeys(gws, args.rekeys)
                samples[lat][name].append({"setup": setup, "create": (args.children, create), "rekey": rk})
            parts = []
            for metric in metrics:
                floor = FLOORS[metric]
                f = metric_value(samples[lat][floor][-1], metric)
                rs = " ".join(f"{n}={ratio(samples, lat, metric, n, -1):.2f}" for n, _, _ in configs if n != floor)
                parts.append(f"{metric} vs {floor} ({show(metric, f)}): {rs}")
            print(f"    round {rnd + 1} KME +{lat} ms (load {os.getloadavg()[0]:.2f}): " + "; ".join(parts), flush=True)
        for gw in gws:
            gw.terminate_all()
    kme_admin(kme, "latency", "0")
    elapsed = time.time() - t_start

    print(f"\n    {args.rounds} rounds in {elapsed:.0f} s; per round and config: 1 untimed warm-up setup, "
          f"{args.setups} setups back to back, {args.children} CHILD SAs one after another in one IKE SA, "
          f"{args.rekeys} PFS CHILD rekeys back to back (alternating sides); no pauses, no arranged rekeys")
    for lat in latencies:
        print(f"\n    KME +{lat} ms | " + " | ".join(
            f"{m} {'rate' if m == 'create' else 'p50'} | {m} ratio vs {FLOORS[m]}" for m in metrics))
        for name, _, _ in configs:
            row = [name]
            for metric in metrics:
                if metric == "create":
                    rates = [metric_value(r, metric) for r in samples[lat][name]]
                    row.append(f"{statistics.median(rates):.1f}/s")
                else:
                    allv = [x for r in samples[lat][name] for x in r[metric]]
                    row.append(f"{statistics.median(allv) * 1000:.1f} ms")
                ratios = [ratio(samples, lat, metric, name, i) for i in range(args.rounds)]
                row.append(f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})")
            print("    | " + " | ".join(row) + " |")
    if args.kem:
        print(f"\n    qkd configs carry dh_group = {args.dh_group}, kem = {args.kem} in the qkd method")
    print("\n    targets (median over rounds of the per-round ratio):")
    for metric, name, lat, bound in TARGETS:
        if lat not in samples or name not in samples[lat] or FLOORS[metric] not in samples[lat]:
            continue
        m = statistics.median(ratio(samples, lat, metric, name, i) for i in range(args.rounds))
        ok = (m >= bound) if metric == "create" else (m <= bound)
        rel = ">=" if metric == "create" else "<="
        print(f"      KME +{lat} ms, {metric} {name} / {FLOORS[metric]}: {m:.3f} (target {rel} {bound:.2f}): "
              + ("met" if ok else "MISSED"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "samples": samples}, f, indent=1)


if __name__ == "__main__":
    main()
