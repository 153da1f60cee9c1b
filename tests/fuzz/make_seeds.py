#!/usr/bin/env python3
"""Writes the fuzz harness's seed corpus (tests/fuzz/seeds/): small valid inputs of every reader,
so that mutations start from files that parse. Run from the repository root; the LUDB and PTB-XL
seeds are cut from the shared data set (BEATLAB_ECG_DATA, default ../shared/data/ecg)."""

import csv
import io
import os
import struct
import sys

ROOT = "tests/fuzz/seeds"
DATA = os.environ.get("BEATLAB_ECG_DATA", "../shared/data/ecg")


def put(path, data):
    path = os.path.join(ROOT, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def signals(nsig, n):
    return [[((i * 37 + s * 101) % 400) - 200 for i in range(n)] for s in range(nsig)]


def checksum(xs):
    c = sum(xs) & 0xFFFF
    return c - 0x10000 if c >= 0x8000 else c


def header(name, fmt_field, sig, fs=250, extra=""):
    lines = [f"{name} {len(sig)} {fs} {len(sig[0])}"]
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    for s, xs in enumerate(sig):
        lines.append(f"{fmt_field} 200.0(0)/mV 12 0 {xs[0]} {checksum(xs)} 0 {leads[s]}")
    return "\n".join(lines) + "\n" + extra


def wfdb16():
    sig = signals(2, 40)
    data = b"".join(struct.pack("<h", sig[s][i]) for i in range(40) for s in range(2))
    put("wfdb/f16/rec.hea", header("rec", "rec.dat 16", sig, extra="# Age: 51\n# Sex: F\n"))
    put("wfdb/f16/rec.dat", data)


def wfdb212():
    sig = signals(2, 40)
    out = bytearray()
    for i in range(40):
        a, b = sig[0][i] & 0xFFF, sig[1][i] & 0xFFF
        out += bytes([a & 0xFF, ((a >> 8) & 0x0F) | ((b >> 4) & 0xF0), b & 0xFF])
    put("wfdb/f212/rec.hea", header("rec", "rec.dat 212", sig))
    put("wfdb/f212/rec.dat", bytes(out))


def wfdb80_frames():
    # format 80, two samples per frame on the first signal, a byte offset before the first frame
    n = 20
    s0 = [((i * 13) % 100) - 50 for i in range(2 * n)]
    s1 = [((i * 7) % 60) - 30 for i in range(n)]
    out = bytearray(b"\x00\x00")
    for i in range(n):
        out += bytes([(s0[2 * i] + 128) & 0xFF, (s0[2 * i + 1] + 128) & 0xFF, (s1[i] + 128) & 0xFF])
    text = (
        f"rec 2 100 {n}\n"
        f"rec.dat 80x2+2 100(0)/mV 8 0 {s0[0]} {checksum(s0)} 0 I\n"
        f"rec.dat 80+2 100(0)/mV 8 0 {s1[0]} {checksum(s1)} 0 II\n"
    )
    put("wfdb/f80/rec.hea", text)
    put("wfdb/f80/rec.dat", bytes(out))


def mat():
    sig = signals(12, 20)
    name = b"val\x00"
    hdr = struct.pack("<5i", 30, 12, 20, 0, len(name)) + name
    data = b"".join(struct.pack("<h", sig[s][i]) for i in range(20) for s in range(12))
    lines = ["rec 12 500 20"]
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    for s in range(12):
        xs = sig[s]
        lines.append(f"rec.mat 16x1+24 1000.0(0)/mV 16 0 {xs[0]} {checksum(xs)} 0 {leads[s]}")
    lines += ["# Age: 78", "# Sex: Male", "# Dx: 67741000119109,426177001"]
    put("mat/rec.hea", "\n".join(lines) + "\n")
    put("mat/rec.mat", hdr + data)


def annotation():
    for lead in ["i", "v1"]:
        with open(os.path.join(DATA, "ludb/data", f"1.{lead}"), "rb") as f:
            put(f"annotation/1.{lead}", f.read())


def first_rows(path, n):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows[: n + 1])
    return buf.getvalue(), rows[1 : n + 1]


def ludb():
    text, _ = first_rows(os.path.join(DATA, "ludb/ludb.csv"), 3)
    put("ludb/ludb.csv", text)


def ptbxl():
    text, rows = first_rows(os.path.join(DATA, "ptbxl_mini/ptbxl_database.csv"), 3)
    put("ptbxl/ptbxl_database.csv", text)
    codes = set()
    for row in rows:
        codes |= {c.split("'")[1] for c in row[11].strip("{}").split(",") if "'" in c}
    with open(os.path.join(DATA, "ptbxl_mini/scp_statements.csv"), newline="") as f:
        stmts = list(csv.reader(f))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([stmts[0]] + [r for r in stmts[1:] if r[0] in codes])
    put("ptbxl/scp_statements.csv", buf.getvalue())


ITEMS = [
    {"type": "DiagnosisClosedQA", "question": "Which rhythm? A: Sinus rhythm; B: Atrial fibrillation",
     "answer": "A: Sinus rhythm", "filename": ["ptbxl/00001"], "label": ["signal"], "id": "q1",
     "options": ["Sinus rhythm", "Atrial fibrillation"], "correct_option": "A", "split": "train",
     "record_ids": ["00001"], "patient_ids": ["15709"], "dimension": "rhythm"},
    {"type": "WaveformOpenQA", "question": "What is the QRS duration?", "answer": "About 96 ms.",
     "filename": ["ludb/1", "ludb/2"], "label": ["signal", "img"], "split": "test"},
    {"type": "SignalPrediction", "question": "Continue lead II.", "answer": "[0.1, 0.2]",
     "filename": "ludb/3", "label": "signal",
     "prediction": {"input_start_s": 0.0, "input_s": 2.5, "horizon_s": 0.5}},
    {"type": "ReportGeneration", "question": "Write the report.", "answer": "Sinusrhythmus. Normales EKG.",
     "filename": ["ptbxl/00002"], "label": ["img"], "extra": {"kept": False}},
]


def instruct():
    import json
    put("instruct/jsonl/items.jsonl", "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in ITEMS) + "\n")
    put("instruct/array/items.jsonl", json.dumps(ITEMS, ensure_ascii=False, indent=1) + "\n")


def tokenizer():
    # A WordLevel tokenizer with a normaliser, padding and truncation: parts of the format the
    # trained byte-level BPE seed (made by the harness) does not have.
    import json
    vocab = {"[UNK]": 0, "[PAD]": 1, "sinus": 2, "rhythm": 3, "qrs": 4, "96": 5, "ms": 6, ".": 7}
    put("tokenizer/wordlevel/tokenizer.json", json.dumps({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 16, "strategy": "LongestFirst", "stride": 2},
        "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": 4,
                    "pad_id": 1, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [{"id": 1, "content": "[PAD]", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }, indent=1) + "\n")


if __name__ == "__main__":
    if not os.path.isdir(DATA):
        sys.exit(f"no data set at {DATA}: set BEATLAB_ECG_DATA")
    for make in [wfdb16, wfdb212, wfdb80_frames, mat, annotation, ludb, ptbxl, instruct, tokenizer]:
        make()
