"""Two CPU processes with gloo (torch.multiprocessing spawn, free port): one DDP step equals the
single-process step on the same global batch, and a 2-process `train` run works end to end."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from openvision3.config import get_config
from openvision3.train.trainer import build_stages

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")
# noise_tau=0 and full-length random captions: the loss is deterministic and every half-batch
# has the same number of caption targets, so the mean over the global batch = mean of the halves.
OVER = ["model.noise_tau=0", "data.resolution=16", "model.image_size=16", "train.precision=fp32"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 16, 16, generator=g) * 2 - 1, torch.randint(1, 1000, (8, 32), generator=g)


def _grads(rank: int, world: int) -> dict:
    from openvision3.models.openvision3 import OpenVision3
    from openvision3.train.distributed import DistInfo, wrap_model
    from openvision3.train.trainer import forward_backward
    cfg = get_config(TINY, OVER)
    torch.manual_seed(0)
    model = OpenVision3(cfg)  # its own loss: rank and world size come from the process group
    assert (model.loss_fn.clip_loss.rank, model.loss_fn.clip_loss.world_size) == (rank, world)
    wrapped = wrap_model(model, DistInfo(rank, world, rank, torch.device("cpu")))
    images, tokens = _batch()
    n = images.shape[0] // world
    terms = forward_backward(wrapped, images[rank * n:(rank + 1) * n], tokens[rank * n:(rank + 1) * n],
                             0.0, accum=1, amp_dtype=None)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return {"grads": grads, "loss": terms["loss"]}


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from openvision3.train.trainer import train
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.save(_grads(rank, world), os.path.join(out_dir, f"grads_{rank}.pt"))
    # A short real run through the trainer (DDP, data split by rank, gathered validation).
    summary = train(get_config(TINY, OVER + ["train.steps=2", "train.batch_size=4", "train.log_every=1",
                                             "train.checkpoint_every=2", "train.eval_every=0"]),
                    os.path.join(out_dir, "run"))  # train() destroys the process group at the end
    torch.save(summary["final"], os.path.join(out_dir, f"summary_{rank}.pt"))


@pytest.mark.timeout(60)
def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _grads(0, 1)
    r0, r1 = (torch.load(tmp_path / f"grads_{r}.pt", weights_only=True) for r in (0, 1))
    assert set(r0["grads"]) == set(single["grads"])
    for k, g in single["grads"].items():
        torch.testing.assert_close(r0["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)  # DDP-averaged
        torch.testing.assert_close(r1["grads"][k], r0["grads"][k], rtol=0, atol=0, msg=k)  # in sync
    assert (r0["loss"] + r1["loss"]) / 2 == pytest.approx(float(single["loss"]), rel=1e-5)
    s0, s1 = (torch.load(tmp_path / f"summary_{r}.pt", weights_only=True) for r in (0, 1))
    assert s0 == s1  # losses are averaged over ranks before logging
    assert (tmp_path / "run" / "checkpoints" / "step_2" / "trainer_state.pt").exists()
    st = torch.load(tmp_path / "run" / "checkpoints" / "step_2" / "trainer_state.pt", weights_only=True)
    assert st["world_size"] == 2 and len(st["rng"]) == 2 and len(st["data"]) == 2


def test_batch_must_divide_world_size():
    from openvision3.config import ConfigError
    with pytest.raises(ConfigError, match="global batch 16 is not divisible by world size 3"):
        build_stages(get_config(TINY), world_size=3)


def _fsdp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from openvision3.train.trainer import train
    dist.init_process_group("gloo", rank=rank, world_size=world)
    # The last step validates (a no_grad forward) and then checkpoints: the case that broke saving.
    train(get_config(TINY, OVER + ["train.fsdp=true", "train.steps=2", "train.batch_size=4",
                                   "train.log_every=1", "train.checkpoint_every=2", "train.eval_every=0"]),
          os.path.join(out_dir, "run"))


@pytest.mark.timeout(90)
def test_fsdp2_checkpoint_and_exported_model(tmp_path):
    from openvision3.models.openvision3 import OpenVision3
    from openvision3.train.checkpoint import load_checkpoint
    mp.spawn(_fsdp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_2")
    model = OpenVision3.from_pretrained(tmp_path / "run" / "model")  # gathered from the shards
    assert ckpt["optimizer"]["state"], "optimizer state saved"
    for k, v in model.trainable_state_dict().items():  # the export equals the checkpoint's weights
        torch.testing.assert_close(v, ckpt["model"][k], rtol=0, atol=0, msg=k)
