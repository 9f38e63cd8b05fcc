"""Reference vectors for GroupNorm from PyTorch (`torch.nn.GroupNorm`, forward and backward),
read by crates/retina-wgpu/tests/group_norm.rs.

Run: python3 scripts/group_norm_reference.py > crates/retina-wgpu/tests/golden/group_norm.json   (needs torch)

Inputs are drawn in float32 (so the crate reads them exactly) and the layer runs in float64, so
the expected values carry no float32 rounding. Each case holds x, gamma, beta and r; the
outputs are y = GroupNorm(x), the per-(image, group) mean and rstd = 1/sqrt(var + eps) of
`torch.ops.aten.native_group_norm`, and the gradients of sum(y * r) with respect to x, gamma and
beta.
"""
import json
import sys

import torch

# (batch, channels, height, width, groups, eps, offset added to x): the small RetinaNet's
# choices (channels / 4 groups below 64 channels, 16 above), 1 x 1 planes, odd sizes, one group,
# one channel per group, and a mean far from zero.
CASES = [
    (2, 6, 3, 4, 3, 1e-5, 0.0),
    (3, 16, 2, 2, 4, 1e-5, 0.0),
    (2, 8, 1, 1, 2, 1e-5, 0.0),
    (2, 64, 2, 1, 16, 1e-5, 0.0),
    (1, 5, 4, 3, 5, 1e-5, 0.0),
    (2, 4, 5, 5, 1, 1e-3, 50.0),
]


def case(gen, n, c, h, w, groups, eps, offset):
    x = (torch.randn(n, c, h, w, generator=gen) * 2.0 + offset).float()
    gamma = (1.0 + 0.5 * torch.randn(c, generator=gen)).float()
    beta = (0.5 * torch.randn(c, generator=gen)).float()
    r = torch.randn(n, c, h, w, generator=gen).float()

    layer = torch.nn.GroupNorm(groups, c, eps=eps).double()
    with torch.no_grad():
        layer.weight.copy_(gamma.double())
        layer.bias.copy_(beta.double())
    x64 = x.double().requires_grad_(True)
    y = layer(x64)
    (y * r.double()).sum().backward()
    _, mean, rstd = torch.ops.aten.native_group_norm(
        x.double(), gamma.double(), beta.double(), n, c, h * w, groups, eps
    )
    flat = lambda t: t.detach().reshape(-1).tolist()
    return {
        "shape": [n, c, h, w],
        "groups": groups,
        "eps": eps,
        "x": flat(x),
        "gamma": flat(gamma),
        "beta": flat(beta),
        "r": flat(r),
        "y": flat(y),
        "mean": flat(mean),
        "rstd": flat(rstd),
        "grad_x": flat(x64.grad),
        "grad_gamma": flat(layer.weight.grad),
        "grad_beta": flat(layer.bias.grad),
    }


def main():
    gen = torch.Generator().manual_seed(20180322)
    out = {
        "source": f"torch {torch.__version__} torch.nn.GroupNorm in float64 on float32 inputs; "
        "scripts/group_norm_reference.py",
        "cases": [case(gen, *c) for c in CASES],
    }
    json.dump(out, sys.stdout, indent=None)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
