"""mixtune: fine-tune open LLMs on domain data blended with curated general data, and compare both axes.

The core library, in the order of the DAG (no Prefect import anywhere in it):

    prepare/   download -> sanitize -> transform -> validate -> split, and check-data
    mix/       the mix spec, the exact training manifest, the plan
    train/     the training loop (LoRA / full), packing, checkpoints
    eval/      general (lm-eval) and domain axes, comparison, report
    storage/   artifacts and fingerprints under a local or S3 root
    models/    which weights a run loads (hub id, folder, GGUF file, built-in model, the tiny test model)
    config.py, sections.py, errors.py, tracking.py, resources.py,
    tracking_runs.py (which MLflow run a process holds: stale runs closed, re-runs keyed),
    console.py (what the CLI prints, the log file that keeps the rest),
    preflight.py (what config check verifies beyond the schema: model, tokenizer, eval tasks),
    children.py (no child process outlives mixtune: PDEATHSIG, and a watchdog for library-started ones)

The Prefect layer sits on top: ``mixtune.tasks`` (one task per stage) and
``mixtune.flows`` (wiring), then ``mixtune.cli``. Imports run cli -> flows ->
tasks -> core, never back up (tests/test_layout.py).
"""
