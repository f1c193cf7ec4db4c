"""Pre-train U_MRI on labelled real MRI before synthesis starts (ours, not the paper's).

Why: trained as the paper trains it, U_MRI only ever sees G's synthetic MRI, so G and U_MRI can
settle on any tumour "code" the two share, and on the phantom world U_MRI stays under-confident
(tumour p below 0.5) and weak. A U_MRI that first learns what a tumour looks like on *real* T2w
MRI, and is then frozen (``CycleGANTrainer(freeze_u_mri=True)``), turns the tumour loss (eq. 3)
into "a real-MRI tumour detector must find the CT tumour in G(CT)", which is the product's
question. The labelled real MRI is the week-1 MRI that the semi-supervised step uses anyway.

The loop is written by hand (a few hundred steps of one small network with its own optimizer,
run once, before the first iteration of a fresh run); MONAI's ``SupervisedTrainer`` would need
its own engine, handlers and checkpoint for what is a preamble of this trainer. The loss is MONAI's
``DiceCELoss`` (sigmoid), so the detector ends confident, not at the base rate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.losses import DiceCELoss

__all__ = ["UMRIPretraining"]

logger = logging.getLogger(__name__)


class UMRIPretraining:
    """Train ``tumour_nets``' U_MRI alone on labelled real MRI for ``iterations`` steps.

    Runs at the first ``Events.ITERATION_STARTED`` of a fresh run (``engine.state.iteration ==
    1``), so after every ``STARTED`` handler, ``CheckpointLoader`` included: a resumed run, which
    starts at a later iteration, keeps the pre-trained weights of its checkpoint instead. Its
    ``state_dict`` (in the trainer's checkpoint) records that the pre-training is ``done`` and
    its losses, so a restored handler never runs it twice. U_CT
    is untouched except the tied penultimate block, which both U-Nets share (so U_CT trains
    around an MRI-pretrained block).

    Args:
        tumour_nets: the tied U-Nets (``forward(x, domain="mri") -> (logits, φ)``).
        loader: labelled real MRI batches, dicts with ``image`` and ``label`` ``(B, 1, H, W)``;
            cycled as often as needed.
        iterations: optimisation steps (0 does nothing).
        learning_rate: Adam learning rate of the pre-training.

    Shapes:
        ``image``, ``label``: ``(B, 1, H, W)``, ``H`` and ``W`` multiples of the U-Net's
        downsampling factor.
    """

    def __init__(
        self,
        tumour_nets: torch.nn.Module,
        loader: Iterable[dict[str, Any]],
        iterations: int = 1000,
        learning_rate: float = 1e-3,
    ) -> None:
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}.")
        self.tumour_nets = tumour_nets
        self.loader = loader
        self.iterations = int(iterations)
        self.learning_rate = float(learning_rate)
        self.losses: list[float] = []
        self.done = False

    def state_dict(self) -> dict[str, Any]:
        """``done`` (the pre-training has run) and its ``losses``."""
        return {"done": self.done, "losses": list(self.losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = bool(state_dict["done"])
        self.losses = [float(v) for v in state_dict["losses"]]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED(once=1), self.pretrain)

    def _batches(self) -> Any:
        while True:
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:
                raise ValueError("UMRIPretraining: the real-MRI loader yielded no batch.")

    def pretrain(self, engine: Engine) -> None:
        if self.done or engine.state.iteration > 1 or self.iterations == 0:
            return
        nets = self.tumour_nets
        u_mri = getattr(nets, "module", nets).u_mri  # unwrap DistributedDataParallel
        device = next(u_mri.parameters()).device
        optimizer = torch.optim.Adam(u_mri.parameters(), lr=self.learning_rate)
        loss_fn = DiceCELoss(sigmoid=True)
        u_mri.train()
        batches = self._batches()
        for step in range(self.iterations):
            batch = next(batches)
            image = torch.as_tensor(batch["image"]).to(device).float()
            label = torch.as_tensor(batch["label"]).to(device).float()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(u_mri(image)[0], label)
            loss.backward()
            optimizer.step()
            self.losses.append(float(loss.detach()))
            if (step + 1) % max(1, self.iterations // 5) == 0:
                logger.info(
                    "U_MRI pre-training on real MRI: step %d/%d, DiceCE %.4f",
                    step + 1, self.iterations, self.losses[-1],
                )  # fmt: skip
        self.done = True
