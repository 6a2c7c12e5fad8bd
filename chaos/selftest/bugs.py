"""The planted resume bugs, as chaos's side knows them: what each does, the real bug it stands for, and when it
cannot apply to a job at all. How each is done inside the ranks lives in the injection layer
(chaos/selftest/hook/chaos_plants/, one name per bug there too; a test keeps the two lists equal).

Every bug acts at a boundary any PyTorch trainer crosses on a resume, never inside one trainer's code: the
tracker read that picks the iteration, the checkpoint load (torch.distributed.checkpoint, torch.load), the
RNG restore, the optimizer's state, the learning-rate scheduler's step, the dataset index. Nothing acts in a
process that loaded no checkpoint, so the first attempt of every bug run equals the control's.
"""

from __future__ import annotations

from dataclasses import dataclass

from chaos.workloads.base import WorkloadFacts


@dataclass(frozen=True)
class Bug:
    name: str
    does: str
    """What the planted bug does, in one sentence."""
    stands_for: str
    """The real bug it stands for, with upstream references where one exists."""
    needs_cuda: bool = False

    def not_applicable(self, facts: WorkloadFacts) -> str | None:
        """Why this bug cannot apply to a job with these facts, decided before anything runs (None: it may;
        the ranks still say when its trigger finds nothing to act on)."""
        if self.needs_cuda and facts.device != "cuda":
            return f"the job runs on {facts.device}: it has no CUDA generator to leave unrestored"
        return None


BUGS: tuple[Bug, ...] = (
    Bug("rng_not_restored",
        "every RNG stream (python, numpy, torch CPU, CUDA, Megatron's tensor-parallel tracker) is set back, before "
        "the first forward after the load, to the state it had before the load: the checkpoint's RNG is ignored",
        "a resume that does not bring the random streams back: dropout masks replay the fresh start's "
        "(Megatron-LM's --no-load-rng; NVIDIA-NeMo/Megatron-Bridge#4893: RNG not restored when saves disable it; "
        "modelscope/ms-swift#9935: restored RNG overwritten by a later set_random_seed)"),
    Bug("cuda_rng_not_restored",
        "only the CUDA generators and the tracker's CUDA states are set back to their state before the load",
        "device RNG not brought back while the host streams are (NVIDIA/Megatron-LM#6858: per-rank CUDA RNG "
        "tracker states saved as replicas, wrong on 252 of 256 ranks; huggingface/transformers#23045 and #36138: "
        "CUDA RNG saved but never set on load)",
        needs_cuda=True),
    Bug("adam_moments_zeroed",
        "at the first optimizer step after the load, every Adam first and second moment (exp_avg, exp_avg_sq) "
        "is zeroed",
        "optimizer state lost on a resume (NVIDIA/Megatron-LM#761: MoE loss inconsistent after resume, a "
        "dual-optimizer state loader; deepspeedai/DeepSpeed#7786: step, exp_avg, exp_avg_sq lost on load with "
        "ZeRO-0 + bf16)"),
    Bug("adam_step_reset",
        "at the first optimizer step after the load, every Adam step count is reset to 0, so bias correction "
        "starts over",
        "a step count not saved or not restored (deepspeedai/DeepSpeed#4396: step not saved in param groups "
        "with ZeRO 1/2; NVIDIA/Megatron-LM#5976: Megatron-FSDP's first real update with step-2 bias correction)"),
    Bug("scheduler_one_step_behind",
        "the learning-rate scheduler's first step after the first resumed optimizer step is skipped: from then "
        "on it runs one step behind",
        "an off-by-one in the scheduler's restored position (Lightning-AI/pytorch-lightning#1772 and #4655: LR "
        "scheduler off by one / lagging after resume; THUDM/slime#1547: scheduler stepped twice on resume over "
        "Megatron's load_checkpoint)"),
    Bug("data_shifted_one_sample",
        "every dataset index read after the load is the next one (index + 1): the data position is off by "
        "one sample",
        "a data position restored off by one (meta-pytorch/data#1453: a loader's num_yielded off by one after "
        "loading its state; NVIDIA-NeMo/Megatron-Bridge#3503: consumed samples restored but not used)"),
    Bug("older_checkpoint_loaded",
        "the first read of the tracker (latest_checkpointed_iteration.txt) names the newest committed "
        "checkpoint older than the one it names",
        "a resume from an older checkpoint than the newest (huggingface/transformers#9822: auto-resume took the "
        "oldest checkpoint; Lightning-AI/litgpt#661: paths sorted as strings; ray-project/ray#35617: resumed from "
        "the original ckpt_path after a failure)"),
    Bug("one_ulp_one_tensor",
        "at the first optimizer step after the load, on rank 0 only, one element of one parameter moves by one "
        "unit in the last place",
        "a checkpoint that loads almost right (pytorch/pytorch#187138: DCP load silently casts to the template "
        "dtype; databricks/megablocks#80 and NVIDIA/Megatron-LM#240: fp32 main weights rebuilt from bf16 on "
        "resume); no upstream report of exactly one ulp: it is the smallest change a state check must see"),
    Bug("first_step_skipped",
        "the first optimizer step after the load is undone: the parameters and the optimizer state are put "
        "back as they were before it",
        "a resumed step whose update is thrown away (huggingface/transformers#34053: a GradScaler not restored "
        "overflows and skips the step after resume; Lightning-AI/pytorch-lightning#19403: an extra step counted "
        "on resume)"),
)

BY_NAME = {bug.name: bug for bug in BUGS}
NAMES = tuple(BY_NAME)
