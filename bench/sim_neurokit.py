"""NeuroKit2 peer of the ECG simulator benchmark (`beatlab bench sim`).

Simulates `--records` 12-lead records with `nk.ecg_simulate(duration, sampling_rate,
method="multileads")` (ECGSYN's dynamical model integrated once per lead; normal sinus rhythm
only; its default Laplace noise), record `i` with `random_state=seed + i`. One untimed pass
first, which says in the hello how many records it made, how many leads and samples per record
they have and the lead names, which the Rust side compares with its own simulator's output.
Each round repeats the pass `--passes` times, or, with `--min-seconds`, as many times as the
untimed pass says a round of that length needs. Talks the line protocol of `serve.py`.
"""

import argparse
import math
import time

import neurokit2 as nk

import serve


def simulate_all(records, seed, duration, sampling_rate):
    """The records' shapes and lead names, as lists (one entry per record)."""
    leads, samples, names = [], [], []
    for i in range(records):
        ecg = nk.ecg_simulate(
            duration=duration,
            sampling_rate=sampling_rate,
            method="multileads",
            random_state=seed + i,
        )
        samples.append(int(ecg.shape[0]))
        leads.append(int(ecg.shape[1]))
        names.append([str(c) for c in ecg.columns])
    return leads, samples, names


def uniform(values):
    """The single value every record shares, or None when they differ (a mismatch)."""
    return values[0] if values and all(v == values[0] for v in values) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10, help="records per pass")
    ap.add_argument("--seed", type=int, default=0, help="random_state of the first record")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per record")
    ap.add_argument("--sampling-rate", type=int, default=500, help="Hz")
    ap.add_argument("--passes", type=int, default=1, help="passes over the records per round")
    ap.add_argument(
        "--min-seconds",
        type=float,
        default=0.0,
        help="at least this long per round: raises --passes from the untimed pass's time",
    )
    args = ap.parse_args()
    if args.records < 1:
        raise SystemExit("sim_neurokit.py: --records must be at least 1")

    started = time.perf_counter()
    leads, samples, names = simulate_all(args.records, args.seed, args.duration, args.sampling_rate)
    warm = time.perf_counter() - started
    passes = max(args.passes, math.ceil(args.min_seconds / max(warm, 1e-3)))

    def one_round():
        for _ in range(passes):
            simulate_all(args.records, args.seed, args.duration, args.sampling_rate)
        return args.records * passes, {}

    serve.serve(
        {
            "peer": "neurokit2",
            "neurokit2": nk.__version__,
            "records": len(samples),
            "leads": uniform(leads),
            "samples_per_record": uniform(samples),
            "lead_names": uniform(names),
            "passes": passes,
        },
        lambda: serve.timed(one_round),
    )


if __name__ == "__main__":
    main()
