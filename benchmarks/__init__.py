"""Benchmarks: scripts that measure the pipeline, one module per subject, run from the repo root.

    python -m benchmarks.train overhead --epochs 40 --repeats 30 --threads 2 --pairs-only
    python -m benchmarks.compress --seeds 5 --no-torchao
    python -m benchmarks.<name> --smoke      # tiny sizes, a few seconds to a minute, no GPU needed

Subjects: train (training engine: overhead vs a bare loop, memmap, DDP, checkpoints, OpenMP
waiting), tune (pruning, storage, parallel workers, quality), cv_configs (CV accuracy of
candidate configs), compress (variants: size, latency, accuracy), stack (MLflow on SQLite:
WAL vs rollback journal, server start-up), tracking (MLflow requests of one `mlpipe run`),
pipeline (wall time and accuracy of `mlpipe run`), gpu (engine throughput by precision),
serving (`mlpipe serve-model` vs `mlflow models serve`, alias moves under load, `mlpipe score` by input size),
baseline (classical baselines vs the promoted champion on four datasets, the baseline stage's time).

They use only the public APIs of components/ and flows/. Scratch files go to a temporary folder
under $MLPIPE_BENCH_DIR (default: the system's temporary folder), never into the project;
figures are printed (one JSON line or a markdown table per measurement) and copied by hand,
with the command, machine and date, into BENCHMARKS.md (raw lines in benchmarks/results/).
tests/code/test_benchmarks.py runs every module here but HELPERS with --smoke."""

HELPERS = ("common", "bare_loop")  # shared code, not benchmarks: no --smoke of their own
