"""CIFAR-10 cats against dogs with the reference study's small LayerNorm ResNet (ALGORITHM.md section 6).

Data: the cat (class 3, label 0) and dog (class 5, label 1) images of CIFAR-10's five training batches (10,000
images), permuted with ``seed``: the first ``n_train`` (2,500) train and the next ``n_test`` (2,500) are held out.
(CIFAR-10's own test batch has only 2,000 cats and dogs, too few for a 2,500-image held-out set.) Pixels are scaled to
[0, 1]; images are ``(N, 3, 32, 32)`` float32.

Files: ``root/cifar-10-batches-py/`` (the extracted python version of CIFAR-10) is read directly, without torchvision;
``root/cifar-10-python.tar.gz`` is extracted there first. Otherwise the archive is downloaded with torchvision's
downloader (checksum verified), after a check that the host answers within :data:`CONNECT_TIMEOUT_S` seconds, so that
a machine without network gets a clear error at once instead of a hang. ``synthetic=True`` generates images of the
same shape instead (tests, and trying the pipeline offline).

Network (:func:`layernorm_resnet`): a ResNet with LayerNorm instead of BatchNorm (a norm that does not couple the
samples of a batch, so every walker's loss is a plain function of its parameters). Stem: conv 3x3 ``3 -> w`` and ReLU.
Four stages of widths ``w, 2w, 4w, 8w`` with ``blocks`` residual blocks each; the first block of stages 2-4 halves the
resolution (stride 2) and widens the shortcut with a 1x1 conv. Block: ``relu(LN(conv3x3(x)))``, ``LN(conv3x3(.))``,
add the shortcut, ReLU; convs without bias (the LayerNorm's shift follows). LayerNorm acts over the channels at every
pixel, with a scale and shift per channel. Head: global average pooling and ``Linear(8w, 2)``. Widths 6-12-24-48 with
one block per stage: 43,604 parameters, the paper's count. Cross-entropy loss.

Box rule: ``fan_out`` with ``c = 2`` as in the reference study (``2 / sqrt(out * k^2)`` per conv weight,
``2 / sqrt(n)`` per LayerNorm vector and bias).
"""

from __future__ import annotations

import os
import socket
import tarfile
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_entropy.core import batched
from lightning_entropy.tasks.common import NetModule, TensorDataModule
from lightning_entropy.tasks.safe_pickle import load_data_pickle

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CAT, DOG = 3, 5
CATS_AND_DOGS = 10_000  # in the five training batches
CONNECT_TIMEOUT_S = 10.0  # seconds to wait for the download host before giving up
DOWNLOAD_TIMEOUT_S = 60.0  # socket timeout while downloading (a stalled transfer fails instead of hanging)


def default_root() -> Path:
    """``$XDG_CACHE_HOME/lightning_entropy/cifar10`` (``~/.cache/...`` without the variable)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lightning_entropy" / "cifar10"


def _where_to_put(root: Path) -> str:
    return (f"Put CIFAR-10 into task.root={str(root)!r}: either the archive {ARCHIVE} (from {CIFAR_URL}) or its"
            f" extracted folder {FOLDER}/; or pass task.root=<a directory that has them>. task.synthetic=true runs"
            " the task on generated images of the same shape.")


def _reachable(url: str, timeout: float) -> str | None:
    """``None`` if a TCP connection to ``url``'s host opens within ``timeout`` seconds, else the reason it did not.

    Name resolution does not honour socket timeouts, so the attempt runs in a daemon thread that is abandoned at the
    deadline.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(f"{type(err).__name__}: {err}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return f"no answer within {timeout:g} s"
    return result[0]


def _extract(archive: Path, root: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse links and paths outside root
            tar.extractall(root, filter="data")
        else:
            tar.extractall(root)  # noqa: S202 - older Python without extraction filters


def ensure_cifar10(root: str | Path | None = None, *, download: bool = True) -> Path:
    """The folder ``root/cifar-10-batches-py`` with the five training batches, extracting or downloading if needed.

    Raises:
        ConnectionError: the files are absent and the download host cannot be reached (the message says where to put
            the files).
        ImportError: the files are absent and torchvision (the downloader) is not installed.
        FileNotFoundError: the files are absent and ``download`` is false.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    folder = root / FOLDER
    if all((folder / name).is_file() for name in TRAIN_BATCHES):
        return folder
    if (root / ARCHIVE).is_file():
        _extract(root / ARCHIVE, root)
        if all((folder / name).is_file() for name in TRAIN_BATCHES):
            return folder
        raise FileNotFoundError(f"{root / ARCHIVE} did not contain {FOLDER}/ with {', '.join(TRAIN_BATCHES)}."
                                f" {_where_to_put(root)}")
    if not download:
        raise FileNotFoundError(f"CIFAR-10 is not in {root}. {_where_to_put(root)}")
    reason = _reachable(CIFAR_URL, CONNECT_TIMEOUT_S)
    if reason is not None:
        host = urllib.parse.urlsplit(CIFAR_URL).hostname
        raise ConnectionError(f"CIFAR-10 is not in {root} and cannot be downloaded: {host} is unreachable ({reason})."
                              f" {_where_to_put(root)}")
    try:
        from torchvision.datasets.utils import download_and_extract_archive
    except Exception as err:  # noqa: BLE001 - a missing or broken torchvision install: same advice
        raise ImportError(f"CIFAR-10 is not in {root}, and downloading it needs torchvision ({type(err).__name__}:"
                          f" {err}). Install the torchvision that matches your torch (e.g. pip install torchvision),"
                          f" or download the archive yourself. {_where_to_put(root)}") from err
    root.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        download_and_extract_archive(CIFAR_URL, str(root), filename=ARCHIVE, md5=CIFAR_MD5)
    finally:
        socket.setdefaulttimeout(previous)
    return folder


def load_cats_and_dogs(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The cats and dogs of the five training batches, in file order: images ``(10000, 3, 32, 32)`` uint8 and labels
    ``(10000,)`` (0 cat, 1 dog)."""
    images, labels = [], []
    for name in TRAIN_BATCHES:
        batch = load_data_pickle(folder / name)  # restricted: arrays and containers only, never code
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        classes = np.asarray(batch[b"labels"])
        keep = (classes == CAT) | (classes == DOG)
        images.append(data[keep])
        labels.append((classes[keep] == DOG).astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def make_synthetic_catdog(n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` generated images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)``: noise with a brighter red channel for
    label 1, so that the classes are separable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 200, (n, 3, 32, 32), generator=g, dtype=torch.int64)
    images[:, 0] += 55 * labels.view(-1, 1, 1)
    return images.to(torch.uint8), labels


class CIFARCatDogDataModule(TensorDataModule):
    """Cats against dogs: ``n_train`` / ``n_test`` images of CIFAR-10's training batches, pixels in [0, 1].

    Args:
        root: the data directory (``None``: :func:`default_root`).
        n_train, n_test: images per split (together at most 10,000).
        seed: permutes the 10,000 cats and dogs before the split.
        synthetic: generated images of the same shape instead of CIFAR-10 (no files, no network).
        download: download CIFAR-10 into ``root`` if it is absent.
        batch_size: the optimiser baseline's batch size (``None``: full batch).
    """

    def __init__(self, root: str | Path | None = None, n_train: int = 2500, n_test: int = 2500, seed: int = 0,
                 synthetic: bool = False, download: bool = True, batch_size: int | None = None) -> None:
        if n_train < 1 or n_test < 1 or n_train + n_test > CATS_AND_DOGS:
            raise ValueError(f"task.n_train={n_train}, task.n_test={n_test}: need >= 1 each and at most"
                             f" {CATS_AND_DOGS} together (CIFAR-10's training batches hold {CATS_AND_DOGS} cats and"
                             " dogs).")
        if synthetic:
            images, labels = make_synthetic_catdog(n_train + n_test, seed=seed)
            self.source = "synthetic images (task.synthetic=true)"
        else:
            folder = ensure_cifar10(root, download=download)
            images, labels = load_cats_and_dogs(folder)
            self.source = str(folder)
            if n_train + n_test > len(labels):
                raise ValueError(f"task.n_train={n_train}, task.n_test={n_test}: {folder} holds only {len(labels)}"
                                 " cats and dogs.")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[: n_train + n_test]
        x = images[order].float() / 255.0
        y = labels[order]
        self.seed = seed
        super().__init__((x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), batch_size)


# -- the network -----------------------------------------------------------------------------------------------------


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``(N, C, H, W)`` at every pixel, with a scale and shift per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # back in (N, C, H, W) storage: a channels-last result would send the next strided 1x1 convolution (the
        # shortcut) to oneDNN's channels-last backward, which crashes on some CPUs (torch 2.13, AMD EPYC, one
        # thread); the walker-batched program evaluates this layer itself (registered below)
        return super().forward(x.movedim(-3, -1)).movedim(-1, -3).contiguous()


class ResidualBlock(nn.Module):
    """``relu(LN(conv(x)))``, ``LN(conv(.))``, plus the shortcut (identity, or a strided 1x1 conv), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = ChannelLayerNorm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = ChannelLayerNorm(c_out)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if stride != 1 or c_in != c_out
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


class GlobalAveragePool(nn.Module):
    """``(N, C, H, W) -> (N, C)``, the mean over the pixels (a plain reduction, which vmap batches without a fallback,
    unlike ``nn.AdaptiveAvgPool2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def layernorm_resnet(width: int = 6, blocks: int = 1, classes: int = 2) -> nn.Sequential:
    """The LayerNorm ResNet of the module docstring: stages of widths ``width x (1, 2, 4, 8)``, ``blocks`` each."""
    if width < 1 or blocks < 1:
        raise ValueError(f"model.width={width}, model.depth={blocks}: both must be >= 1 (width: channels of the first"
                         " stage; depth: residual blocks per stage).")
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.ReLU()]
    c_in = width
    for stage in range(4):
        c_out = width * 2 ** stage
        for block in range(blocks):
            layers.append(ResidualBlock(c_in, c_out, stride=2 if stage > 0 and block == 0 else 1))
            c_in = c_out
    layers += [GlobalAveragePool(), nn.Linear(c_in, classes)]
    return nn.Sequential(*layers)


class CIFARCatDogClassifier(NetModule):
    """The LayerNorm ResNet (``width`` channels in the first stage, ``blocks`` per stage) with cross-entropy."""

    def __init__(self, width: int = 6, blocks: int = 1, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = layernorm_resnet(width, blocks)
        self.loss_fn = nn.CrossEntropyLoss()


@batched.register(ChannelLayerNorm, images=True)
def _channel_layer_norm_batched(module: ChannelLayerNorm, params: batched.Params, images: torch.Tensor,
                                walkers: int) -> torch.Tensor:
    """All walkers' images at once (the evaluator's walker-batched path, :mod:`lightning_entropy.core.batched`)."""
    return batched.channel_layer_norm(images, walkers, params("weight"), params("bias"), module.eps)
