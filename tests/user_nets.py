"""Source of a user's package for the tests of models from anywhere: written into a temporary folder as ``code``.

Not imported by the tests themselves (it is only ever importable through ``architecture.code``, on the driver and,
as a runtime_env py_module, on the Ray workers).
"""

SOURCE = '''
import torch
from torch import nn


class SeqNet(nn.Module):
    """8×8 digits as 8 tokens of 8 features: an embedding, self-attention, one transformer layer, a classifier."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        tokens = self.embed(x.reshape(x.shape[0], 8, 8))
        mixed, _ = self.attn(tokens, tokens, tokens)
        return self.fc(self.encoder(mixed).mean(1))


def make_seq(dim=16, heads=2):
    return SeqNet(dim=dim, heads=heads)


def make_cnn(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 64, 10))


class ItemNet(nn.Module):
    """A forward pass that needs values (``.item()``, as a Hugging Face GPT-2's does): it cannot run on ``meta``."""

    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(width * 64, 10)

    def forward(self, x):
        scale = 1.0 / max(x.abs().max().item(), 1.0)
        return self.fc(self.relu(self.conv(x * scale)).flatten(1))


def make_item_net(width=4):
    return ItemNet(width=width)


def not_a_module():
    return 3
'''


def write_package(folder, name: str):
    """Write the package ``name`` into ``folder``; return its path (what ``architecture.code`` names)."""
    package = folder / name
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(SOURCE)
    return package
