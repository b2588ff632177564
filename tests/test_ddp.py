"""DDP: two CPU processes (gloo) train a few steps on different shards of the batches."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from conformer.data.datamodule import ConformerDataModule


class RecordRankBatches(L.Callback):
    """Writes, per rank, the atom count of every training batch it sees and its RECM gammas."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        path = Path(self.folder) / f"rank{trainer.global_rank}_of_{trainer.world_size}.txt"
        with open(path, "a") as handle:
            handle.write(f"{int(batch['num_graphs'])} {float(batch['pos'].sum()):.6f} "
                         f"{pl_module.net.recm.gammas()}\n")


@pytest.mark.slow
def test_two_process_gloo_ddp_trains_on_disjoint_batches(tmp_path):
    from test_train import SMILES, ListStore, make_record, tiny_config

    from conformer.train.run import train

    torch.set_num_threads(1)
    store = ListStore([make_record(s) for s in SMILES])
    config = tiny_config(tmp_path, "trainer.max_steps=3", "trainer.devices=2",
                         "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu")
    datamodule = ConformerDataModule(store, store, max_atoms_per_batch=40)
    train(config, datamodule=datamodule, extra_callbacks=[RecordRankBatches(str(tmp_path))])
    ranks = sorted(p.name for p in tmp_path.glob("rank*_of_2.txt"))
    assert ranks == ["rank0_of_2.txt", "rank1_of_2.txt"]
    seen = [(tmp_path / name).read_text().splitlines() for name in ranks]
    assert len(seen[0]) == len(seen[1]) == 3
    # different data on the two ranks, the same RECM state (buffers broadcast by DDP)
    assert [s.split()[1] for s in seen[0]] != [s.split()[1] for s in seen[1]]
    assert [s.split(" ", 2)[2] for s in seen[0]] == [s.split(" ", 2)[2] for s in seen[1]]
    ckpt = torch.load(tmp_path / "tiny" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
