"""Plain residual networks in image space, with re-parameterisable training blocks.

Network (scale s, C channels, n convs): 3x3 conv + ReLU at input resolution throughout, the last
conv emits 3*s*s channels; output = Clip(DepthToSpace_DCR(Concat([x] * s*s) + body(x)), 0, 1).
With DCR ordering, channel (i*s + j)*3 + c of the last conv lands on sub-pixel (i, j) of colour c,
so Concat of s*s copies of the input is exactly nearest-neighbour upsampling (the card's base).
For s = 1 (denoise, dejpeg) it is Clip(x + body(x), 0, 1) (base "identity").

Half-resolution variant (``down=2``, scale 1 only, FFDNet-style): the first conv is 4x4 stride 2
(pad 1), the body runs at half resolution, the last conv emits 12 channels and DepthToSpace(2)
brings the residual back: a 4x larger receptive-field area for a quarter of the MACs per pixel.
Inputs must then have even sides (the card's ``align`` = 2).

Dilated variant (``dilations``, one per conv, IRCNN-style): conv i is a 3x3 with dilation d_i (pad
d_i); the receptive field grows to 1 + 2 * sum(d_i) for the same parameters and MACs.

Training blocks (RepConv): 3x3 + 1x1 (+ identity when cin == cout) branches, all linear, summed
before the ReLU; :meth:`RepConv.collapse` folds them into one 3x3 conv for export.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def depth_to_space_dcr(x: torch.Tensor, s: int) -> torch.Tensor:
    """ONNX DepthToSpace mode DCR (TFLite DEPTH_TO_SPACE ordering); torch pixel_shuffle is CRD."""
    n, c, h, w = x.shape
    x = x.view(n, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(n, c // (s * s), h * s, w * s)


class RepConv(nn.Module):
    def __init__(self, cin: int, cout: int, identity: bool = True, dilation: int = 1):
        super().__init__()
        self.cin, self.cout, self.dilation = cin, cout, dilation
        self.k3 = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
        self.k1 = nn.Conv2d(cin, cout, 1)
        self.identity = identity and cin == cout

    def forward(self, x):
        y = self.k3(x) + self.k1(x)
        return y + x if self.identity else y

    @torch.no_grad()
    def collapse(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [cout, cin, 3, 3], bias [cout]) of the single equivalent 3x3 conv."""
        return self.fused()

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`collapse` with gradients (quantisation-aware training trains through it)."""
        w = self.k3.weight.clone()
        w[:, :, 1, 1] += self.k1.weight[:, :, 0, 0]
        if self.identity:
            w[:, :, 1, 1] += torch.eye(self.cout, dtype=w.dtype, device=w.device)
        return w, self.k3.bias + self.k1.bias


class RepDown(nn.Module):
    """Training block of the stride-2 first conv: 4x4 (pad 1) + 2x2 (pad 0) branches, both stride 2.

    The 2x2 window is the centre of the 4x4 one, so the pair collapses into one 4x4 conv."""

    dilation = 1

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.k4 = nn.Conv2d(cin, cout, 4, stride=2, padding=1)
        self.k2 = nn.Conv2d(cin, cout, 2, stride=2)

    def forward(self, x):
        return self.k4(x) + self.k2(x)

    @torch.no_grad()
    def collapse(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fused()

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.k4.weight.clone()
        w[:, :, 1:3, 1:3] += self.k2.weight
        return w, self.k4.bias + self.k2.bias


class ResidualNet(nn.Module):
    """``convs`` RepConv layers of ``channels`` channels; ReLU between them, none after the last.
    ``dilations``: one per conv (default all 1)."""

    def __init__(self, scale: int, channels: int, convs: int, down: int = 1, dilations=None):
        super().__init__()
        if convs < 2:
            raise ValueError("ResidualNet needs at least 2 convs")
        if down not in (1, 2) or (down == 2 and scale != 1):
            raise ValueError("ResidualNet: down=2 is for scale-1 models only")
        dil = tuple(dilations) if dilations else (1,) * convs
        if len(dil) != convs or min(dil) < 1 or (down == 2 and max(dil) > 1):
            raise ValueError(f"ResidualNet: dilations {dil} must be {convs} values >= 1 (all 1 with down=2)")
        self.scale, self.down, self.dilations = scale, down, dil
        widths = [3] + [channels] * (convs - 1) + [3 * (scale * down) ** 2]
        self.layers = nn.ModuleList(RepDown(a, b) if i == 0 and down == 2 else RepConv(a, b, dilation=d)
                                    for i, (a, b, d) in enumerate(zip(widths[:-1], widths[1:], dil)))
        # Start as the plain base (nearest / identity): the residual begins near zero.
        with torch.no_grad():
            last = self.layers[-1]
            for conv in (last.k3, last.k1):
                conv.weight.mul_(0.1)
                conv.bias.zero_()

    def body(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def forward(self, x):
        return self._head(x, self.body(x))

    def _head(self, x, r):
        s = self.scale
        if self.down == 2:
            return torch.clamp(x + depth_to_space_dcr(r, 2), 0.0, 1.0)
        if s == 1:
            return torch.clamp(x + r, 0.0, 1.0)
        return torch.clamp(depth_to_space_dcr(x.repeat(1, s * s, 1, 1) + r, s), 0.0, 1.0)

    def collapsed(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [layer.collapse() for layer in self.layers]

    def forward_collapsed(self, x):
        """The deploy graph (one 3x3 conv per layer) in torch: what the ONNX export computes."""
        h = x
        convs = self.collapsed()
        for i, ((w, b), d) in enumerate(zip(convs, self.dilations)):
            h = F.conv2d(h, w, b, stride=2, padding=1) if w.shape[-1] == 4 else F.conv2d(h, w, b, padding=d, dilation=d)
            if i < len(convs) - 1:
                h = F.relu(h)
        return self._head(x, h)

    @property
    def receptive_field(self) -> int:
        if self.down == 2:  # output row y depends on input rows y-2n .. y+2n (n convs; see module doc)
            return 4 * len(self.layers) + 1
        return 2 * sum(self.dilations) + 1

    @property
    def align(self) -> int:
        """Input sides must be multiples of this."""
        return self.down

    @torch.no_grad()
    def load_deepened(self, sd: dict, dilations=None) -> int:
        """Load the state dict of a trained net of the same width with fewer convs, so that this one
        computes exactly what it did: its convs but the last keep their places, the last stays last,
        and the convs in between start as identities (3x3 and 1x1 branches zero, identity branch on:
        their input is post-ReLU, so ReLU(identity) passes it unchanged). ``dilations``: the trained
        net's (default all 1); the convs kept must keep theirs. Returns its number of convs.
        Raises ValueError when the depths or dilations do not fit, RuntimeError (load_state_dict) when
        the widths do not."""
        idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("layers.")})
        n, new = len(idx), len(self.layers)
        if n < 2 or idx != list(range(n)) or n > new:
            raise ValueError(f"it holds {n} convs; this net has {new}")
        old = tuple(dilations) if dilations else (1,) * n
        if len(old) != n or old[:-1] != self.dilations[:n - 1] or old[-1] != self.dilations[-1]:
            raise ValueError(f"its dilations {old} do not match this net's {self.dilations} at the convs kept")
        for i in range(n - 1, new - 1):
            layer = self.layers[i]
            if not (isinstance(layer, RepConv) and layer.identity):
                raise ValueError("the inserted convs need equal input and output widths")
            for conv in (layer.k3, layer.k1):
                conv.weight.zero_()
                conv.bias.zero_()
        renamed = {}
        for k, v in sd.items():
            if k.startswith("layers."):
                i = int(k.split(".")[1])
                k = f"layers.{new - 1 if i == n - 1 else i}." + k.split(".", 2)[2]
            renamed[k] = v
        keep = {k: v for k, v in self.state_dict().items() if k not in renamed}
        self.load_state_dict({**keep, **renamed})
        return n

    def deploy_params(self) -> int:
        return sum(w.numel() + b.numel() for w, b in self.collapsed())

    def macs_per_pixel(self) -> int:
        """Multiply-accumulates per input pixel of the collapsed convs (adds/clip not counted)."""
        return sum(w.numel() for w, _ in self.collapsed()) // (self.down * self.down)
