"""What the strategies say once at setup (what is sampled, how long it will take), on rank zero.

Two channels, because they reach different people: Lightning's own INFO logger (``rank_zero_info``, shown by
Lightning's handler in scripts and notebooks) and the ``lightning_entropy`` logger (handled by whatever logging the
application configured: the command line's Hydra logging prints it and writes it to ``main.log``, while it keeps
Lightning's own banners quiet).
"""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

log = logging.getLogger("lightning_entropy")


def inform(text: str) -> None:
    """Say ``text`` once (rank zero) on both channels."""
    rank_zero_info(text)
    if rank_zero_only.rank == 0:
        log.info(text)
