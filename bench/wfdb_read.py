"""Python `wfdb` peer of the WFDB decoding benchmark (`beatlab bench wfdb`).

Reads the record list from `--records` (one header path per line, as the Rust side found
them), decodes every record with `wfdb.rdrecord(..., physical=True)` (millivolts, float64)
once untimed to warm the page cache, and says in its hello how many samples it decoded, how
many were invalid (NaN) and the sum of the valid ones, which the Rust side compares with its
own decoding. Each timed round decodes the list `--passes` times (decoding only). Talks the line protocol of
`serve.py`.
"""

import argparse

import numpy as np
import wfdb

import serve


def read_all(records):
    samples = invalid = 0
    total = 0.0
    for path in records:
        signal = wfdb.rdrecord(path, physical=True).p_signal
        finite = np.isfinite(signal)
        samples += signal.size
        invalid += int(signal.size - finite.sum())
        total += float(signal[finite].sum())
    return samples, invalid, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", required=True, help="file listing the .hea paths")
    ap.add_argument("--passes", type=int, default=1, help="passes over the list per round")
    args = ap.parse_args()
    records = []
    with open(args.records) as listing:
        for line in listing:
            line = line.strip()
            if line:
                records.append(line[: -len(".hea")] if line.endswith(".hea") else line)
    if not records:
        raise SystemExit(f"wfdb_read.py: no records listed in {args.records}")

    samples, invalid, total = read_all(records)

    def one_round():
        # Timed passes only decode, as the Rust side's do; the totals came from the first pass.
        for _ in range(args.passes):
            for path in records:
                wfdb.rdrecord(path, physical=True)
        return len(records) * args.passes, {}

    serve.serve(
        {
            "peer": "wfdb",
            "wfdb": wfdb.__version__,
            "records": len(records),
            "samples": samples,
            "invalid_samples": invalid,
            "sum_mv": total,
        },
        lambda: serve.timed(one_round),
    )


if __name__ == "__main__":
    main()
