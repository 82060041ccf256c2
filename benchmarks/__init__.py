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
baseline (classical baselines vs the promoted champion on four datasets, the baseline stage's time),
multinode (2 torchrun nodes x 1 rank vs 1 node x 2 ranks on one host: the multi-node path's cost),
budget (`mlpipe run --budget B` on generated images, a generated CSV and digits: wall time vs budget, accuracy vs 2x B;
the generators are benchmarks/synth.py),
text_model (text Transformer on synthetic token ids: the recipe vs a bare loop in tokens/s, length buckets, int8 vs
fp32 CPU latency, size and accuracy), vit (ViT vs CNN on digits and synthetic 32x32 RGB shapes: accuracy, time).

They use only the public APIs of components/ and flows/. Scratch files go to a temporary folder
under $MLPIPE_BENCH_DIR (default: the system's temporary folder), never into the project;
figures are printed (one JSON line or a markdown table per measurement) and copied by hand,
with the command, machine and date, into BENCHMARKS.md (raw lines in benchmarks/results/).
tests/code/test_benchmarks.py runs every module here but HELPERS with --smoke."""

HELPERS = ("common", "bare_loop", "plain_script", "synth")  # shared code, not benchmarks: no --smoke of their own
