"""A character-level language model: a small causal transformer predicting the next character of a text.

Text: by default the docstrings of a fixed list of pure-Python standard-library modules (:data:`STDLIB_MODULES`),
read from their source files with :mod:`ast` (so ``python -OO`` does not empty it) in source order and joined by blank
lines: about 90,000 characters of English prose and doctest examples that every CPython install ships, with no
download. The text is fixed for a given Python version. ``path`` reads any UTF-8 text file instead.

Split by position, so no character is in both splits: the first ``train_fraction`` of the text is the train part, the
rest the test part. Each part is cut into non-overlapping windows of ``context + 1`` characters; ``n_train`` windows
are drawn (with ``seed``) from the train part and ``n_test`` from the test part. A window's first ``context``
characters are the input and its last ``context`` characters the targets (the next character at every position).

Vocabulary: the characters of the train part, sorted, after an unknown token (index 0) that stands for test
characters the train part never shows.

Model: :class:`~lightning_entropy.tasks.transformer.TinyTransformer` with logits at every position, shape
``(N, context, vocab)`` against targets ``(N, context)``. The sampler's cross-entropy and accuracies act on the last
axis, so ln L_train is the mean cross-entropy per predicted character and the test accuracy is next-character
accuracy over all test positions. Default size: width 16, one block, 2 heads, context 16: 6,637 parameters with the
default text's 93-token vocabulary (Python 3.11; the vocabulary, and so the count, follows the text).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import torch
from torch import nn

from lightning_entropy.tasks.common import NetModule, TensorDataModule
from lightning_entropy.tasks.transformer import TinyTransformer

#: Pure-Python standard-library modules whose docstrings make the default text.
STDLIB_MODULES = ("textwrap", "difflib", "statistics", "fractions", "functools", "random", "json", "argparse",
                  "calendar", "heapq")
UNKNOWN = "\x00"  # vocabulary entry 0: characters the train part never shows


def _docstrings(tree: ast.AST) -> list[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append(doc)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def stdlib_text(modules: tuple[str, ...] = STDLIB_MODULES) -> str:
    """The docstrings of ``modules`` (read from their source files), joined by blank lines.

    Modules without a source file (a frozen or byte-code-only install) are skipped.
    """
    parts: list[str] = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        if not origin or not origin.endswith(".py") or not Path(origin).is_file():
            continue
        parts.extend(_docstrings(ast.parse(Path(origin).read_text(encoding="utf-8"))))
    return "\n\n".join(parts)


def load_text(path: str | Path | None = None) -> tuple[str, str]:
    """``(text, source)``: the file at ``path`` (UTF-8), or the standard library's docstrings."""
    if path is None or str(path) == "":
        text = stdlib_text()
        if not text:
            raise FileNotFoundError("No standard-library source files were found for the default text of char_lm;"
                                    " give a UTF-8 text file with task.path=<file>.")
        return text, f"docstrings of the Python standard library ({', '.join(STDLIB_MODULES)})"
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"task.path={str(path)!r}: no such file (give a UTF-8 text file).")
    return p.read_text(encoding="utf-8"), str(p)


class CharDataModule(TensorDataModule):
    """Windows of a text, split by position; inputs and targets are ``(N, context)`` long tensors.

    Attributes:
        vocab: the characters, index = token (``vocab[0]`` is the unknown token).
        cut: the character offset where the test part starts.
        train_offsets, test_offsets: the text offset of every window (``(N,)`` long), in the order of the tensors.
    """

    def __init__(self, path: str | Path | None = None, context: int = 16, n_train: int = 256, n_test: int = 256,
                 train_fraction: float = 0.5, seed: int = 0, batch_size: int | None = None) -> None:
        if context < 1:
            raise ValueError(f"task.context={context}: must be >= 1.")
        if not 0 < train_fraction < 1:
            raise ValueError(f"task.train_fraction={train_fraction}: must be between 0 and 1 (exclusive).")
        text, self.source = load_text(path)
        self.text, self.context, self.seed = text, context, seed
        self.cut = int(len(text) * train_fraction)
        train_text = text[: self.cut]
        self.vocab = UNKNOWN + "".join(sorted(set(train_text) - {UNKNOWN}))
        index = {c: i for i, c in enumerate(self.vocab)}
        span = context + 1
        g = torch.Generator().manual_seed(seed)

        def windows(start: int, stop: int, n: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            available = (stop - start) // span
            if not 1 <= n <= available:
                raise ValueError(f"task.{name}={n}: the {name[2:]} part of {self.source} ({stop - start} characters,"
                                 f" task.train_fraction={train_fraction}) holds {available} windows of"
                                 f" task.context+1={span} characters; ask for at most that many, or a longer text.")
            offsets = start + span * torch.randperm(available, generator=g)[:n].sort().values
            tokens = torch.tensor([[index.get(c, 0) for c in text[o: o + span]] for o in offsets.tolist()],
                                  dtype=torch.long)
            return tokens[:, :-1], tokens[:, 1:], offsets

        x, y, self.train_offsets = windows(0, self.cut, n_train, "n_train")
        xt, yt, self.test_offsets = windows(self.cut, len(text), n_test, "n_test")
        super().__init__((x, y), (xt, yt), batch_size)

    def decode(self, tokens: torch.Tensor) -> str:
        """The characters of a 1-D token tensor (the unknown token reads as ``\\x00``)."""
        return "".join(self.vocab[int(t)] for t in tokens)


class CharLanguageModel(NetModule):
    """A :class:`TinyTransformer` over characters with per-position cross-entropy (Adam by default)."""

    def __init__(self, vocab: int, context: int = 16, width: int = 16, depth: int = 1, heads: int = 2,
                 lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyTransformer(vocab, vocab, context, width, depth, heads)
        self.loss_fn = nn.CrossEntropyLoss()
