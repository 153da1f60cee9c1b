"""Writes WFDB records exercising every feature of beatlab's reader into a folder, reads each
back with the Python `wfdb` package (the independent reference), and writes what it read to
`reference.json` there. Used by crates/ecg/tests/wfdb_python.rs.

Formats python wfdb can write (16, 24, 32, 80, 212) are written with `wrsamp`; the others
(8, 61, 160, 310, 311), several samples per frame, skew, byte offsets and multi-segment master
headers are written byte by byte here per WFDB's signal(5) and header(5), and every such record
is checked to read back, through python wfdb, as the samples intended, so the packing here is
itself verified by the reference reader.

usage: python3 wfdb_cases.py OUT_DIR
"""

import json
import os
import sys

import numpy as np
import wfdb

OUT = sys.argv[1]
rng = np.random.default_rng(20261207)
reference = {"records": {}, "annotations": {}}
INVALID = {"8": -(2**31), "16": -32768, "61": -32768, "160": -32768, "24": -(2**23),
           "32": -(2**31), "80": -128, "212": -2048, "310": -512, "311": -512}


def walk(n, lo, hi, step=40):
    """A random walk kept inside [lo, hi] (ECG-like digital samples)."""
    x = np.cumsum(rng.integers(-step, step + 1, n)) + (lo + hi) // 2
    return np.clip(x, lo + 1, hi).astype(np.int64)


def checksum(values):
    return int(np.sum(np.asarray(values, dtype=np.int64)) % 65536)


def signal_line(file, fmt, gain, baseline, units, init, values, name, adc_res=12, extra=""):
    return (f"{file} {fmt}{extra} {gain}({baseline})/{units} {adc_res} 0 {init} "
            f"{checksum(values)} 0 {name}")


def store(name, fs, leads, digital=None, expanded_physical=None, physical=None):
    """Reads record `name` with python wfdb and keeps what it returned."""
    path = os.path.join(OUT, name)
    entry = {"fs": fs, "leads": leads}
    # With one sample per frame the plain read is used: python wfdb 4.3.1's expanded read fails
    # on format 61 (its big-endian dtype name trips convert_dtype).
    header = wfdb.rdheader(path)
    single = header.n_seg is None if hasattr(header, "n_seg") else True
    one_per_frame = single and all(k in (None, 1) for k in header.samps_per_frame)
    if digital is not None:
        rec = wfdb.rdrecord(path, physical=False, smooth_frames=one_per_frame)
        if one_per_frame:
            got = [list(map(int, rec.d_signal[:, i])) for i in range(rec.n_sig)]
        else:
            got = [list(map(int, s)) for s in rec.e_d_signal]
        want = [list(map(int, s)) for s in digital]
        assert got == want, f"{name}: python wfdb reads other samples than were written"
        entry["digital"] = got
    if single:
        rec = wfdb.rdrecord(path, physical=True, smooth_frames=False)
        expanded = [np.asarray(s, dtype=np.float64) for s in rec.e_p_signal]
        spfs = rec.samps_per_frame
    else:
        # Multi-segment: python joins the segments in physical units (m2s).
        rec = wfdb.rdrecord(path, physical=True)
        expanded = [rec.p_signal[:, i].astype(np.float64) for i in range(rec.n_sig)]
        spfs = [1] * rec.n_sig
        entry["leads"] = list(rec.sig_name)
    # beatlab reads in millivolts; python wfdb in the header's units.
    to_mv = {"mV": 1.0, "uV": 1e-3, "V": 1e3}
    expanded = [s * to_mv[u] for s, u in zip(expanded, rec.units)]
    # The record at its frame rate: the mean of each frame's valid samples.
    frame_means = []
    for s, spf in zip(expanded, spfs):
        frames = s.reshape(-1, spf)
        valid = ~np.isnan(frames)
        sums = np.where(valid, frames, 0).sum(axis=1)
        counts = valid.sum(axis=1)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        frame_means.append([None if np.isnan(v) else float(v) for v in means])
    entry["physical"] = frame_means
    reference["records"][name] = entry


def negate_gains(name, which):
    """wrsamp refuses negative gains (which WFDB allows): flip them in the written header."""
    path = os.path.join(OUT, name + ".hea")
    with open(path) as fh:
        lines = fh.read().splitlines()
    for i, negate in enumerate(which):
        if negate:
            parts = lines[1 + i].split(" ")
            parts[2] = "-" + parts[2]
            lines[1 + i] = " ".join(parts)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def wrsamp_case(name, fmt, n, nsig, gains, units, baselines):
    lo, hi = {"16": (-32768, 32767), "24": (-(2**23), 2**23 - 1), "32": (-(2**31), 2**31 - 1),
              "80": (-128, 127), "212": (-2048, 2047)}[fmt]
    digital = np.stack([walk(n, lo // 2, hi // 2, step=max(1, (hi - lo) // 400))
                        for _ in range(nsig)], axis=1)
    # One invalid sample per signal, which must come back as NaN.
    digital[n // 2, :] = INVALID[fmt]
    leads = ["I", "II", "V1", "V2"][:nsig]
    wfdb.wrsamp(name, fs=500, units=units[:nsig], sig_name=leads, d_signal=digital,
                fmt=[fmt] * nsig, adc_gain=[abs(g) for g in gains[:nsig]],
                baseline=baselines[:nsig], write_dir=OUT)
    negate_gains(name, [g < 0 for g in gains[:nsig]])
    store(name, 500, leads, digital=[digital[:, i] for i in range(nsig)])


# Formats python wfdb writes, with negative gains, baselines and units other than mV.
wrsamp_case("w16", "16", 1000, 3, [200.0, -1000.0, 12.5], ["mV", "uV", "mV"], [0, 25, -7])
wrsamp_case("w24", "24", 777, 2, [3000.0, 1.0e4], ["mV", "mV"], [5, 0])
wrsamp_case("w32", "32", 500, 2, [1.0e6, -2.0e5], ["mV", "V"], [0, 100])
wrsamp_case("w80", "80", 640, 2, [10.0, 20.0], ["mV", "mV"], [0, -3])
wrsamp_case("w212", "212", 999, 3, [200.0, 400.0, -200.0], ["mV", "mV", "mV"], [0, 10, 0])


def pack(fmt, flat):
    """Samples in file order -> bytes, per signal(5)."""
    flat = [int(v) for v in flat]
    out = bytearray()
    if fmt == "8":
        for v in flat:
            out += int(v).to_bytes(1, "little", signed=True)
    elif fmt == "61":
        for v in flat:
            out += int(v).to_bytes(2, "big", signed=True)
    elif fmt == "160":
        for v in flat:
            out += (v + 32768).to_bytes(2, "little")
    elif fmt == "16":
        for v in flat:
            out += int(v).to_bytes(2, "little", signed=True)
    elif fmt == "212":
        padded = flat + [0] * (len(flat) % 2)
        for a, b in zip(padded[0::2], padded[1::2]):
            a, b = a & 0xFFF, b & 0xFFF
            out += bytes([a & 0xFF, (a >> 8) | ((b >> 8) << 4), b & 0xFF])
    elif fmt in ("310", "311"):
        padded = flat + [0] * (-len(flat) % 3)
        for a, b, c in zip(padded[0::3], padded[1::3], padded[2::3]):
            a, b, c = a & 0x3FF, b & 0x3FF, c & 0x3FF
            if fmt == "311":
                out += (a | (b << 10) | (c << 20)).to_bytes(4, "little")
            else:
                w0 = (a << 1) | ((c & 0x1F) << 11)
                w1 = (b << 1) | ((c >> 5) << 11)
                out += w0.to_bytes(2, "little") + w1.to_bytes(2, "little")
    else:
        raise ValueError(fmt)
    return bytes(out)


def own_case(name, fmt, signals, spf=None, skew=None, prolog=0, gains=None):
    """Writes a record byte by byte: `signals` are the intended samples of each signal
    (len n*spf), interleaved frame by frame; `skew` delays a signal in the file."""
    nsig = len(signals)
    spf = spf or [1] * nsig
    skew = skew or [0] * nsig
    gains = gains or [200.0] * nsig
    n = len(signals[0]) // spf[0]
    # Stored samples per signal: with skew s, frame f holds sample f - s (0 before sample 0).
    stored, intended = [], []
    for sig, k, s in zip(signals, spf, skew):
        sig = np.asarray(sig, dtype=np.int64)
        stored.append(np.concatenate([np.zeros(s * k, dtype=np.int64), sig[: (n - s) * k]]))
        intended.append(np.concatenate([sig[: (n - s) * k],
                                        np.full(s * k, INVALID[fmt], dtype=np.int64)]))
    values = stored
    if fmt == "8":
        # Differences, the first from the initial value (the first sample).
        values = [np.diff(np.concatenate([[v[0]], v])) for v in stored]
        assert all(np.abs(v).max() <= 127 for v in values)
    flat = []
    for f in range(n):
        for v, k in zip(values, spf):
            flat.extend(v[f * k:(f + 1) * k])
    data = bytes(prolog) + pack(fmt, flat)
    with open(os.path.join(OUT, name + ".dat"), "wb") as fh:
        fh.write(data)
    leads = ["I", "II", "III", "aVR"][:nsig]
    lines = [f"{name} {nsig} 360 {n}"]
    for i in range(nsig):
        extra = (f"x{spf[i]}" if spf[i] != 1 else "") + (f":{skew[i]}" if skew[i] else "") + \
                (f"+{prolog}" if prolog else "")
        init = int(stored[i][0]) if fmt == "8" else int(intended[i][0])
        lines.append(signal_line(name + ".dat", fmt, gains[i], 0, "mV", init, intended[i],
                                 leads[i], extra=extra))
    with open(os.path.join(OUT, name + ".hea"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    store(name, 360, leads, digital=intended)


own_case("f8", "8", [walk(800, -3000, 3000, 60), walk(800, -500, 500, 20)])
own_case("f61", "61", [walk(701, -30000, 30000, 300) for _ in range(2)])
own_case("f160", "160", [walk(650, -30000, 30000, 300) for _ in range(3)])
own_case("f310", "310", [walk(500, -511, 511, 10) for _ in range(3)])
own_case("f310odd", "310", [walk(502, -511, 511, 10)])
own_case("f311", "311", [walk(701, -511, 511, 10) for _ in range(2)])
own_case("f311odd", "311", [walk(500, -511, 511, 10)])
# Several samples per frame (multi-frequency): 2, 1 and 4 samples per frame in one file.
own_case("multifreq", "16", [walk(1200, -2000, 2000), walk(600, -2000, 2000),
                             walk(2400, -2000, 2000)], spf=[2, 1, 4])
own_case("multifreq212", "212", [walk(600, -2000, 2000), walk(900, -2000, 2000)], spf=[2, 3])
# Skew on the second and third signals, and byte offsets.
# (python wfdb 4.3.1 reads skews only when every non-zero skew of a file is the same.)
own_case("skew", "16", [walk(400, -2000, 2000) for _ in range(3)], skew=[0, 5, 5])
own_case("skew212", "212", [walk(401, -2000, 2000) for _ in range(2)], skew=[2, 0])
own_case("offset", "16", [walk(300, -2000, 2000) for _ in range(2)], prolog=10)
own_case("offset212", "212", [walk(301, -2000, 2000)], prolog=6, gains=[-100.0])


def segment(name, n, leads, gains):
    digital = np.stack([walk(n, -4000, 4000) for _ in leads], axis=1)
    wfdb.wrsamp(name, fs=250, units=["mV"] * len(leads), sig_name=leads, d_signal=digital,
                fmt=["16"] * len(leads), adc_gain=[abs(g) for g in gains],
                baseline=[0] * len(leads), write_dir=OUT)
    negate_gains(name, [g < 0 for g in gains])


# Fixed layout: segments with the same two signals (different gains, one negative). python wfdb
# joins no gaps in a fixed layout; the variable layout below has one.
segment("fixa", 300, ["I", "II"], [200.0, 100.0])
segment("fixb", 200, ["I", "II"], [400.0, -50.0])
with open(os.path.join(OUT, "fixed.hea"), "w") as fh:
    fh.write("fixed/2 2 250 500\nfixa 300\nfixb 200\n")
store("fixed", 250, ["I", "II"])

# Variable layout: a layout segment naming three signals; segments hold subsets of them.
with open(os.path.join(OUT, "varlayout.hea"), "w") as fh:
    fh.write("varlayout 3 250 0\n~ 0 200/mV 16 0 0 0 0 I\n~ 0 200/mV 16 0 0 0 0 II\n"
             "~ 0 200/mV 16 0 0 0 0 V1\n")
segment("vara", 250, ["II", "I"], [200.0, 300.0])
segment("varb", 150, ["V1"], [1000.0])
with open(os.path.join(OUT, "variable.hea"), "w") as fh:
    fh.write("variable/4 3 250 500\nvarlayout 0\nvara 250\n~ 100\nvarb 150\n")
store("variable", 250, ["I", "II", "V1"])

# MIT annotations: beats, rhythm changes with aux text, a gap longer than 1023 samples (SKIP),
# subtypes, channels and numbers.
samples = np.array([10, 300, 650, 1000, 5000, 5300, 70000, 70400, 70800])
symbols = ["N", "N", "V", "+", "A", "N", "N", "~", "N"]
aux = ["", "", "", "(AFIB", "", "", "", "", ""]
wfdb.wrann("ann", "atr", samples, symbols, subtype=np.array([0, 0, 1, 0, 0, 2, 0, 0, 0]),
           chan=np.array([0, 0, 0, 0, 1, 1, 0, 0, 0]), num=np.array([0, 0, 0, 0, 0, 0, 3, 3, 0]),
           aux_note=aux, fs=360, write_dir=OUT)
ann = wfdb.rdann(os.path.join(OUT, "ann"), "atr")
reference["annotations"]["ann.atr"] = {
    "sample": [int(v) for v in ann.sample], "symbol": list(ann.symbol),
    "subtype": [int(v) for v in ann.subtype], "chan": [int(v) for v in ann.chan],
    "num": [int(v) for v in ann.num], "aux": list(ann.aux_note), "fs": 360}

with open(os.path.join(OUT, "reference.json"), "w") as fh:
    json.dump(reference, fh)
print(f"{len(reference['records'])} records, {len(reference['annotations'])} annotation files")
