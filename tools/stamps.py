#!/usr/bin/env python3
"""Per-kernel timeline of a CUDA decode chain from the kernels' global-timer stamps.

Build the kernels with stamps and dump them when the GPU handle closes:

    BITNET_NVRTC_OPTIONS=-DBITNET_STAMPS BITNET_CUDA_STAMPS=stamps.bin \
        bitnet bench --device cuda --synthetic 2b4t -p 128 -n 16 -r 1
    python3 tools/stamps.py stamps.bin

The file (device.rs, `impl Drop for Gpu`) holds the eight per-kind tickets (u32), then the
rings of common.cuh: [kind][STAMP_CAP][14] u64 = header (ticket | block << 32 | grid << 48), SM,
global-timer stamps at points 0 start, 1 after the PDL wait, 2 kernel-specific, 3 end, 4..11
kernel-specific (0 = not stamped). Kinds: 0 fused norm + GEMV (2 norm done, 7 its first block
reduction, 4 / 5 first / second tile stored by sub 0, 6 sub 0 done; inside sub 0's first tile
11 scale and Σq read, 8 first batch multiplied, 9 past the partial sums' barrier, 10 rows
stored), 1 attention (2 partial
done), 2 lm_head (not yet run with stamps on a GPU), 3 greedy sampling, 4 embedding, 5
rms_norm_q, 6 GEMV. Thread 0 of a block stamps; its ticket is an atomic taken at the start,
whose latency delays that block's later stamps when it starts after its predecessor has
finished (~3% slower decode with stamps).
The last complete decode steps (an embedding to the next) are cut into kernels, and each
kernel's place in a layer (q/k/v, attention, o, gate/up, down) is summarized over layers and
steps, in µs: `crit` is the time from the previous kernel's last block end to this one's (its
share of the critical path), `rel` from the previous kernel's last end to this kernel's first
block past its PDL wait, `late` how many blocks started after the previous kernel ended, and
`p1-p0`, `p2-p1`, `p3-p2` block phases (median / max over blocks).
"""
import statistics
import struct
import sys
from collections import defaultdict

KINDS = 8
CAP = 131072
WORDS = 14
POINTS = WORDS - 2
NAMES = ["gemv_norm", "attention", "lm_head", "greedy", "embed", "rms_norm_q", "gemv", "k7"]


def load(path):
    raw = open(path, "rb").read()
    tickets = struct.unpack_from("<8I", raw, 0)
    words = memoryview(raw)[32:].cast("Q")
    assert len(words) == KINDS * CAP * WORDS, len(words)
    return tickets, words


def instances(kind, total, words):
    """The kind's complete kernel launches still in its ring, oldest first: lists of blocks
    (block, sm, [p0..p3])."""
    recs = {}
    lo = max(0, total - CAP)
    for t in range(lo, total):
        at = (kind * CAP + t % CAP) * WORDS
        h = words[at]
        if h & 0xFFFFFFFF != t:
            continue
        blk, grid = (h >> 32) & 0xFFFF, (h >> 48) & 0xFFFF
        recs[t] = (blk, grid, words[at + 1], [words[at + 2 + p] for p in range(POINTS)])
    out = []
    t = total - 1
    while t >= lo and t in recs:
        grid = recs[t][1] or 65536
        ts = range(t - grid + 1, t + 1)
        if ts.start < lo or any(x not in recs for x in ts):
            break
        blocks = [recs[x] for x in ts]
        if len({b[0] for b in blocks}) != grid:
            print(f"{NAMES[kind]}: launch ending at ticket {t} has repeated blocks; stopping")
            break
        out.append((kind, grid, [(b[0], b[2], b[3]) for b in blocks]))
        t -= grid
    return out[::-1]


def summary(kind, grid, blocks):
    p = [[b[2][i] for b in blocks] for i in range(4)]
    return {
        "kind": kind,
        "grid": grid,
        "blocks": blocks,
        "s0": min(p[0]),
        "w0": min(x for x in p[1] if x) if any(p[1]) else 0,
        "end": max(p[3]) if any(p[3]) else max(max(x) for x in p),
    }


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    tickets, words = load(sys.argv[1])
    steps_wanted = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    launches = []
    for k in range(KINDS):
        for kind, grid, blocks in instances(k, tickets[k], words):
            launches.append(summary(kind, grid, blocks))
    # Launches of every kind are in the file only from the latest of their oldest ones on.
    first = max(min(l["s0"] for l in launches if l["kind"] == k) for k in range(KINDS)
                if any(l["kind"] == k for l in launches))
    launches = sorted((l for l in launches if l["s0"] >= first), key=lambda l: l["s0"])
    stamps = sorted({x for l in launches for b in l["blocks"] for x in b[2] if x})
    diffs = [b - a for a, b in zip(stamps, stamps[1:])]
    print(f"launches {len(launches)}; {len(stamps)} distinct stamps, smallest step "
          f"{min(diffs) if diffs else '?'} ns, {sum(x % 32 == 0 for x in stamps)} multiples of 32")
    # Decode steps: from one embedding to the next.
    embeds = [i for i, l in enumerate(launches) if l["kind"] == 4]
    seqs = [launches[a:b] for a, b in zip(embeds, embeds[1:])][-steps_wanted:]
    agg = defaultdict(lambda: defaultdict(list))
    for seq in seqs:
        kinds = "".join("GA"[l["kind"]] if l["kind"] < 2 else "." for l in seq)
        print(f"step: {len(seq)} launches, {(seq[-1]['end'] - seq[0]['s0']) / 1000:.1f} µs "
              f"(embed start to last end), kinds {kinds[:12]}..{kinds[-8:]}")
        after_attn = None  # projections since the last attention (None: before it)
        for i, l in enumerate(seq):
            prev = seq[i - 1] if i else None
            if l["kind"] == 0 and after_attn is not None and after_attn < 3:
                name, after_attn = ("o", "gu", "down")[after_attn], after_attn + 1
            elif l["kind"] == 0:
                name, after_attn = "qkv", None
            elif l["kind"] == 1:
                name, after_attn = "attn", 0
            else:
                name = NAMES[l["kind"]]
            a = agg[name]
            if prev is None:
                continue
            pend = prev["end"]
            a["crit"].append(l["end"] - pend)
            if l["w0"]:
                a["rel"].append(l["w0"] - pend)
            a["launch"].append(l["s0"] - prev["s0"])
            a["late"].append(sum(1 for b in l["blocks"] if b[2][0] > pend))
            a["grid"].append(l["grid"])
            for ph, (x, y) in (("p1-p0", (0, 1)), ("p2-p1", (1, 2)), ("p3-p2", (2, 3)),
                               ("p3-p1", (1, 3)), ("p7-p1", (1, 7)), ("p2-p7", (7, 2)),
                               ("p4-p2", (2, 4)), ("p5-p4", (4, 5)), ("p6-p5", (5, 6)),
                               ("p6-p4", (4, 6)), ("p3-p6", (6, 3)), ("p11-p2", (2, 11)),
                               ("p8-p11", (11, 8)), ("p9-p8", (8, 9)), ("p10-p9", (9, 10)),
                               ("p4-p10", (10, 4))):
                ds = [b[2][y] - b[2][x] for b in l["blocks"] if b[2][x] and b[2][y]]
                if ds:
                    a[ph + " med"].append(med(ds))
                    a[ph + " max"].append(max(ds))
            # Blocks that started before / after the previous kernel's end: their end.
            early = [b[2][3] - pend for b in l["blocks"] if b[2][0] <= pend and b[2][3]]
            late = [b[2][3] - pend for b in l["blocks"] if b[2][0] > pend and b[2][3]]
            if early:
                a["end early max"].append(max(early))
            if late:
                a["end late max"].append(max(late))
                a["start late max"].append(max(b[2][0] - pend for b in l["blocks"] if b[2][0] > pend))
            # The end of the slowest block in each third of the block indices.
            g = l["grid"]
            for j, part in enumerate(("end b<1/3", "end b<2/3", "end b>2/3")):
                ends = [b[2][3] - pend for b in l["blocks"] if j * g <= 3 * b[0] < (j + 1) * g
                        and b[2][3]]
                if ends:
                    a[part].append(max(ends))
    cols = ["grid", "crit", "rel", "launch", "late", "p1-p0 med", "p2-p1 med", "p2-p1 max",
            "p3-p2 med", "p3-p2 max", "p3-p1 max", "end early max", "end late max",
            "start late max", "end b<1/3", "end b<2/3", "end b>2/3"]
    print("\nmedians over layers and steps (µs; grid and late in blocks)")
    print("| kernel | n | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 2) + "|")
    for name, a in agg.items():
        row = []
        for c in cols:
            v = med(a[c]) if a[c] else float("nan")
            row.append(f"{v:.0f}" if c in ("grid", "late") else f"{v / 1000:.2f}")
        print(f"| {name} | {len(a['crit'])} | " + " | ".join(row) + " |")
    cols = ["p7-p1 med", "p2-p7 med", "p4-p2 med", "p4-p2 max", "p5-p4 med", "p5-p4 max",
            "p6-p5 med", "p6-p4 med", "p3-p6 med", "p3-p6 max", "p11-p2 med", "p8-p11 med",
            "p9-p8 med", "p10-p9 med", "p4-p10 med"]
    print("\nprojection phases (µs): 7 first norm sum, 2 norm done, 4 / 5 first / second tile"
          " stored by sub 0, 6 sub 0 done, 3 block done; in the first tile 11 scale and Σq read,"
          " 8 first batch multiplied, 9 past the partial sums' barrier, 10 rows stored")
    print("| kernel | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 1) + "|")
    for name, a in agg.items():
        if name not in ("qkv", "o", "gu", "down"):
            continue
        row = [f"{med(a[c]) / 1000:.2f}" if a[c] else "-" for c in cols]
        print(f"| {name} | " + " | ".join(row) + " |")
    total = [seq[-1]["end"] - seq[0]["s0"] for seq in seqs]
    print(f"\nstep time median {med(total) / 1000:.1f} µs over {len(seqs)} steps")


if __name__ == "__main__":
    main()
