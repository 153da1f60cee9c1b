"""Peers of `beatlab bench delineate`: NeuroKit2's `ecg_delineate(method="dwt")` and the
`ecgdeli` package (a port of KIT's ECGdeli) on every lead of the LUDB records under ROOT.

Talks the line protocol of `serve.py`: the hello names the peer, its version and the record
count; each round reads and delineates every record (timed, as beatlab's side is) and reports,
per record id (`ludb/1`) and lead (`I`, `aVR`, ...), the detected points [p_on, p_off, qrs_on,
qrs_off, t_on, t_off], each a sorted list of sample indices at the record's rate. beatlab
scores these with its own scorer.

NeuroKit2 runs its usual pipeline per lead: ecg_clean, ecg_peaks, ecg_delineate(dwt) (its
R onsets/offsets are the QRS onsets/offsets). ecgdeli runs filter_ecg then annotate on the
12 leads together (its multi-lead reconciliation), the documented use.
"""

import argparse
import math
import os
import sys
import warnings

import numpy as np
import wfdb

import serve

STANDARD = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
BY_LOWER = {name.lower(): name for name in STANDARD}


def clean(values, n):
    out = []
    for v in values:
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isnan(f) or f < 0 or f >= n:
            continue
        out.append(int(f))
    return sorted(out)


def neurokit(signal, fs):
    import neurokit2 as nk

    n = signal.shape[0]
    leads = []
    for k in range(signal.shape[1]):
        x = signal[:, k]
        try:
            cleaned = nk.ecg_clean(x, sampling_rate=fs)
            _, peaks = nk.ecg_peaks(cleaned, sampling_rate=fs)
            _, w = nk.ecg_delineate(
                cleaned, peaks["ECG_R_Peaks"], sampling_rate=fs, method="dwt"
            )
            keys = ["ECG_P_Onsets", "ECG_P_Offsets", "ECG_R_Onsets", "ECG_R_Offsets",
                    "ECG_T_Onsets", "ECG_T_Offsets"]
            leads.append([clean(w.get(key, []), n) for key in keys])
        except Exception as e:  # a lead NeuroKit2 cannot delineate finds nothing
            print(f"neurokit2: lead {k}: {e}", file=sys.stderr)
            leads.append([[] for _ in range(6)])
    return leads


def ecgdeli_peer(signal, fs):
    import ecgdeli

    n = signal.shape[0]
    filtered = ecgdeli.filter_ecg(signal, fs)
    ann = ecgdeli.annotate(filtered, fs)
    leads = []
    for lead in ann.leads:
        cols = [lead.p_on, lead.p_off, lead.qrs_on, lead.qrs_off, lead.t_on, lead.t_off]
        leads.append([clean(np.asarray(c).tolist(), n) for c in cols])
    return leads


def version(peer):
    from importlib.metadata import version as v

    return v("neurokit2" if peer == "neurokit2" else "ecgdeli")


def delineate_all(root, records, delineate):
    out = {}
    for rec in records:
        r = wfdb.rdrecord(os.path.join(root, rec))
        leads = delineate(np.nan_to_num(r.p_signal), r.fs)
        out["ludb/" + os.path.basename(rec)] = {
            BY_LOWER.get(desc.lower(), desc): points for desc, points in zip(r.sig_name, leads)
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="a LUDB root (RECORDS, data/)")
    ap.add_argument("--peer", choices=["neurokit2", "ecgdeli"], required=True)
    ap.add_argument("--limit", type=int, default=0, help="only the first N records")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    with open(os.path.join(args.root, "RECORDS")) as f:
        records = [line.strip() for line in f if line.strip()]
    if args.limit:
        records = records[: args.limit]
    delineate = neurokit if args.peer == "neurokit2" else ecgdeli_peer
    # Untimed warm-up: imports, caches, the first record.
    delineate_all(args.root, records[:1], delineate)
    hello = {"peer": args.peer, "version": version(args.peer), "records": len(records)}

    def one_round():
        found = {}

        def work():
            found.update(delineate_all(args.root, records, delineate))
            return len(records), {}

        result = serve.timed(work)
        result["detections"] = found
        return result

    serve.serve(hello, one_round)


if __name__ == "__main__":
    main()
