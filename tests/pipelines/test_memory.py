"""Memory plans: the plan chooser on mocked free memory, and offloaded pipelines computing exactly what resident ones
do (on a CPU the device moves are no-ops, so only the hook logic is exercised)."""

import pytest
import torch

import kinema
from kinema.pipelines import memory
from kinema.pipelines.memory import Footprint, MemoryPlan, choose_plan
from tests.pipelines.test_wan22_loading import PROMPT, a14b  # noqa: F401  (the module fixture)

GIB = 2**30
# Roughly Wan2.2 T2V-A14B in bf16: two 28.6 GB experts of 40 blocks, a 0.25 GB VAE, an 11 GB umT5, 720p activations.
A14B = Footprint(dits=(28 * GIB, 28 * GIB), largest_block=GIB * 7 // 10, dit_shell=GIB // 2, vae=GIB // 4,
                 text=11 * GIB, activations=6 * GIB)


@pytest.mark.parametrize("free_gib, offload, text_on_cpu", [
    (141, "none", False),        # H200: everything, text encoder included
    (80, "none", True),          # all but the text encoder
    (40, "model", True),         # one expert at a time
    (12, "sequential", True),    # block by block
    (4, "sequential", True),     # does not even fit block by block: still the smallest plan (with a warning)
])
def test_plan_from_free_memory(free_gib, offload, text_on_cpu):
    plan = choose_plan(A14B, free_gib * GIB)
    assert (plan.offload, plan.text_on_cpu) == (offload, text_on_cpu), plan.reason


def test_flags_override_and_cpu_plans():
    assert choose_plan(A14B, 141 * GIB, "sequential") == MemoryPlan("sequential", True, "asked for")
    assert choose_plan(A14B, 141 * GIB, "none").text_on_cpu is False
    assert choose_plan(A14B, 70 * GIB, "none").text_on_cpu is True     # the text encoder no longer fits beside
    assert choose_plan(A14B, None).offload == "none"                  # a CPU: nothing to plan
    with pytest.raises(ValueError, match="offload must be one of"):
        choose_plan(A14B, None, "disk")


def test_free_memory_reads_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (12 * GIB, 80 * GIB))
    assert memory.free_memory(torch.device("cuda:0")) == 12 * GIB
    assert memory.free_memory(torch.device("cpu")) is None


def test_plan_memory_uses_the_defaults_token_count(a14b, monkeypatch):  # noqa: F811
    """The pipeline's footprint at its default size (720x1280x81 -> 75,600 tokens) decides the plan."""
    pipe = kinema.load_pipeline(a14b[1]["diffusers"])
    fp = memory.footprint(pipe, 21 * 45 * 80)
    assert fp.dits[0] == fp.dits[1] == memory.module_bytes(pipe.dit) and fp.text > 0
    seen = {}
    monkeypatch.setattr(memory, "free_memory", lambda device: 1)
    monkeypatch.setattr(memory, "apply_plan", lambda pipe, plan, device: seen.update(plan=plan))
    memory.plan_memory(pipe, torch.device("cpu"))
    assert seen["plan"].offload == "sequential"


@torch.no_grad()
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offloaded_pipeline_gives_identical_output(a14b, offload):  # noqa: F811
    _, paths = a14b
    resident = kinema.load_pipeline(paths["diffusers"], offload="none")
    moved = kinema.load_pipeline(paths["diffusers"], offload=offload)
    s = resident.settings(steps=3, frames=5, height=32, width=32, guidance_2=2.0)
    noise = torch.randn(1, *resident.latent_shape(s), generator=torch.Generator().manual_seed(0))
    text, negative = resident.encode_prompts([PROMPT], "")
    a, b = resident.denoise(noise, text, negative, s), moved.denoise(noise, text, negative, s)
    assert torch.equal(a, b)
    assert torch.equal(resident.decode(a), moved.decode(b))
    if offload == "model":   # DiT high -> DiT low (the boundary) -> VAE: each moved once
        assert moved.offload_group.moves == 3 and moved.offload_group.resident is moved.vae
    else:                    # every block of the expert that ran, in each of the 3 steps (CFG is one batch)
        assert sum(st.moves for st in moved.streamers) == 3 * len(moved.dit.blocks)


def test_kinema_models_offload_only_when_asked(tmp_path):
    pipe = kinema.load_pipeline("shapes", offload="sequential")
    assert len(pipe.streamers) == len(pipe.experts) and not hasattr(kinema.load_pipeline("shapes"), "streamers")
