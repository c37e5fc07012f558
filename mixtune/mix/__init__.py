"""Mix: how domain data and curated category data blend into one training order.

    spec      ``MixSpec`` (domain_percent + category weights, or the cloud SDK's percent keys),
              category catalogs; the mixing contract is its docstring
    manifest  the exact stratified schedule: (batch, position, source, row), seeded whole-epoch repeats
    summary   the realized mix of a schedule: samples, tokens, shares and repeats per source
    plan      ``mixtune mix plan``: that summary before training
    sources   what training draws from (each source's rows) and the run's size
"""
