"""Train: a LoRA or full fine-tune that follows the mix manifest exactly.

    config       ``TrainConfig`` (method, LoRA, optimizer, batch sizes, lengths, checkpoints)
    chat_tokens  chat rows -> token ids and assistant-only labels under the model's chat template
    data         manifest order -> micro-batches per rank
    packing      padding-free packing with block-diagonal attention
    model        build the base model (+ LoRA), devices, dtypes; save adapter / merged weights
    losses       per-token loss, per-source and per-category loss meters
    checkpoints  save / resume the exact run state
    loop         the training loop; ``job`` is its process entry point, ``launch`` its multi-GPU argv
    result       what a run reports (weights, losses, realized mix, throughput)
    forgetting   held-out losses while training runs: general categories, domain, the base model's answers
    model_card   the README.md written beside trained weights
"""
