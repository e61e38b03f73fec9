"""Pretraining, one module per part; read ``loop.py`` first.

setup (resolve the config, device and processes, data, method, optimizer, resume) -> batches (the data source,
sampler, per-step seeds) -> step (``train_step``) -> loop (``pretrain``) with schedule, budget (``--time-budget``),
optim, monitor (metrics, collapse, online kNN) and signals -> run_folder (config, checkpoints, encoder, summary).
"""
