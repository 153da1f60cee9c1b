"""MLflow peer of the registry benchmark (`beatlab bench registry`).

Writes the same metric points as the Rust side (runs x keys x steps, logged step by step with
every key, flushed in batches of `--batch` points, as beatlab's `Tracker` does) through
`MlflowClient.log_batch` into MLflow's SQLite tracking store. Each round uses a fresh store;
creating it (its schema migrations), the experiment and the runs is not timed, only the logging.
The points are counted back after each round so a store that dropped writes cannot look fast.
Talks the line protocol of `serve.py`.
"""

import argparse
import logging
import os
import shutil
import tempfile
import time

import serve


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--scratch", default=None, help="folder for the scratch stores")
    args = ap.parse_args()

    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    # mlflow sets its own log level on import; its schema-migration chatter goes to stderr.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    points = args.runs * args.keys * args.steps
    keys = [f"train/metric_{k}" for k in range(args.keys)]

    def log_all(client, run_ids):
        for run_id in run_ids:
            pending = []
            for step in range(args.steps):
                now_ms = int(time.time() * 1000)
                for k, key in enumerate(keys):
                    pending.append(Metric(key, float(step * args.keys + k) * 1e-3, now_ms, step))
                    if len(pending) >= args.batch:
                        client.log_batch(run_id, metrics=pending)
                        pending = []
            if pending:
                client.log_batch(run_id, metrics=pending)
        return points, {}

    def one_round():
        root = tempfile.mkdtemp(prefix="beatlab-bench-mlflow-", dir=args.scratch)
        try:
            client = MlflowClient(tracking_uri="sqlite:///" + os.path.join(root, "mlflow.db"))
            experiment = client.create_experiment(
                "bench", artifact_location=os.path.join(root, "artifacts")
            )
            run_ids = [client.create_run(experiment).info.run_id for _ in range(args.runs)]
            result = serve.timed(lambda: log_all(client, run_ids))
            result["stored"] = sum(
                len(client.get_metric_history(run_id, key)) for run_id in run_ids for key in keys
            )
            return result
        finally:
            shutil.rmtree(root, ignore_errors=True)

    serve.serve({"peer": "mlflow", "mlflow": mlflow.__version__, "points": points}, one_round)


if __name__ == "__main__":
    main()
