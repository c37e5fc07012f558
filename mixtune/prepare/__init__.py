"""Prepare: the data stages, from a user's file to validated, split chat rows.

    formats    read JSONL / JSON / CSV / TSV / Parquet (optionally .gz) into polars, naming bad lines
    download   fetch a source (local, s3://, https://, hf://) with lineage columns and a content fingerprint
    sanitize   strip reserved strings and role prefixes, counting hits per rule and column
    transform  map the source's columns to chat ``messages`` (+ system prompt); rejects with reasons
    validate   token lengths under the chat template, duplicates, reject share threshold
    split      seeded train / val / test, stratified or grouped, no prompt across splits
    check      ``mixtune check-data``: all of the above on one file, row by row, writing nothing

Each stage is plain Python over polars frames; ``mixtune.tasks`` wraps them as Prefect tasks.
"""
