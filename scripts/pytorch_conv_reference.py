"""PyTorch's CPU speed on the small RetinaNet's convolutions, for comparison with
`retina bench conv --backend cpu` (same shapes, batch 8, 128 x 128, 80 classes, 9 anchors).

Run: python3 scripts/pytorch_conv_reference.py   (needs torch; uses torch.get_num_threads())
Prints, per distinct convolution, the median forward and forward+backward milliseconds.
"""
import statistics
import time

import torch


def small_retinanet_convs(batch=8, size=128, anchors=9, classes=80):
    convs = []
    chans = [3, 16, 32, 64, 96, 128]
    s = size
    sizes = []
    for stage in range(5):
        cin, cout = chans[stage], chans[stage + 1]
        convs.append((cin, cout, 3, 2, s, 1))
        s = (s + 1) // 2
        convs.append((cout, cout, 3, 1, s, 1))
        sizes.append(s)
    c3, c4, c5 = sizes[2], sizes[3], sizes[4]
    for cin, at in [(64, c3), (96, c4), (128, c5)]:
        convs.append((cin, 64, 1, 1, at, 1))
    for at in [c3, c4, c5]:
        convs.append((64, 64, 3, 1, at, 1))
    p6 = (c5 + 1) // 2
    convs.append((128, 64, 3, 2, c5, 1))
    convs.append((64, 64, 3, 2, p6, 1))
    for at in [c3, c4, c5, p6, (p6 + 1) // 2]:
        convs.append((64, 64, 3, 1, at, 4))
        convs.append((64, anchors * classes, 3, 1, at, 1))
        convs.append((64, anchors * 4, 3, 1, at, 1))
    return convs


def median_ms(fn, iters=5):
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    torch.manual_seed(0)
    distinct = {}
    for cin, cout, k, stride, at, count in small_retinanet_convs():
        key = (cin, cout, k, stride, at)
        distinct[key] = distinct.get(key, 0) + count
    total = 0.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for (cin, cout, k, stride, at), count in sorted(distinct.items()):
        conv = torch.nn.Conv2d(cin, cout, k, stride, padding=k // 2)
        x = torch.randn(8, cin, at, at, requires_grad=True)

        def forward():
            with torch.no_grad():
                conv(x)

        def forward_backward():
            y = conv(x)
            y.backward(torch.ones_like(y))

        fwd = median_ms(forward)
        both = median_ms(forward_backward)
        total += both * count
        print(f"conv {k}x{k} {cin}->{cout} stride {stride} @{at}x{at}: forward {fwd:.3f} ms, forward+backward {both:.3f} ms")
    print(f"every convolution of one training step (forward + backward): {total:.1f} ms")


if __name__ == "__main__":
    main()
