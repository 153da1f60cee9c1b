"""MLflow peer of the registry benchmark (`beatlab bench registry`).

Writes the same metric points as the Rust side (runs x keys x steps, logged step by step with
every key, flushed in batches of `--batch` points, as beatlab's `Tracker` does) through
`MlflowClient.log_batch` into MLflow's SQLite tracking store, or with `--postgres SERVER` its
SQLAlchemy store on that PostgreSQL server (the one beatlab's side uses). Each round uses a fresh
store (a new file, or a database made on the server and dropped after the round); creating it
(its schema migrations), the experiment and the runs is not timed, only the logging.
The points are counted back after each round so a store that dropped writes cannot look fast.
Talks the line protocol of `serve.py`.
"""

import argparse
import logging
import os
import shutil
import tempfile
import time
import urllib.parse

import serve


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--scratch", default=None, help="folder for the scratch stores")
    ap.add_argument(
        "--postgres",
        default=None,
        help="postgres://USER@HOST:PORT/DB: make each round's store a fresh database there",
    )
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

    rounds = iter(range(1 << 30))

    def one_round():
        root = tempfile.mkdtemp(prefix="beatlab-bench-mlflow-", dir=args.scratch)
        database = None
        try:
            if args.postgres:
                database = ScratchDatabase(args.postgres, next(rounds))
                tracking_uri = database.uri
            else:
                tracking_uri = "sqlite:///" + os.path.join(root, "mlflow.db")
            client = MlflowClient(tracking_uri=tracking_uri)
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
            if database is not None:
                database.drop()
            shutil.rmtree(root, ignore_errors=True)

    serve.serve({"peer": "mlflow", "mlflow": mlflow.__version__, "points": points}, one_round)


class ScratchDatabase:
    """A database made on a PostgreSQL server for one round; `drop` removes it."""

    def __init__(self, server, round_index):
        import psycopg2  # MLflow's PostgreSQL store runs on it (bench/requirements.txt)

        self._psycopg2 = psycopg2
        url = urllib.parse.urlsplit(server)
        self._server = server
        self.name = f"mlflow_bench_{os.getpid()}_{round_index}_{time.time_ns() % 10**9}"
        self._admin(f"CREATE DATABASE {self.name}")
        # Named: newer SQLAlchemy defaults `postgresql://` to psycopg 3, which is not installed.
        base = url._replace(scheme="postgresql+psycopg2", path="/" + self.name)
        self.uri = urllib.parse.urlunsplit(base)

    def _admin(self, statement):
        conn = self._psycopg2.connect(self._server)
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def drop(self):
        # MLflow's SQLAlchemy engine keeps pooled connections; FORCE ends them.
        self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


if __name__ == "__main__":
    main()
