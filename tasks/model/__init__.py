"""The model: training rows as tensors (tensors.py), gradient descent (train.py), the inference of
the least-squares fit (inference.py), metrics and the weights table (evaluate.py).

Imports tasks.ingest (pass 1's product) and tasks.common.
"""
