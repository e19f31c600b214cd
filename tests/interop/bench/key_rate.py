#!/usr/bin/env python3
"""PFS CHILD rekeys against a key rate below the demand, timed over vici.

Driven by bench/key-rate.sh (recommended layout: IKE x25519-ke1_qkd, ESP qkd; one IKE SA and
its CHILD SA up, both charons' vici sockets bind-mounted to the host). Reuses vici_bench.py's
Gateway (command + event session per charon); this driver also subscribes to charon's `log`
events (level 1) to see a rekey fail when it fails, not when strongSwan's retry succeeds.

  demand  rekeys back to back for --seconds with the KME unlimited: prints the demand D
          (successful rekeys per second) as JSON.
  run     rekeys for --seconds with the KME's key rate set by the caller, at most --demand
          attempts per second (never more than one in flight; when rekeys wait for keys this
          is the same as back to back).

One rekey (attempt): vici `rekey` of the installed CHILD SA on one gateway (alternating),
then wait on that gateway for either the `child-rekey` event whose old SA is the one asked
for (success; the time from the request to it is the rekey's duration) or its log line
"CHILD_SA rekeying failed" (refused: strongSwan keeps the SA and schedules its own retry
~10 s later) or nothing for --attempt-timeout s (failed). After a success the peer's
`child-rekey` event (old SA deleted there) ends the attempt.

Refused: an attempt of this driver that ended without a new CHILD SA. strongSwan's own
retries of refused rekeys are not attempts of the driver: a `child-rekey` event for an SA
the driver did not ask to rekey, or a failure line outside an attempt, is counted apart
(retries_succeeded / retries_failed) and is neither demand nor achieved rate.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vici_bench import CHILD, CONN, Gateway, s  # noqa: E402

FAILED_LINE = "CHILD_SA rekeying failed"


class RateGateway(Gateway):
    """vici_bench.Gateway that also reads charon's log events (DBG level 1)."""

    def __init__(self, name, sock_path, env):
        super().__init__(name, sock_path, env)
        self.ev._register_unregister("log", True)
        self.qkd_lines = []  # (time, msg) of 'qkd:' lines seen
        self.confirmed_ids = 0  # key IDs in 'qkd: key IDs ... confirmed' lines

    def next_event(self, timeout):
        """The next child-rekey or rekey-failure event: (t, 'rekey', old_id, new_id) or
        (t, 'failed', None, None); None on timeout. qkd: log lines are recorded on the way."""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            ev = self.drain_event(max(left, 0))
            if ev is None:
                return None
            t, kind, msg = ev
            if kind == "log":
                text = s(msg.get("msg", b""))
                if text.startswith("qkd:"):
                    self.qkd_lines.append((t, text))
                    if text.startswith("qkd: key IDs ") and " confirmed" in text:
                        ids = text[len("qkd: key IDs "):].split(" ", 1)[0]
                        self.confirmed_ids += len(ids.split(","))
                if FAILED_LINE in text and s(msg.get("ikesa-name", b"")) == CONN:
                    return t, "failed", None, None
                continue
            if kind == "child-rekey":
                for ike in msg.values():
                    for child in ike.get("child-sas", {}).values():
                        old, new = child.get("old", {}), child.get("new", {})
                        return t, "rekey", s(old.get("uniqueid")), s(new.get("uniqueid"))
                return t, "rekey", None, None

    def counts(self):
        """(established IKE SAs, installed CHILD SAs) of the tunnel."""
        ikes = children = 0
        for entry in self.ike_sas():
            for ike in entry.values():
                if s(ike.get("state")) == "ESTABLISHED":
                    ikes += 1
                for child in ike.get("child-sas", {}).values():
                    if s(child.get("name")) == CHILD and s(child.get("state")) == "INSTALLED":
                        children += 1
        return ikes, children


class Stats:
    def __init__(self):
        self.ok = []  # (end time, duration) of successful attempts
        self.refused = []  # (end time, duration)
        self.timeouts = 0
        self.retries_succeeded = 0  # child-rekey events the driver did not ask for
        self.retries_failed = 0  # failure lines outside the driver's attempt on that side
        self.by_side = {}  # initiator name -> {"rekey": n, "failed": n, "timeout": n}


def wait_for(gw, stats, want_old, timeout):
    """Events of gw until the child-rekey of want_old (('rekey', t)) or, if want_old is
    asked by us, a failure (('failed', t)); ('timeout', None) after timeout s."""
    deadline = time.perf_counter() + timeout
    while True:
        ev = gw.next_event(max(deadline - time.perf_counter(), 0))
        if ev is None:
            return "timeout", None
        t, kind, old, _new = ev
        if kind == "rekey":
            if old == want_old:
                return "rekey", t
            stats.retries_succeeded += 1
        else:
            return "failed", t


def absorb(gw, stats, timeout=0):
    """Read gw's events until none comes for `timeout` s: outside the driver's attempts,
    child-rekey events and failure lines are strongSwan's own retries."""
    while (ev := gw.next_event(timeout)) is not None:
        if ev[1] == "rekey":
            stats.retries_succeeded += 1
        else:
            stats.retries_failed += 1


def attempt(initiator, responder, stats, timeout):
    """One driver rekey; returns its outcome."""
    cid = initiator.installed_child_id()
    rid = responder.installed_child_id()
    t0 = time.perf_counter()
    initiator.cmd.request("rekey", {"child-id": cid})
    what, t = wait_for(initiator, stats, cid, timeout)
    if what == "rekey":
        stats.ok.append((t, t - t0))
        # The peer's event (old SA deleted there) ends the rekey; its failure lines while we
        # wait are strongSwan's own retries.
        while True:
            pw, _ = wait_for(responder, stats, rid, timeout)
            if pw != "failed":
                break
            stats.retries_failed += 1
        if pw == "timeout":
            raise RuntimeError(f"{responder.name}: no child-rekey event for SA {rid} within {timeout} s")
    elif what == "failed":
        stats.refused.append((t, t - t0))
    else:
        stats.timeouts += 1
    side = stats.by_side.setdefault(initiator.name, {"rekey": 0, "failed": 0, "timeout": 0})
    side[what] += 1
    return what


def drive(gws, seconds, demand, timeout):
    """Attempts alternating sides for `seconds`; at most `demand` per second if given."""
    stats = Stats()
    a, b = gws
    for gw in gws:
        gw.flush_events()
    t0 = time.perf_counter()
    n = 0
    while True:
        now = time.perf_counter()
        if now - t0 >= seconds:
            break
        if demand:
            due = t0 + n / demand
            if due > now:
                # Read the events meanwhile (strongSwan's retries, log lines).
                for gw in gws:
                    absorb(gw, stats)
                time.sleep(min(due - now, 0.05))
                continue
        attempt(*((a, b) if n % 2 == 0 else (b, a)), stats, timeout)
        n += 1
    return stats, n, time.perf_counter() - t0


def connect(env):
    gws = []
    for side, name in (("A", "gw-a"), ("B", "gw-b")):
        genv = {k: env.get(f"{side}_{k}", "") for k in ("LOCAL_ADDR", "REMOTE_ADDR", "LOCAL_ID", "REMOTE_ID", "LOCAL_TS", "REMOTE_TS")}
        gws.append(RateGateway(name, env[f"{side}_VICI"], genv))
    return gws


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("demand", "run"))
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--demand", type=float, default=0, help="run: at most this many attempts per second")
    ap.add_argument("--key-rate", type=float, default=0, help="run: the KME's key rate in bits/s (for the report)")
    ap.add_argument("--key-bits", type=int, default=256)
    ap.add_argument("--keys-per-sa", type=float, default=1, help="QKD keys one rekey uses (recommended layout: 1)")
    ap.add_argument("--warmup", type=float, default=15, help="run: seconds left out of the steady rate (the KME's full pool and the buffers)")
    ap.add_argument("--kme-timeout", type=float, default=5, help="the plugin's kme.timeout, s (the bound on a worker's wait)")
    ap.add_argument("--attempt-timeout", type=float, default=15)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    gws = connect(os.environ)
    before = [gw.counts() for gw in gws]
    stats, attempts, elapsed = drive(gws, args.seconds, args.demand if args.mode == "run" else 0, args.attempt_timeout)
    # Events still in flight (the last peer event is consumed; strongSwan retries may be due).
    for gw in gws:
        absorb(gw, stats, 0.5)
    after = [gw.counts() for gw in gws]
    ok = len(stats.ok)
    t_start = min((t - d for t, d in stats.ok + stats.refused), default=0)
    durations = [d for _, d in stats.ok + stats.refused]
    confirmed = sum(gw.confirmed_ids for gw in gws) / 2  # both sides log each exchange's IDs
    res = {
        "mode": args.mode,
        "seconds": round(elapsed, 2),
        "attempts": attempts,
        "rekeys": ok,
        "rate": ok / elapsed,
        "refused": len(stats.refused),
        "timeouts": stats.timeouts,
        "retries_succeeded": stats.retries_succeeded,
        "retries_failed": stats.retries_failed,
        "longest_s": max(durations, default=0),
        "longest_ok_s": max((d for _, d in stats.ok), default=0),
        "median_ok_ms": sorted(d for _, d in stats.ok)[ok // 2] * 1000 if ok else 0,
        "keys_per_sa_measured": confirmed / ok if ok else 0,
        "sas_before": before,
        "sas_after": after,
        "by_side": stats.by_side,
        "load": os.getloadavg(),
    }
    print(f"    {attempts} attempts in {elapsed:.1f} s: {ok} rekeys ({ok / elapsed:.2f}/s), "
          f"{len(stats.refused)} refused, {stats.timeouts} without answer; strongSwan's own retries: "
          f"{stats.retries_succeeded} succeeded, {stats.retries_failed} failed", flush=True)
    print("    by initiating side: " + "; ".join(
        f"{n}: {c['rekey']} rekeyed, {c['failed']} refused, {c['timeout']} unanswered" for n, c in sorted(stats.by_side.items())),
        flush=True)
    print(f"    rekey duration: median {res['median_ok_ms']:.1f} ms, longest {res['longest_ok_s'] * 1000:.0f} ms "
          f"(successful), {res['longest_s'] * 1000:.0f} ms (any attempt); QKD key IDs confirmed per rekey "
          f"{res['keys_per_sa_measured']:.2f}", flush=True)
    if args.mode == "run":
        bound = args.key_rate / args.key_bits / args.keys_per_sa
        steady_from = t_start + args.warmup
        steady = [t for t, _ in stats.ok if t >= steady_from]
        span = t_start + elapsed - steady_from
        steady_rate = len(steady) / span if span > 0 else 0
        buckets = []
        for i in range(int(elapsed // 10) + 1):
            lo = t_start + 10 * i
            hi = min(lo + 10, t_start + elapsed)
            if hi - lo >= 1:
                buckets.append(round(sum(1 for t, _ in stats.ok if lo <= t < hi) / (hi - lo), 2))
        ratio = steady_rate / bound if bound else 0
        res.update({"bound": bound, "steady_rate": steady_rate, "ratio": ratio, "per_10s": buckets,
                    "warmup_s": args.warmup})
        print(f"    key-rate bound: {args.key_rate:.0f} bit/s / {args.key_bits} bit / {args.keys_per_sa:g} key per SA "
              f"= {bound:.2f} SAs/s; demand ceiling {args.demand:.2f} attempts/s", flush=True)
        print(f"    achieved after {args.warmup:g} s warm-up: {steady_rate:.2f} SAs/s = {ratio:.3f} x the bound "
              f"(target 0.90-1.10: {'met' if 0.9 <= ratio <= 1.1 else 'MISSED'}); whole run {ok / elapsed:.2f}/s; "
              f"per 10 s: {buckets}", flush=True)
        lw = res["longest_s"]
        print(f"    longest attempt {lw:.2f} s (target <= kme.timeout {args.kme_timeout:g} s: "
              f"{'met' if lw <= args.kme_timeout else 'MISSED'}); refused {len(stats.refused)} + unanswered "
              f"{stats.timeouts} of {attempts} attempts", flush=True)
    lost = sum(max(b[0] - a[0], 0) + max(b[1] - a[1], 0) for b, a in zip(before, after))
    res["sas_lost"] = lost
    print(f"    SAs (IKE, CHILD) before {before} after {after}: {lost} lost", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
