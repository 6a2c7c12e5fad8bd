"""A checkpoint's state, read from outside the job that wrote it.

chaos compares what a resumed run saved with what the uninterrupted run saved at the same iteration, tensor
by tensor: model parameters, optimizer moments and step counts, every RNG state, the scheduler, the
iteration and the consumed samples. The job that wrote the checkpoint may be anyone's (Megatron-LM in any
`--ckpt-format`, chaos's own trainer), so nothing of it is imported and nothing in its files is run:

- files.py        opens files under a checkpoint directory without following links, reads bounded ranges
- unpickle.py     reads pickles without running them (every class becomes a record of what it was made of)
- archive.py      torch.save archives (zip): the object graph and where each storage's bytes lie
- dcp.py          torch.distributed.checkpoint directories (`.metadata` + `*.distcp`), no process group
- legacy.py       Megatron's legacy `torch` format (`mp_rank_*/model_optim_rng.pt`)
- fingerprint.py  per-entry fingerprints (hash, norm, sum, element and non-finite counts), streamed
- compare.py      golden against run under the measured reproducibility; names the first divergence
- layout.py       which files a complete checkpoint of a job has, learned from its uninterrupted run

Torch-free (numpy does the arithmetic): the checkers run in chaos's own process, which never imports torch,
and a checkpoint is untrusted input (chaos may run as root; a run directory is written by the job).
"""
