"""Observing a trainer from outside, for trainers that do not call chaos's probe (an unmodified
Megatron-LM `pretrain_gpt.py`, say): what it prints (its log lines) and what it writes (its checkpoint
directory) say where it is, so a fault can be sent to a rank at that moment.

Torch-free and standard library only: the supervisor imports this package and must start fast.
"""
