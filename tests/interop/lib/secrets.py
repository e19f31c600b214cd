#!/usr/bin/env python3
"""Checks QKD keys against the secrets charon logs at level 4 (ike = 4, chd = 4).

charon prints a secret as `NN[IKE] <conn|n> key exchange secret => 64 bytes @ 0x...`
followed by hex-dump lines `NN[IKE] <conn|n>    0: AB CD ...` from the same thread NN.

  secrets.py dump LOG                     print "LABEL HEX" per logged secret
  secrets.py key-prefix JOURNAL KEY_ID LABEL LOG...
        the QKD key KEY_ID (from `qkd-kme-sim admin journal` JSON) must begin a secret
        logged under LABEL in every LOG; with SECRET_OFFSET=N in the environment, begin at
        byte N of it (a QKD round after others, e.g. ke2_qkd after ke1_mlkem768: the
        additional secrets are concatenated in order)
  secrets.py same LABEL LOG LOG           both logs hold the same list of LABEL secrets
"""
import base64
import json
import os
import re
import sys

HEADER = re.compile(
    r"(\d+)\[(IKE|CHD)\] (?:<[^>]*> )?"
    r"(key exchange secret|additional key exchange secret|Sk_d secret) => (\d+) bytes")
DUMP = re.compile(r"(\d+)\[(?:IKE|CHD)\] (?:<[^>]*> )?\s+\d+: ((?:[0-9A-F]{2} ?){1,16})")


def secrets(path):
    """[(label, bytes)] in log order; a dump's lines are matched by thread number."""
    found, open_dumps = [], {}
    with open(path, errors="replace") as log:
        for line in log:
            m = HEADER.search(line)
            if m:
                thread, _group, label, size = m.groups()
                entry = [label, int(size), bytearray()]
                found.append(entry)
                if int(size):
                    open_dumps[thread] = entry
                continue
            m = DUMP.search(line)
            if m and m.group(1) in open_dumps:
                entry = open_dumps[m.group(1)]
                entry[2] += bytes.fromhex(m.group(2).replace(" ", ""))
                if len(entry[2]) >= entry[1]:
                    del open_dumps[m.group(1)]
    return [(label, bytes(data)) for label, _size, data in found]


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "dump" and len(argv) == 3:
        for label, data in secrets(argv[2]):
            print(f"{label.replace(' ', '_')} {data.hex()}")
        return 0
    if cmd == "key-prefix" and len(argv) >= 6:
        journal, key_id, label, logs = argv[2], argv[3], argv[4], argv[5:]
        with open(journal) as f:
            entries = [e for e in json.load(f) if e["key_ID"] == key_id]
        if not entries:
            print(f"key ID {key_id} is not in the KME journal")
            return 1
        key = base64.b64decode(entries[0]["key"])
        offset = int(os.environ.get("SECRET_OFFSET", "0"))
        where = f" at byte {offset}" if offset else ""
        for log in logs:
            matching = [d for lbl, d in secrets(log) if lbl == label and d[offset:].startswith(key)]
            if not matching:
                print(f"{log}: no '{label}' has the {len(key)}-byte QKD key {key_id}{where}")
                return 1
            print(f"{log}: '{label}' ({len(matching[0])} bytes) has QKD key {key_id}{where or ' first'} "
                  f"({key[:4].hex()}...)")
        return 0
    if cmd == "same" and len(argv) == 5:
        label, a, b = argv[2], argv[3], argv[4]
        sa = [d for lbl, d in secrets(a) if lbl == label]
        sb = [d for lbl, d in secrets(b) if lbl == label]
        if not sa or sa != sb:
            print(f"'{label}' differs: {len(sa)} vs {len(sb)} secrets, equal: {sa == sb}")
            return 1
        print(f"both sides logged the same {len(sa)} '{label}' value(s)")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
