"""Evaluate and compare: both axes for the base model and every tuned mix.

    config      ``EvalConfig`` (general tasks, domain settings, judge, tolerance)
    benchmarks  the offline lm-eval task set over shipped data (MMLU, ARC-Challenge, GSM8K, IFEval)
    general     the general axis through lm-eval's ``simple_evaluate``
    domain      the domain axis: answers on the held-out split, EM / token F1 / ROUGE-L, label metrics
    judge       optional OpenAI-compatible LLM judge for domain answers
    under_test  which weights an evaluation loads: the base, base + adapter, or full weights
    scores      score tables and per-item results from evaluation artifacts
    stats       paired bootstrap intervals, standard errors and the n a decision needs
    curves      forgetting curves: held-out losses per mix during training, table and plot
    compare     paired changes, checks, verdicts, the recommendation and the Pareto front
    report      the comparison as Markdown, HTML and a Pareto plot with error bars
"""
